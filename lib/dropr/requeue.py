"""dropr-ack --requeue: put dead messages back into the flow (what SQS calls a redrive).

Inbox: ``dead`` -> ``ready`` with the counts reset (``Leases.requeue``); with ``out``,
outbox: ``dead`` -> ``queued`` for every peer where the id is dead, attempts and TTL
reset (``Outbox.requeue``). Purges are held off meanwhile: they unlink dead entries.
Imported only by a requeue, so plain acks start no slower.
"""

from __future__ import annotations

import os
import sys

from .config import group_of
from .errors import EX_NOTFOUND, EX_OK, NotFoundError
from .message import parse_in_name
from .spool.wake import FETCH_PREFIX

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import IO

    from .spool import Spool


def requeue(
    spool: Spool,
    ids: Iterable[str] | None,
    *,
    out: bool = False,
    channel: str | None = None,
    peer: str | None = None,
    stdout: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Requeue dead messages by id (None: every one there); print each id; 0, or 1 if some id
    was not dead."""
    report = _Report(stdout or sys.stdout, err or sys.stderr)
    with spool.retention.hold():
        if out or peer is not None:
            _outbox(spool, ids, peer, report)
        else:
            _inbox(spool, ids, channel, report)
    return report.end()


class _Report:
    """One line per requeued id on stdout, one error line per id that was not dead."""

    def __init__(self, stdout: IO[str], err: IO[str]) -> None:
        self.stdout = stdout
        self.err = err
        self.failed = 0

    def done(self, ident: str) -> None:
        self.stdout.write(f"{ident}\n")

    def error(self, ident: str, why: str) -> None:
        shown = ident if ident.isprintable() and len(ident) <= 200 else repr(ident[:200])  # one line
        self.err.write(f"dropr-ack: error: {shown} {why}\n")
        self.failed += 1

    def end(self) -> int:
        self.stdout.flush()
        self.err.flush()
        return EX_NOTFOUND if self.failed else EX_OK


def _ids(ids: Iterable[str]) -> Iterable[str]:
    """The ids as dropr-ack reads them: ID<TAB>... lines too, blank ones skipped."""
    for ident in ids:
        ident = ident.strip().split("\t", 1)[0]
        if ident:
            yield ident


def _inbox(spool: Spool, ids: Iterable[str] | None, channel: str | None, report: _Report) -> None:
    channels = None
    if channel is not None:
        if not os.path.isdir(spool.path("in", channel, "dead")):
            raise NotFoundError(f"no channel {channel!r} in the inbox of {spool.root}")
        channels = [channel]
    leases = spool.leases
    touched: set[str] = set()
    if ids is None:
        for ch in channels if channels is not None else spool.channels():
            for name in spool.in_names(ch, "dead"):
                if leases.requeue(ch, name):
                    touched.add(ch)
                    report.done(parse_in_name(name)[3])
    else:
        index = leases.index("dead", channels)
        for ident in _ids(ids):
            hits = index.get(ident, [])
            if len(hits) > 1:
                report.error(ident, "is dead from several origins; give ORIGIN,ID")
            elif not hits or not leases.requeue(*hits[0]):
                report.error(ident, "is not dead in the inbox (not finished, requeued already, or unknown)")
            else:
                ch, name = hits[0]
                touched.add(ch)
                report.done(ident)
                _, _, origin, bare = parse_in_name(name)
                index.pop(bare, None)  # requeued: the same id again is "not dead"
                index.pop(f"{origin},{bare}", None)
    for ch in touched:
        spool.wakeups.wake_consumers(ch)


def _outbox(spool: Spool, ids: Iterable[str] | None, peer: str | None, report: _Report) -> None:
    peers = spool.out_peers()
    if peer is not None:
        if peer not in peers:
            raise NotFoundError(f"no peer {peer!r} in the outbox of {spool.root}")
        peers = [p for p in peers if p == peer or group_of(p) == peer]  # a group: its members too
    outbox = spool.outbox
    moved: set[str] = set()  # the folders something was requeued in: the sender lists only them
    if ids is None:
        done: dict[str, None] = {}  # one line per id, however many peers it was dead for
        for p in peers:
            for name in outbox.requeue(p, outbox.names(p, "dead")):
                done[name.split(",", 1)[1]] = None
                moved.add(p)
        for ident in done:
            report.done(ident)
    else:
        for ident in _ids(ids):
            dead: dict[str, list[str]] = {}
            for p, state, name in outbox.find(ident):
                if state == "dead" and p in peers:
                    dead.setdefault(p, []).append(name)
            back = [p for p, names in dead.items() if outbox.requeue(p, names)]
            if back:
                report.done(ident)
                moved.update(back)
            else:
                report.error(ident, "is not dead in the outbox (not given up, requeued already, or unknown)")
    if moved:
        spool.wakeups.wake_sender(moved)
        spool.wakeups.wake(FETCH_PREFIX)  # a held peer's are fetched: wake what it holds open
