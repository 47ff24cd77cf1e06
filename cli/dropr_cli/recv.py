"""dropr-recv: claim messages from the local inbox, or run a handler per message.

Shell loops call this often, so ``main`` takes ``_fast`` for the usual command
lines and builds the click command only for --help and anything unusual.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dropr.consume import RecvRequest

PROG = "dropr-recv"
_VALUED = frozenset(
    {"--channel", "-n", "--timeout", "--lease", "--format", "--exec", "--jobs", "--max-attempts"}
)
_FLAGS = frozenset({"--all", "--wait", "--ack", "--once", "--follow"})


def _fast_parse(argv: list[str]) -> dict[str, Any] | None:
    from ._fast import parse

    return parse(argv, valued=_VALUED, flags=_FLAGS)


def _run(o: dict[str, Any]) -> int:
    return _start(o, _request(o))


def _start(o: dict[str, Any], req: RecvRequest) -> int:
    """Check and run a request from either parser; o holds -v/-q, --spool and --config."""
    from ._common_fast import logging_for, open_spool

    logging_for(PROG, o, always=req.command is not None)
    req.check()  # the rules between the options, before the spool is created
    return req.run(open_spool(o))


def _request(o: dict[str, Any]) -> RecvRequest:
    """Turn the fast parser's strings into the library's request."""
    from dropr.consume import RecvRequest

    from ._fast import duration_option, optional_duration, optional_int

    return RecvRequest(
        channel=o.get("--channel", "default"), n=optional_int(o, "-n", 1),
        jobs=optional_int(o, "--jobs", 1, 1024), max_attempts=optional_int(o, "--max-attempts", 0),
        timeout=optional_duration(o, "--timeout"),
        lease=duration_option(o, "--lease", 300), fmt=o.get("--format", "path"), command=o.get("--exec"),
        take_all=o["all"], wait=o["wait"], follow=o["follow"], ack=o["ack"], once=o["once"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Console entry point: fast path for plain use, click for everything else."""
    from ._fast import fast_main

    return fast_main(PROG, argv, _fast_parse, _run, command)


def command() -> Any:
    """Build the click command (for --help, completion and unusual command lines)."""
    from ._common import CONTEXT, click, common, common_options, with_options

    @click.command(PROG, context_settings=CONTEXT)
    @with_options(*_options())
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
        from dropr.consume import RecvRequest

        return _start(common_options(kw), RecvRequest(**{k: kw[k] for k in RecvRequest.__slots__}))

    return cmd


def _options() -> list[Any]:
    """Return dropr-recv's own click options, in --help order."""
    from dropr.consume import FOLLOW_N, FORMATS

    from . import _complete
    from ._common import DURATION, Option, click

    return [
        click.option("--channel", metavar="NAME", default="default", show_default=True,
                     shell_complete=_complete.channels, help="Inbox channel to consume."),
        click.option("-n", "n", cls=Option, type=click.IntRange(1), metavar="N", default=None,
                     show_default="1",
                     help=f"Claim up to N messages (with --follow: N at a time, {FOLLOW_N} unless given)."),
        click.option("--all", "take_all", is_flag=True, help="Claim every ready message."),
        click.option("--wait", is_flag=True, help="Block until a message arrives (exit 75 on --timeout)."),
        click.option("--follow", is_flag=True,
                     help="Keep claiming and printing as messages arrive, -n at a time, until TERM."),
        click.option("--timeout", type=DURATION, default=None,
                     help="With --wait: give up after DUR (0: at once). "
                     "With --exec: kill a handler running longer."),
        click.option("--lease", type=DURATION, default="5m", show_default=True,
                     help="How long a claim holds before the message is ready again (at least 1s)."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="path", show_default=True,
                     help="path: ID<TAB>PATH; json: one object per line; raw: the payload of one message."),
        click.option("--ack", is_flag=True, help="Acknowledge right after output (at-most-once)."),
        click.option("--exec", "command", metavar="CMD",
                     help="Handler mode: run sh -c CMD per message, payload on stdin."),
        click.option("--jobs", cls=Option, type=click.IntRange(1, 1024), metavar="N", default=None,
                     show_default="1", help="With --exec: handlers at once."),
        click.option("--max-attempts", cls=Option, type=click.IntRange(0), metavar="N", default=None,
                     show_default="5", help="With --exec: failed attempts before dead (0: never)."),
        click.option("--once", is_flag=True, help="With --exec: drain what is ready, then exit."),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
