"""dropr-send's work: deliver the outbox to peers, back off failing ones, poll receipts.

One sender per spool (a lock). The daemon sleeps on its wake-up socket (puts
wake it at once) and on the next due retry or poll; correctness never depends
on the wake-ups: every pass rescans the queue folders.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from . import message as m
from . import retry
from . import transport as tp
from .config import Peer, group_of, is_url
from .errors import EX_OK, EX_TEMPFAIL, LockedError, UnavailableError, UsageError, disk_full
from .groups import GroupRun, track
from .peerrun import ASK, DEFERRED, ERROR, NEWS, NO_NEWS, QUEUED, ROUND_OVER, SENT, START, PeerRun
from .progress import Bar
from .protocol import DUPLICATE, REFUSED, RETRY, STORED
from .spool import PURGE_CHECK, Spool, Waiter
from .spool.outbox import HOLD_URL
from .summary import SENT as SENT_LINE
from .summary import Summary

log = logging.getLogger(__name__)

DUP_WORD = ("", " duplicate")  # the ending of a debug line: not stored, the peer had it
FULL_PAUSE = 1.0  # a daemon whose spool's filesystem is full tries again after this (s)
POLL_SLOTS = 16  # receipt polls in flight beyond --concurrency: each holds a libcurl handle and
# often a connection (~45 KiB); a thousand peers' polls at once took 45 MiB. Due ones wait a pass.
BUSY_PASS = 0.05  # while transfers run, a daemon's pass (listings, polls) comes at least this often;
# not at each readiness of an upload's socket (a few per message): see _drive_busy


class SendOptions:
    """How dropr-send runs."""

    __slots__ = (
        "once", "peers", "now", "batch", "batch_bytes", "concurrency", "max_messages", "progress", "fetch",
    )  # fmt: skip

    def __init__(
        self,
        *,
        once: bool = False,
        peers: list[str] | None = None,
        now: bool = False,
        batch: int = 500,
        batch_bytes: int = 16 << 20,
        concurrency: int = 16,
        max_messages: int = 0,
        progress: bool = False,
        fetch: list[str] | None = None,
    ) -> None:
        self.once = once
        self.peers = peers or []
        self.now = now
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.concurrency = concurrency
        self.max_messages = max_messages
        self.progress = progress
        self.fetch = fetch or []  # holders to fetch from (dropr-send --fetch; fetch.py)


class Sender:
    """Delivers one spool's outbox.

    One pass of the daemon: refresh_peers, start_sends, start_polls, drive; then
    sleep_for says how long nothing is due. Each peer's state is a PeerRun.
    """

    def __init__(self, spool: Spool, opts: SendOptions) -> None:
        self.spool = spool
        self.cfg = spool.config
        self.opts = opts
        self.timeouts = tp.Timeouts(connect=self.cfg.connect_timeout, total=self.cfg.timeout)
        self.pool = tp.Pool(4 * opts.concurrency)  # idle connections kept for reuse
        self.runs: dict[str, PeerRun] = {}
        self.groups: dict[str, GroupRun] = {}  # peer groups: their queues; members are in runs
        self.delivered = 0
        self.stopping = False
        self.total = 0
        self.bar = Bar("dropr-send", "sent", opts.progress)
        self.summary = Summary(log)  # the lines per batch or interval (summary.py)
        from .fetch import Fetches

        self.fetches = Fetches(self)  # the holders this node fetches from (fetch = true)

    # -- peers ----------------------------------------------------------------

    def _peer(self, name: str) -> Peer:
        if name in self.cfg.peers:
            return self.cfg.peers[name]
        url = self.spool.peer_url(name)
        p = next((p for p in self.cfg.peers.values() if p.url == url), None)
        peer = Peer(name, url, p.token, p.cafile) if p else Peer(name, url, None, self.cfg.cafile)
        peer.via = self.spool.relays.via(name)  # reached through a relay: to v1/relay, as name
        peer.to = name if peer.via else None
        return peer

    def refresh_peers(self) -> None:
        """Start tracking every peer with an outbox folder (of --peer, if given)."""
        for name in self.spool.out_peers():
            if self.opts.peers and name not in self.opts.peers and group_of(name) not in self.opts.peers:
                continue
            if name in self.runs or name in self.groups or track(self, name):
                continue
            try:
                peer = self._peer(name)
            except OSError as exc:
                log.error("error peer=%s reason=cannot read its url: %s", name, exc.strerror)
                continue
            if peer.hold or peer.url == HOLD_URL + "/":  # it fetches its messages (fetch.py)
                continue
            self.runs[name] = PeerRun(peer, self.spool, once=self.opts.once, now=self.opts.now)

    # -- sending --------------------------------------------------------------

    def _inflight(self) -> int:
        return sum(len(r.inflight) for r in self.runs.values())

    def start_sends(self) -> None:
        """Start batches to every peer that may take one, within the pool's limits."""
        wall = time.time()
        for g in self.groups.values():
            g.tick(self.pool, self.spool.node, self.timeouts, wall)
        idle, stalled = self.pool.stalled()  # a hung peer's transfers hold no slot, for the others
        mono = time.monotonic()
        for run in self.runs.values():
            if run.group is None and not run.may_have_work(mono):  # drained: nothing to look at
                continue
            if self._pushing() - idle >= self.opts.concurrency or self.stopping:
                return
            if run.send == DEFERRED or run.peer.name in stalled:  # DEFERRED: the next pass retries it
                continue
            if run.backed_off(wall):
                run.expire_waiting()
                continue
            while run.may_send(wall) and self._pushing() - idle < self.opts.concurrency:
                room = self.opts.batch
                if self.opts.max_messages:
                    room = min(room, self.opts.max_messages - self.delivered - self._inflight())
                    if room <= 0:
                        return
                if run.group is not None:
                    run.group.fill(run, room, wall)
                items = run.next_batch(room, self.opts.batch_bytes)
                if not items:
                    break
                t = tp.upload(run.peer, [(i, p) for i, p, _ in items], self.spool.node, self.timeouts)
                t.tag = [n for _, _, n in items]
                run.fire(START)
                self.pool.add(t)

    def _sent(self, t: tp.Transfer) -> None:
        run = self.runs[t.peer.name]
        run.came_back(t, self._sent_run(run, t))

    def _sent_run(self, run: PeerRun, t: tp.Transfer) -> list[str]:
        """Take in a batch that came back; return the names to retry."""
        names = {m.split_out_name(n)[1]: n for n in t.tag}
        run.inflight.difference_update(t.tag)
        if t.error:
            run.batch_failed(t.error)
            if self.cfg.max_attempts:
                for name in names.values():
                    run.note_failure(name, t.error)
            return list(t.tag)
        ok, again = self._sort_answers(run, t, names)
        run.mark_sent(ok)
        self.delivered += len(ok)
        run.fire(SENT)
        if again:
            for name, reason in again:
                run.note_failure(name, reason or retry.PEER_RETRY)
            run.batch_failed(again[0][1] or retry.PEER_RETRY)
        else:
            run.batch_ok()
        return [n for n, _ in again]

    def _sort_answers(
        self, run: PeerRun, t: tp.Transfer, names: dict[str, str]
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Return the names the peer stored, and (name, reason) of those to retry; kill the refused."""
        ok, again = [], []
        dup = 0
        debug = log.isEnabledFor(logging.DEBUG)  # once per batch: no logging call per message
        for ident, name in names.items():
            status, reason = t.results.get(ident, (RETRY, retry.NO_ANSWER))
            if status in (STORED, DUPLICATE):
                ok.append(name)
                if status == DUPLICATE:
                    dup += 1
                if debug:
                    log.debug("sent id=%s peer=%s%s", ident, run.peer.name, DUP_WORD[status == DUPLICATE])
            elif status == REFUSED:
                run.kill(name, retry.REFUSED.format(reason), reason)
                run.wake_waiters()
            else:
                again.append((name, reason))
        took, size = t.took()
        self.summary.add(SENT_LINE, run.peer.name, len(ok), duplicate=dup, size=size, took=took)
        return ok, again

    # -- receipts -------------------------------------------------------------

    def _start_polls(self, force: bool = False) -> None:
        now = time.monotonic()
        wall = time.time()
        for run in self.runs.values():
            if len(self.pool) >= self.opts.concurrency + POLL_SLOTS:
                return  # the due ones wait a pass
            if not run.poll_due(now, force) or run.backed_off(wall):
                continue
            names = run.poll_names(force)
            if not names:  # nothing sent, or nothing after the last full poll: the round is over
                run.fire(ROUND_OVER)
                continue
            names, origins = self.spool.relays.poll_origins(run.peer.name, names)  # relayed: o=
            split = [m.split_out_name(n) for n in names]
            ids, prefixes = [i for _, i in split], [_created_prefix(p, i) for p, i in split]
            t = tp.status(run.peer, ids, self.spool.node, self.timeouts, prefixes, origins)
            t.tag = names
            run.fire(ASK)
            self.pool.add(t)

    def _polled(self, t: tp.Transfer) -> None:
        run = self.runs[t.peer.name]
        if t.error:
            log.info("status poll failed peer=%s reason=%s", run.peer.name, t.error)
            run.fire(ERROR)
            return
        # an id the peer left out of its answer is no "unknown": it said nothing of it
        answers = [
            (n, *t.results[i]) for n, i in ((n, m.split_out_name(n)[1]) for n in t.tag) if i in t.results
        ]
        changed = run.take_receipts(answers, self.summary)
        if changed:
            run.wake_waiters()
            run.fire(NEWS)
        else:
            run.fire(NO_NEWS)

    # -- loops ----------------------------------------------------------------

    def drive(self, timeout: float) -> int:
        """Wait up to timeout for transfers, and take in every one that ended; return how many."""
        ended = 0
        for t in self.pool.poll(timeout):
            ended += 1
            try:
                if t.kind == "send":
                    self._sent(t)
                elif t.kind == "fetch":
                    self.fetches.finished(t)
                elif t.kind == "health":
                    t.tag.group.probed(t)
                else:
                    self._polled(t)
            finally:
                t.close()
        self.bar.show(self.delivered, self.total)
        return ended

    def run_once(self) -> int:
        """One pass over everything due, then status polling; 0 if nothing is left due, else 75."""
        self.refresh_peers()
        if self.opts.progress:  # the bar's total: a listing of every queue, only for the bar
            self.total = sum(
                len(os.listdir(self.spool.path("out", n, QUEUED))) for n in (*self.runs, *self.groups)
            )
        while not self.stopping:
            self.start_sends()
            if not len(self.pool):
                break
            self.drive(0.5)
            if self.opts.max_messages and self.delivered >= self.opts.max_messages:
                break
        while len(self.pool):
            self.drive(0.5)
        self.bar.show(self.delivered, self.total, final=True)
        self._poll_once()
        fetched = self.fetches.run_once()
        self.summary.flush(everything=True)
        self.spool.purge()
        left = [n for n in (*self.runs, *self.groups) if self.spool.out_any(n, QUEUED)]
        if left and not (self.opts.max_messages and self.delivered >= self.opts.max_messages):
            log.info("deferred peers=%s", ",".join(left))
            return EX_TEMPFAIL
        return fetched

    def _poll_once(self) -> None:
        """One status poll per peer, going on from where the last pass's poll stopped
        (kept in peer.json): a pass costs one poll however many messages wait."""
        for run in self.runs.values():
            run.poll_after = str(self.spool.peer_state(run.peer.name).get("poll_after", ""))
        self._start_polls(force=True)
        while len(self.pool):
            self.drive(0.5)
        for run in self.runs.values():
            st = self.spool.peer_state(run.peer.name)
            if st.get("poll_after", "") != run.poll_after:
                st["poll_after"] = run.poll_after
                self.spool.set_peer_state(run.peer.name, st)

    def run_daemon(self) -> int:
        """Deliver until TERM, sleeping on wake-ups, retries and polls."""
        waiter = self.spool.wakeups.sender()
        last_purge = 0.0
        try:
            while not self.stopping:
                self.refresh_peers()
                self.start_sends()
                self._start_polls()
                self.fetches.start()
                self.summary.flush()
                if time.monotonic() - last_purge > PURGE_CHECK:
                    self.spool.purge_if_due()
                    last_purge = time.monotonic()
                done = self.opts.max_messages and self.delivered >= self.opts.max_messages
                if done and not self._pushing():
                    log.info("exiting after max_messages=%d", self.opts.max_messages)
                    break
                if len(self.pool):
                    _drive_busy(self, waiter)
                    continue
                if waiter.wait(self.sleep_for(), drain=False):
                    _mark_dirty(self, waiter.drain_names())
        finally:
            self.summary.flush(everything=True)
            waiter.close()
            self.fetches.close()
            self.pool.close()
        return EX_OK

    def _pushing(self) -> int:
        """Return the transfers in flight but fetches (a held one never ends the daemon)."""
        return len(self.pool) - self.fetches.inflight

    def sleep_for(self) -> float:
        """Return how long the daemon may sleep before a retry, poll, listing or check is due."""
        now = time.monotonic()
        wall = time.time()
        sleep = 30.0
        for run in self.runs.values():
            if run.poll_at:
                sleep = min(sleep, run.poll_at - now)
            if run.backed_off(wall) and (run.queue or self.spool.out_any(run.peer.name, QUEUED)):
                sleep = min(sleep, run.until - wall)
                if run.ttl:
                    sleep = min(sleep, run.expire_at - now)
            elif run.queue:
                sleep = 0
        sleep = min([sleep, self.summary.due(), *(g.sleep_for(wall) for g in self.groups.values())])
        return max(0.0, self.fetches.sleep_for(sleep))


def _mark_dirty(sender: Sender, names: set[str] | None) -> None:
    """Mark the queues a wake-up named (None: all) as due a listing. A name not tracked
    yet is a folder refresh_peers finds at the top of the loop, dirty from the start; a
    held peer's (fetched, no run) or one --peer leaves out: nothing to do."""
    if names is None:
        names = set(sender.runs) | set(sender.groups)
    for name in names:
        run = sender.runs.get(name)
        if run is not None:
            run.dirty = True
        g = sender.groups.get(name)
        if g is not None:  # the group queue; its members' own queues are listed too
            g.queue.dirty = True
            for r in g.members:
                r.dirty = True


def _drive_busy(sender: Sender, waiter: Waiter) -> None:
    """Drive a sender's transfers in flight until one ends, a wake-up comes or BUSY_PASS passed."""
    held = not sender._pushing()  # only held fetches in flight: sleep as when idle
    until = time.monotonic() + (sender.sleep_for() if held else BUSY_PASS)
    while True:
        woken = sender.pool.wait(max(0.0, until - time.monotonic()), waiter.fileno())
        ended = sender.drive(0)
        if woken:
            _mark_dirty(sender, waiter.drain_names())
        if woken or ended or not len(sender.pool) or time.monotonic() >= until:
            return


def _created_prefix(prefix: str, ident: str) -> str:
    """Return the "{p}{created}" prefix of a sent message's inbox name at the peer: a
    generated id's creation time is its first 13 digits, which a relayed message's
    outbox name does not carry (its time is its arrival at the relay). Without it, the
    peer looks the id up under every priority (ten names per state, not one)."""
    return prefix[0] + ident[:13] if m.generated_time(ident) is not None else prefix


def check_peers(spool: Spool, names: list[str], once: bool) -> None:
    """Reject --peer names that are no peer of this spool, before anything is sent.

    Otherwise a typo delivered nothing and exited 0 while the real peer's messages
    stayed queued: it looked like success. A daemon only warns about a name that could
    be a peer: a URL peer's outbox folder appears with the first put for it, and a
    service that exits until then would be restarted over and over.
    """
    if not names:
        return
    known = set(spool.config.peers) | set(spool.out_peers())
    for name in names:
        if name in known:
            continue
        if is_url(name):
            folder = spool.config.peer(name).name
            raise UsageError(f"bad --peer {name!r}: give the peer's name, not its URL: --peer {folder}")
        try:
            m.check_name(name, "a peer name")
        except ValueError as exc:
            raise UsageError(f"bad --peer {name!r}: {exc}; see 'dropr-send --help'") from None
        shown = ", ".join(sorted(known)) or "none"
        if not once:
            log.warning(
                "unknown peer=%s known=%s: nothing goes to it until a put makes its outbox", name, shown
            )
            continue
        raise UnavailableError(
            f"unknown peer {name!r} (known: {shown}); give a configured peer or an outbox folder of dropr-ls"
        )


def run(spool: Spool, opts: SendOptions) -> int:
    """Take the spool's send lock and deliver, once or as a daemon."""
    check_peers(spool, opts.peers, opts.once)
    from .fetch import check_fetch

    check_fetch(spool, opts.fetch)
    lock = spool.fs.lock(spool.path("lock", "send.lock"), wait=False)  # made as private as the spool
    try:
        lock.acquire()
    except BlockingIOError:
        raise LockedError(
            f"another dropr-send is already running on {spool.root}; one sender per spool"
        ) from None
    sender: Sender | None = None
    stopped = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        stopped.set()
        if sender is not None:
            sender.stopping = True
        spool.wakeups.resume_sender()  # select() resumes after a signal (PEP 475): wake it for real

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while True:
            try:
                sender = Sender(spool, opts)
                sender.stopping = stopped.is_set()
                return sender.run_once() if opts.once else sender.run_daemon()
            except OSError as exc:  # a full disk: the daemon waits it out, and starts over (#16)
                if opts.once or stopped.is_set() or not disk_full(exc):
                    raise
                log.error("spool full reason=%s; starting over in %.0fs", exc, FULL_PAUSE)
                stopped.wait(FULL_PAUSE)
    finally:
        lock.release()
