"""dropr-recv: claim messages from the local inbox, or run a handler per message.

Shell loops call this often, so ``main`` takes ``_fast`` for the usual command
lines and builds the click command only for --help and anything unusual.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

PROG = "dropr-recv"
_VALUED = frozenset(
    {"--channel", "-n", "--timeout", "--lease", "--format", "--exec", "--jobs", "--max-attempts"}
)
_FLAGS = frozenset({"--all", "--wait", "--ack", "--once", "--follow"})
FOLLOW_N = 100  # --follow claims this many at a time unless -n says otherwise
FORMATS = ("path", "json", "raw")
MIN_LEASE = 1.0  # seconds: a shorter lease may end before the claimer has printed the
# message, and then another consumer gets it too


def _fast_parse(argv: list[str]) -> dict[str, Any] | None:
    from ._fast import parse

    return parse(argv, valued=_VALUED, flags=_FLAGS)


def _run(o: dict[str, Any]) -> int:
    from dropr.config import default_spool, load
    from dropr.consume import HandlerOptions, Handlers, RecvOptions, follow, recv
    from dropr.errors import UsageError
    from dropr.spool import Spool

    from ._common_fast import check_name, logging_for
    from ._fast import duration_option, int_option

    logging_for(PROG, o)
    fmt = o.get("--format", "path")
    if fmt not in FORMATS:
        raise UsageError(f"bad --format {fmt!r}: use path, json or raw")
    channel = o.get("--channel", "default")
    check_name(channel, "channel")
    n = int_option(o, "-n", 0, 1) if "-n" in o else 0
    jobs = int_option(o, "--jobs", 1, 1, 1024)
    max_attempts = int_option(o, "--max-attempts", 5, 0)
    timeout = duration_option(o, "--timeout", 0)
    lease = duration_option(o, "--lease", 300)
    if not lease >= MIN_LEASE:  # not <: NaN too
        raise UsageError(f"bad --lease {o['--lease']!r}: must be at least {MIN_LEASE:g}s")
    spool_dir = o.get("--spool") or default_spool()
    command = o.get("--exec")
    if command is not None:
        if not command.strip():
            raise UsageError("--exec needs a command; an empty one would ack every message unread")
        if n or o["all"] or o["wait"] or o["ack"] or o["follow"] or fmt != "path":
            raise UsageError(
                "--exec runs handlers; -n, --all, --wait, --follow, --ack and --format do not apply"
            )
    else:
        if o["once"] or "--jobs" in o or "--max-attempts" in o:
            raise UsageError("--once, --jobs and --max-attempts go with --exec")
        if n and o["all"]:
            raise UsageError("-n and --all exclude each other")
        if o["follow"] and (o["all"] or o["wait"] or "--timeout" in o or fmt == "raw"):
            raise UsageError(
                "--follow runs until stopped; --all, --wait, --timeout and --format raw do not apply"
            )
        if "--timeout" in o and not o["wait"]:
            raise UsageError("--timeout without --exec goes with --wait")
    spool = Spool(spool_dir, load(spool_dir, o.get("--config")))
    if command is not None:
        hopts = HandlerOptions(command=command, channel=channel, jobs=jobs, timeout=timeout,
                               max_attempts=max_attempts, once=o["once"], lease=lease)  # fmt: skip
        return Handlers(spool, hopts).run()
    if o["follow"]:
        fopts = RecvOptions(channel=channel, n=n or FOLLOW_N, wait=True, lease=lease, fmt=fmt, ack=o["ack"])
        return follow(spool, fopts)
    ropts = RecvOptions(channel=channel, n=10**9 if o["all"] else n or 1, wait=o["wait"],
                        timeout=timeout if "--timeout" in o else None, lease=lease, fmt=fmt,
                        ack=o["ack"])  # fmt: skip
    return recv(spool, ropts)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: fast path for plain use, click for everything else."""
    from ._fast import fast_main

    return fast_main(PROG, argv, _fast_parse, _run, command)


def command() -> Any:
    """Build the click command (for --help, completion and unusual command lines)."""
    from ._common import CONTEXT, DURATION, click, common, options_to_fast

    @click.command(PROG, context_settings=CONTEXT)
    @click.option("--channel", default="default", show_default=True, help="Inbox channel to consume.")
    @click.option("-n", "n", type=click.IntRange(1), default=None, help="Claim up to N messages [1].")
    @click.option("--all", "take_all", is_flag=True, help="Claim every ready message.")
    @click.option("--wait", is_flag=True, help="Block until a message arrives (exit 75 on --timeout).")
    @click.option(
        "--follow",
        is_flag=True,
        help=f"Keep claiming and printing as messages arrive, N at a time [{FOLLOW_N}], until TERM.",
    )
    @click.option(
        "--timeout",
        type=DURATION,
        default=None,
        help="With --wait: give up after DUR (0: at once). With --exec: kill a handler running longer.",
    )
    @click.option(
        "--lease",
        type=DURATION,
        default="5m",
        show_default=True,
        help="How long a claim holds before the message is ready again (at least 1s).",
    )
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="path",
        show_default=True,
        help="path: ID<TAB>PATH; json: one object per line; raw: the payload of one message.",
    )
    @click.option("--ack", is_flag=True, help="Acknowledge right after output (at-most-once).")
    @click.option(
        "--exec", "command", metavar="CMD", help="Handler mode: run sh -c CMD per message, payload on stdin."
    )
    @click.option(
        "--jobs", type=click.IntRange(1, 1024), default=None, help="With --exec: handlers at once [1]."
    )
    @click.option(
        "--max-attempts",
        type=click.IntRange(0),
        default=None,
        help="With --exec: failed attempts before dead (0: never) [5].",
    )
    @click.option("--once", is_flag=True, help="With --exec: drain what is ready, then exit.")
    @common
    def cmd(**kw: Any) -> int:
        """Claim messages from the inbox, or run a handler for each.

        A claim is a lease: not acknowledged (dropr-ack) in time, the message is
        ready again. Concurrent consumers never get the same message while a
        lease holds. Highest priority first, then arrival. Exit 1 if nothing is
        ready.

        With --exec, the handler gets the payload on stdin and DROPR_ID,
        DROPR_CHANNEL, DROPR_ORIGIN, DROPR_PRIORITY, DROPR_ATTEMPT, DROPR_PATH in
        its environment. Exit 0 acks; 75 releases for a later retry; anything else,
        or running past --timeout, is a failed attempt retried with backoff, and
        after --max-attempts the message is dead. The lease is renewed while the
        handler runs.

        \b
        Examples:
          dropr-recv                                    # ID<TAB>PATH of one message
          dropr-recv -n 100 | while IFS=$'\\t' read id path; do ...; done
          dropr-recv -n 500 | dropr-ack -
          dropr-recv --follow | my-filter | dropr-ack -   # a long-running consumer
          dropr-recv --wait --timeout 30s --format raw --ack
          dropr-recv --exec 'psql -f -' --jobs 4 --timeout 2m
        """
        o = options_to_fast(kw, {"n": "-n", "fmt": "--format", "command": "--exec", "jobs": "--jobs",
                                 "max_attempts": "--max-attempts", "channel": "--channel"},
                            durations=("timeout", "lease"))  # fmt: skip
        o.update(all=kw["take_all"], wait=kw["wait"], ack=kw["ack"], once=kw["once"], follow=kw["follow"])
        return _run(o)

    return cmd


if __name__ == "__main__":
    sys.exit(main())
