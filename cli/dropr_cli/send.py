"""dropr-send: deliver the outbox to peers, as a daemon or --once."""

from __future__ import annotations

import sys
from typing import Any

from dropr import privacy
from dropr.sender import SendOptions, run

from . import _complete
from ._common import CONTEXT, SIZE, click, common, main_for, obj


@click.command("dropr-send", context_settings=CONTEXT)
@click.option(
    "--once",
    is_flag=True,
    help="One pass over everything due, poll receipts, exit (0 all sent, 75 some deferred).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="NAME",
    shell_complete=_complete.peers,
    help="Only deliver to this peer (a configured name or an outbox folder); repeatable; unknown: exit 69.",
)
@click.option(
    "--fetch",
    "fetch",
    multiple=True,
    metavar="NAME",
    shell_complete=_complete.fetch_peers,
    help="Fetch this node's messages from holder NAME (a peer with fetch = true); repeatable.",
)
@click.option(
    "--now", is_flag=True, help="Ignore the backoff from before this run: try failing peers at once."
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100000),
    metavar="N",
    default=500,
    show_default=True,
    help="Most messages per HTTP request.",
)
@click.option(
    "--batch-bytes",
    type=SIZE,
    default="16MiB",
    show_default=True,
    help="Most payload bytes per request (one larger message still goes alone).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    metavar="N",
    default=16,
    show_default=True,
    help="Requests in flight at once, over all peers.",
)
@click.option(
    "--max-messages",
    type=click.IntRange(0),
    metavar="N",
    default=0,
    show_default=True,
    help="Exit after delivering N messages (recycling under dropr-angel); 0: never.",
)
@common
def cmd(once: bool, peers: tuple[str, ...], fetch: tuple[str, ...], now: bool, batch: int, batch_bytes: int,
        concurrency: int, max_messages: int, **kw: Any) -> int:  # fmt: skip
    """Deliver the outbox to peers over HTTP(S).

    As a daemon (the default) it sends what is due, then sleeps until
    dropr-put wakes it or a retry falls due. Many messages go in one request,
    uploaded by libcurl straight from the spool; several peers at once. A
    failing peer is backed off without holding up the others. Messages stay
    queued until the peer confirms them stored. One sender per spool.

    It also fetches this node's messages from holders nobody else can reach
    it through: the daemon from every peer with fetch = true, --once from
    each --fetch NAME, in rounds until the holder has nothing more.

    \b
    Examples:
      dropr-send                        # daemon, e.g. under systemd or dropr-angel
      dropr-send --once                 # from cron or a systemd timer
      dropr-send --once --peer db1 --now
      dropr-send --once --fetch hub     # fetch what hub holds for this node
      dropr-angel -- dropr-send --max-messages 1000000
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-send")
    opts = SendOptions(
        once=once,
        peers=list(peers),
        now=now,
        batch=batch,
        batch_bytes=batch_bytes,
        concurrency=concurrency,
        max_messages=max_messages,
        progress=once and sys.stderr.isatty() and not o.quiet,
        fetch=list(fetch),
    )
    spool = o.spool()
    privacy.warn(spool.root, spool.config, "dropr-send")  # once, at start
    return run(spool, opts)


main = main_for(cmd)
