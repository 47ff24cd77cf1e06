"""dropr-ack: finish claimed messages: ack, release for retry, or reject; requeue dead ones.

Called in pipelines as often as dropr-recv, so it has the same fast path.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dropr.consume import AckRequest

PROG = "dropr-ack"
_VALUED = frozenset({"--delay", "--reason", "--channel", "--peer"})
_FLAGS = frozenset({"--release", "--reject", "--requeue", "--out", "--all"})


def _fast_parse(argv: list[str]) -> dict[str, Any] | None:
    from ._fast import parse

    return parse(argv, valued=_VALUED, flags=_FLAGS, positional=True)


def _run(o: dict[str, Any]) -> int:
    return _start(o, _request(o))


def _start(o: dict[str, Any], req: AckRequest) -> int:
    """Check and run a request from either parser; o holds -v/-q, --spool and --config."""
    from ._common_fast import logging_for, open_spool

    logging_for(PROG, o)
    req.check()  # the rules between the options and ids, before the spool is created
    return req.run(lambda: open_spool(o), sys.stdin)


def _request(o: dict[str, Any]) -> AckRequest:
    """Turn the fast parser's strings into the library's request."""
    from dropr.consume import AckRequest

    from ._fast import optional_duration

    return AckRequest(ids=o["args"], release=o["release"], reject=o["reject"],
                      delay=optional_duration(o, "--delay"), reason=o.get("--reason"), requeue=o["requeue"],
                      out=o["out"], all_dead=o["all"], channel=o.get("--channel"),
                      peer=o.get("--peer"))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Console entry point: fast path for plain use, click for everything else."""
    from ._fast import fast_main

    return fast_main(PROG, argv, _fast_parse, _run, command)


def command() -> Any:
    """Build the click command (for --help, completion and unusual command lines)."""
    from . import _complete
    from ._common import CONTEXT, DURATION, click, common, common_options

    @click.command(PROG, context_settings=CONTEXT)
    @click.option("--release", is_flag=True, help="Back to ready for another try instead of done.")
    @click.option("--delay", type=DURATION, default=None, help="With --release: ready again only after DUR.")
    @click.option("--reject", is_flag=True, help="To dead (not retried), with --reason.")
    @click.option(
        "--reason",
        metavar="TEXT",
        default=None,
        help="With --reject: why (shown by dropr-ls, sent back as the receipt).",
    )
    @click.option("--requeue", is_flag=True, help="Dead messages back: inbox dead to ready, counts reset.")
    @click.option("--out", is_flag=True, help="With --requeue: outbox dead to queued, for every peer.")
    @click.option("--all", "all_dead", is_flag=True, help="With --requeue: every dead message (no ids).")
    @click.option("--channel", metavar="NAME", default=None, shell_complete=_complete.channels,
                  help="With --requeue: only this inbox channel.")  # fmt: skip
    @click.option("--peer", metavar="NAME", default=None, shell_complete=_complete.peers,
                  help="With --requeue: only this outbox peer.")  # fmt: skip
    @click.argument("ids", nargs=-1, metavar="ID... | -")
    @common
    def cmd(**kw: Any) -> int:
        """Finish claimed messages: acknowledge (done), --release or --reject;
        or --requeue dead ones.

        Ids come as arguments, or one per line on stdin with "-" (dropr-recv's
        ID<TAB>PATH lines are accepted as they are). An id that is not claimed is
        an error for that id (exit 1); the others still succeed. --requeue puts
        dead messages back into the flow once the cause is fixed, and prints
        each id: inbox dead to ready with the attempt count reset; with --out,
        outbox dead to queued for every peer, attempts and TTL reset.

        \b
        Examples:
          dropr-ack 0190f3c2a1b4c5d6e7f8a9b0
          dropr-recv -n 500 | dropr-ack -
          dropr-ack --release --delay 10m ID
          dropr-ack --reject --reason "bad customer number" ID
          dropr-ack --requeue ID
          dropr-ack --requeue --all --channel jobs
          dropr-ack --requeue --out --all --peer db1
        """
        from dropr.consume import AckRequest

        req = AckRequest(ids=list(kw["ids"]), release=kw["release"], reject=kw["reject"], delay=kw["delay"],
                         reason=kw["reason"], requeue=kw["requeue"], out=kw["out"], all_dead=kw["all_dead"],
                         channel=kw["channel"], peer=kw["peer"])  # fmt: skip
        return _start(common_options(kw), req)

    return cmd


if __name__ == "__main__":
    sys.exit(main())
