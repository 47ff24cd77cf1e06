"""A small argv parser for the commands that shell loops call thousands of times.

Importing click costs more than the whole of a plain ``dropr-put``, ``dropr-recv`` or
``dropr-ack``, so their ``main`` parses the usual command lines here and builds the
click command (same options, same library checks) only for --help, --version,
completion, or anything this parser does not know. ``tests/cli/test_put_fastpath``
and ``tests/cli/test_recv_ack_fastpath`` check that the two agree.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMON_VALUED = frozenset({"--spool", "--config"})
COMMON_FLAGS = {"-v": "verbose", "--verbose": "verbose", "-q": "quiet", "--quiet": "quiet"}


def parse(
    argv: list[str],
    *,
    valued: frozenset[str] | set[str],
    flags: frozenset[str] | set[str] = frozenset(),
    multi: frozenset[str] | set[str] = frozenset(),
    positional: bool = False,
) -> dict[str, Any] | None:
    """Return {"--option": value, "flag": bool, "verbose"/"quiet": count, "args": [...]} or None.

    Flags are keyed by their bare name ("--lines" -> "lines"), True or False, as the
    click commands pass them on.
    """
    if any(k.endswith("_COMPLETE") for k in os.environ):
        return None
    valued = set(valued) | COMMON_VALUED
    o: dict[str, Any] = {"verbose": 0, "quiet": 0, "args": []}
    o.update((f[2:], False) for f in flags)
    for m in multi:
        o[m] = []
    i = 0
    only_args = False
    while i < len(argv):
        a = argv[i]
        i += 1
        if only_args or (a == "-" or not a.startswith("-")):
            if not positional:
                return None
            o["args"].append(a)
            continue
        if a == "--":
            only_args = True
            continue
        if a in COMMON_FLAGS:
            o[COMMON_FLAGS[a]] += 1
        elif a in flags:
            o[a[2:]] = True
        else:
            # --opt=VALUE only: click reads -n=5 as -n with the value "=5"
            name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
            if name not in valued and name not in multi:
                return None  # --help, --version, -h, unknown: click says what to say
            if not eq:
                if i >= len(argv):
                    return None
                val = argv[i]
                i += 1
            if name in multi:
                o[name].append(val)
            elif name in o:
                return None
            else:
                o[name] = val
    return o


def fast_main(
    prog: str,
    argv: list[str] | None,
    fast_parse: Callable[[list[str]], dict[str, Any] | None],
    run: Callable[[dict[str, Any]], int],
    command: Callable[[], Any],
) -> int:
    """Run a command: the fast path for plain command lines, the click command otherwise."""
    args = sys.argv[1:] if argv is None else argv
    o = fast_parse(args)
    if o is None:
        from ._common import main_for

        return main_for(command())(args)
    from ._guard import guard

    code = guard(prog, lambda: run(o), bool(o.get("verbose")))
    return code if argv is not None else exit_now(code)  # argv given: called in process


def exit_now(code: int) -> int:
    """End the process with code at once, skipping the interpreter's teardown; return
    code (for the usual exit) when that is not safe.

    Teardown frees every module and object one by one for a process about to end:
    about 2 ms of CPU, a tenth of a plain dropr-put. It has nothing else to do when
    stdout and stderr are flushed here (put flushes its ids itself, within guard, so a
    broken pipe is reported as usual) and no module that registers exit work was
    imported: threading (it joins the threads left) and logging (it flushes the
    handlers, with -v). Every file the command wrote is closed and synced by then."""
    if "threading" in sys.modules or "logging" in sys.modules:
        return code
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
    except (OSError, ValueError):  # a broken pipe, a closed stream: the usual exit reports it
        return code
    os._exit(code)


def int_option(o: dict[str, Any], key: str, default: int, low: int, high: int = 10**9) -> int:
    """Return option key as a whole number in [low, high] (usage error otherwise)."""
    from dropr.errors import UsageError

    try:
        v = int(o.get(key, default))
    except ValueError:
        raise UsageError(f"bad {key} {o[key]!r}: give a whole number") from None
    if not low <= v <= high:
        raise UsageError(f"bad {key} {v}: must be {low} to {high}")
    return v


def duration_option(o: dict[str, Any], key: str, default: float) -> float:
    """Return option key as seconds, default when it was not given (usage error if bad)."""
    from dropr.config import parse_duration
    from dropr.errors import DataError, UsageError

    if key not in o or o[key] is None:
        return default
    try:
        return parse_duration(o[key])
    except DataError as exc:
        raise UsageError(str(exc)) from None


def optional_int(o: dict[str, Any], key: str, low: int, high: int = 10**9) -> int | None:
    """Return option key as a whole number in [low, high], None when it was not given."""
    return None if o.get(key) is None else int_option(o, key, 0, low, high)


def optional_duration(o: dict[str, Any], key: str) -> float | None:
    """Return option key as seconds, None when it was not given."""
    return None if o.get(key) is None else duration_option(o, key, 0)
