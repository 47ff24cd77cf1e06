"""dropr-put: enqueue messages into the local outbox, durably; print their ids.

Start-up time matters here (a shell loop may call it thousands of times): ``main``
parses the usual options with ``_fast`` and imports click only for --help,
completion or a command line it does not understand.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dropr.put import PutOptions

PROG = "dropr-put"
_VALUED = frozenset({"--channel", "--priority", "--ttl", "--id", "--file", "--timeout", "--key"})
_FLAGS = frozenset({"--lines", "--null", "--wait"})


def _fast_parse(argv: list[str]) -> dict[str, Any] | None:
    """Parse the common command lines; None sends anything unusual to click."""
    from ._fast import parse

    o = parse(argv, valued=_VALUED, flags=_FLAGS, multi={"--to"})
    if o is not None:
        o["to"] = o.pop("--to")
    return o


def _run(o: dict[str, Any]) -> int:
    return _start(o, _options_from(o))


def _start(o: dict[str, Any], opts: PutOptions) -> int:
    """Put as opts says, from either parser; o holds -v/-q, --spool and --config."""
    from dropr.put import enqueue

    if o.get("verbose"):
        from ._guard import setup_logging

        setup_logging(PROG, o["verbose"], o["quiet"])
    return enqueue(opts, o.get("--spool"), o.get("--config"), quiet=bool(o.get("quiet")))


def _options_from(o: dict[str, Any]) -> PutOptions:
    """Turn the fast parser's strings into the library's options."""
    from dropr import put
    from dropr.errors import UsageError

    from ._fast import duration_option, optional_duration

    split = put.split_for(bool(o.get("lines")), bool(o.get("null")))
    try:
        priority = int(o.get("--priority", 5))
    except ValueError:
        raise UsageError(f"bad --priority {o['--priority']!r}: use 0 (most urgent) to 9") from None
    return put.PutOptions(
        to=o["to"], channel=o.get("--channel", "default"), priority=priority,
        ttl=duration_option(o, "--ttl", 0), ident=o.get("--id"), file=o.get("--file"), split=split,
        wait=bool(o.get("wait")), timeout=optional_duration(o, "--timeout"), key=o.get("--key"),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Console entry point: fast path for plain use, click for everything else."""
    from ._fast import fast_main

    return fast_main(PROG, argv, _fast_parse, _run, command)


def command() -> Any:
    """Build the click command (only for --help, completion and unusual command lines)."""
    from ._common import CONTEXT, click, common, common_options, with_options

    @click.command(PROG, context_settings=CONTEXT)
    @with_options(*_options())
    @common
    def cmd(**kw: Any) -> int:
        """Enqueue messages into the local outbox, durably; print their ids.

        The payload comes from stdin (or --file). The command returns only once
        the message is on disk, file and directory fsynced, and wakes a running
        dropr-send at once.

        \b
        Examples:
          echo hello | dropr-put --to db1
          dropr-put --to db1 --to db2 --file dump.sql --channel backups
          tail -F app.log | dropr-put --lines --to http://logs.example.net:8080/
          dropr-put --to db1 --id order-4711 --priority 0 < order.json
          dropr-put --to db1 --wait --timeout 30s < job.json
          dropr-put --to shards --key customer-17 < order.json
        """
        from dropr.put import PutOptions, split_for

        opts = PutOptions(to=list(kw["to"]), channel=kw["channel"], priority=kw["priority"],
                          ttl=kw["ttl"] or 0, ident=kw["ident"], file=kw["file"],
                          split=split_for(kw["lines"], kw["null"]), wait=kw["wait"],
                          timeout=kw["timeout"], key=kw["key"])  # fmt: skip
        return _start(common_options(kw), opts)

    return cmd


def _options() -> list[Any]:
    """Return dropr-put's own click options, in --help order."""
    from . import _complete
    from ._common import DURATION, FILE, click

    return [
        click.option("--to", "to", multiple=True, metavar="PEER", shell_complete=_complete.peers,
                     help="Destination: a peer name from the config or an http(s):// URL. "
                     "Repeat to multicast."),
        click.option("--channel", metavar="NAME", default="default", show_default=True,
                     shell_complete=_complete.channels, help="Queue name at the receiver."),
        click.option("--priority", type=click.IntRange(0, 9), metavar="N", default=5, show_default=True,
                     help="0 is most urgent, 9 least."),
        click.option("--ttl", type=DURATION, default=None,
                     help="Give up (dead letter) if not delivered within DUR."),
        click.option("--id", "ident", metavar="ID",
                     help="Caller-chosen id; putting an id already in the outbox is a no-op."),
        click.option("--file", "file", type=FILE, metavar="FILE",
                     help="Read the payload from FILE (streamed, any size) instead of stdin."),
        click.option("--lines", is_flag=True, help="Every line of stdin is one message (newline stripped)."),
        click.option("--null", is_flag=True, help="Every NUL-terminated record of stdin is one message."),
        click.option("--key", metavar="KEY",
                     help="Keep the messages of one KEY on one member of a spread group while it "
                     "is up (per-key order)."),
        click.option("--wait", is_flag=True,
                     help="Block until every destination processed the message (0), it died (1) "
                     "or --timeout (75)."),
        click.option("--timeout", type=DURATION, default=None, help="With --wait: give up after DUR."),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
