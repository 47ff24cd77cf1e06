"""dropr-ack: finish claimed messages: ack, release for retry, or reject."""

from __future__ import annotations

import sys
from typing import Any

from dropr.consume import ack, read_ids
from dropr.errors import UsageError

from ._common import CONTEXT, DURATION, click, common, main_for, obj


@click.command("dropr-ack", context_settings=CONTEXT)
@click.option("--release", is_flag=True, help="Back to ready for another try instead of done.")
@click.option("--delay", type=DURATION, default=None, help="With --release: ready again only after DUR.")
@click.option("--reject", is_flag=True, help="To dead (not retried), with --reason.")
@click.option(
    "--reason",
    metavar="TEXT",
    default=None,
    help="With --reject: why (shown by dropr-ls, sent back as the receipt).",
)
@click.argument("ids", nargs=-1, metavar="ID... | -")
@common
def cmd(release: bool, delay: float | None, reject: bool, reason: str | None, ids: tuple[str, ...],
        **kw: Any) -> int:  # fmt: skip
    """Finish claimed messages: acknowledge (done), --release or --reject.

    Ids come as arguments, or one per line on stdin with "-" (dropr-recv's
    ID<TAB>PATH lines are accepted as they are). An id that is not claimed is
    an error for that id (exit 1); the others still succeed.

    \b
    Examples:
      dropr-ack 0190f3c2a1b4c5d6e7f8a9b0
      dropr-recv -n 500 | dropr-ack -
      dropr-ack --release --delay 10m ID
      dropr-ack --reject --reason "bad customer number" ID
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-ack")
    if release and reject:
        raise UsageError("--release and --reject exclude each other")
    if delay is not None and not release:
        raise UsageError("--delay goes with --release")
    if reason is not None and not reject:
        raise UsageError("--reason goes with --reject")
    if not ids:
        raise UsageError("no ids; give ID... or - to read them from stdin")
    todo = read_ids(sys.stdin) if ids == ("-",) else list(ids)
    if not todo:
        return 0
    how = "release" if release else "reject" if reject else "ack"
    return ack(o.spool(), todo, how, reason=reason or "", delay=delay or 0)


main = main_for(cmd)
