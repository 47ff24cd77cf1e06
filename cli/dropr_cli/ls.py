"""dropr-ls: inspect spools: summary, listing, one message, JSON, Prometheus."""

from __future__ import annotations

import sys
from typing import Any

from dropr import report
from dropr.errors import EX_NOTFOUND

from ._common import CONTEXT, check_name, click, common, main_for, obj


@click.command("dropr-ls", context_settings=CONTEXT)
@click.option("--out", "box", flag_value="out", help="Only the outbox (per peer).")
@click.option("--in", "box", flag_value="in", help="Only the inbox (per channel).")
@click.option("--peer", metavar="P", help="Only this outbox peer.")
@click.option("--channel", metavar="C", help="Only this inbox channel.")
@click.option(
    "--state",
    type=click.Choice(["queued", "sent", "processed", "dead", "ready", "wait", "claimed", "done"]),
    help="Only this state.",
)
@click.option("-l", "--list", "listing", is_flag=True, help="One line per message.")
@click.option("--json", "fmt", flag_value="json", help="JSON lines.")
@click.option("--prom", "fmt", flag_value="prom", help="Prometheus text format (node_exporter textfile).")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@common
def cmd(box: str | None, peer: str | None, channel: str | None, state: str | None, listing: bool,
        fmt: str | None, ids: tuple[str, ...], **kw: Any) -> int:  # fmt: skip
    """Inspect spools: a summary, one line per message, or everything about IDs.

    The summary has one row per box, peer or channel and state with count,
    bytes and the age of the oldest message, then per peer the backlog, the
    age of its oldest queued message, the last success and the last error.

    \b
    Examples:
      dropr-ls                          # summary of the whole spool
      dropr-ls --out --state dead -l    # what could not be delivered, and why
      dropr-ls 0190f3c2a1b4c5d6e7f8a9b0 # everything about one message
      dropr-ls --json --in              # summary rows as JSON lines
      dropr-ls --prom > /var/lib/node_exporter/dropr.prom
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-ls")
    check_name(channel, "channel")
    check_name(peer, "peer")
    spool = o.spool(create=False)
    flt = report.Filter(box=box, peer=peer, channel=channel, state=state)
    w = sys.stdout.write
    if ids:
        missing = 0
        for ident in ids:
            recs = report.details(spool, ident)
            if not recs:
                click.echo(f"dropr-ls: error: no message {ident!r} in {spool.root}", err=True)
                missing += 1
            for rec in recs:
                w(report.json_line(rec) if fmt == "json" else _detail_text(rec))
        return EX_NOTFOUND if missing else 0
    if listing:
        for rec in report.messages(spool, flt):
            w(report.json_line(rec) if fmt == "json" else report.message_line(rec))
        return 0
    rows = report.summary(spool, flt)
    prs = report.peers(spool, flt, rows)
    if fmt == "json":
        for r in rows:
            w(report.json_line(r))
    elif fmt == "prom":
        w(report.prom(rows, prs))
    else:
        w(report.summary_text(rows, prs))
    return 0


def _detail_text(rec: dict[str, Any]) -> str:
    width = max(len(k) for k in rec)
    return "".join(f"{k.ljust(width)}  {'-' if v is None else v}\n" for k, v in rec.items()) + "\n"


main = main_for(cmd)
