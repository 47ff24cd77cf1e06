"""dropr-ls: inspect spools: summary, listing, one message, JSON, Prometheus."""

from __future__ import annotations

import sys
from typing import Any

from dropr import report
from dropr.errors import EX_NOTFOUND, UsageError

from ._common import CONTEXT, check_name, click, common, main_for, obj


@click.command("dropr-ls", context_settings=CONTEXT)
@click.option("--out", "only_out", is_flag=True, help="Only the outbox (per peer).")
@click.option("--in", "only_in", is_flag=True, help="Only the inbox (per channel).")
@click.option("--peer", metavar="P", help="Only this outbox peer.")
@click.option("--channel", metavar="C", help="Only this inbox channel.")
@click.option(
    "--state",
    type=click.Choice(["queued", "sent", "processed", "dead", "ready", "wait", "claimed", "done"]),
    help="Only this state.",
)
@click.option("-l", "--list", "listing", is_flag=True, help="One line per message.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--prom", "as_prom", is_flag=True, help="Prometheus text format (node_exporter textfile).")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@common
def cmd(only_out: bool, only_in: bool, peer: str | None, channel: str | None, state: str | None,
        listing: bool, as_json: bool, as_prom: bool, ids: tuple[str, ...], **kw: Any) -> int:  # fmt: skip
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
    _check_conflicts(only_out, only_in, listing, as_json, as_prom, ids)
    box = "out" if only_out else "in" if only_in else None
    fmt = "json" if as_json else "prom" if as_prom else None
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


def _check_conflicts(only_out: bool, only_in: bool, listing: bool, as_json: bool, as_prom: bool,
                     ids: tuple[str, ...]) -> None:  # fmt: skip
    """Refuse options that exclude each other, rather than let the last one win quietly."""
    if only_out and only_in:
        raise UsageError("--out and --in exclude each other; give neither for both boxes")
    if as_json and as_prom:
        raise UsageError("--json and --prom exclude each other")
    if as_prom and (listing or ids):
        raise UsageError("--prom prints the summary; -l and ID do not apply")


def _detail_text(rec: dict[str, Any]) -> str:
    width = max(len(k) for k in rec)
    return "".join(f"{k.ljust(width)}  {'-' if v is None else v}\n" for k, v in rec.items()) + "\n"


main = main_for(cmd)
