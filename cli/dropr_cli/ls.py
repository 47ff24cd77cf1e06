"""dropr-ls: inspect spools: summary, listing, one message, JSON, Prometheus."""

from __future__ import annotations

import sys
from typing import Any

from dropr import report

from . import _complete
from ._common import CONTEXT, click, common, main_for, obj


@click.command("dropr-ls", context_settings=CONTEXT)
@click.option("--out", "only_out", is_flag=True, help="Only the outbox (per peer).")
@click.option("--in", "only_in", is_flag=True, help="Only the inbox (per channel).")
@click.option("--peer", metavar="NAME", shell_complete=_complete.peers, help="Only this outbox peer.")
@click.option("--channel", metavar="NAME", shell_complete=_complete.channels, help="Only this inbox channel.")
@click.option(
    "--state",
    type=click.Choice(["queued", "sent", "processed", "dead", "ready", "wait", "claimed", "done"]),
    help="Only this state.",
)
@click.option("-l", "--list", "listing", is_flag=True, help="One line per message.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--prom", "as_prom", is_flag=True, help="Prometheus text format (node_exporter textfile).")
@click.option(
    "--verify",
    is_flag=True,
    help="Read every message and check its checksum; move failures to corrupt/ (exit 1 if any).",
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@common
def cmd(**kw: Any) -> int:
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
      dropr-ls --verify --in            # check every inbox message's checksum
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-ls")
    req = report.LsRequest(**{k: kw[k] for k in report.LsRequest.__slots__})
    req.check()  # before the spool is opened
    return req.run(o.spool(create=False), progress=sys.stderr.isatty() and not o.quiet)


main = main_for(cmd)
