"""dropr-send's work: deliver the outbox to peers, back off failing ones, poll receipts.

One sender per spool (a lock). The daemon sleeps on its wake-up socket (puts
wake it at once) and on the next due retry or poll; correctness never depends
on the wake-ups: every pass rescans the queue folders.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time
from collections import deque
from typing import Any

from . import message as m
from . import spool as spoolmod
from . import transport as tp
from .config import Peer, is_url
from .errors import EX_OK, EX_TEMPFAIL, LockedError, UnavailableError, UsageError
from .spool import PURGE_CHECK, SEND_SOCK, Spool

log = logging.getLogger(__name__)

STATUS_BATCH = 1000
POLL_MIN = 0.2
POLL_MAX = 5.0  # receipts are polled at most this far apart while messages wait in sent/
PIPELINE = 2  # batches in flight per peer: the server's workers commit them in parallel
RELIST_EVERY = 1.0  # a large queue is re-listed at most this often while puts keep arriving
RELIST_BUSY = 0.1  # any queue still being worked through: re-listed at most this often
RELIST_IDLE = 30.0  # an empty queue is listed again without a wake-up this often (a put
# that died between its link and its wake-up)
EXPIRE_EVERY = 1.0  # a backed-off peer's queue is checked for expired TTLs at most this often,
EXPIRE_COST = 20  # and at most once per this many times the last check took (<= 5% of a CPU)
RECEIPT_LOST = "receipt lost: the peer no longer knows it (purged there, or its spool was lost)"
BACKOFF_DOUBLINGS = 64  # the backoff stops doubling here: far past any backoff_max, and
# 2 ** failures stays a float whatever count peer.json holds


class SendOptions:
    """How dropr-send runs."""

    __slots__ = ("once", "peers", "now", "batch", "batch_bytes", "concurrency", "max_messages", "progress")

    def __init__(
        self,
        *,
        once: bool = False,
        peers: list[str] | None = None,
        now: bool = False,
        batch: int = 500,
        batch_bytes: int = 16 << 20,
        concurrency: int = 4,
        max_messages: int = 0,
        progress: bool = False,
    ) -> None:
        self.once = once
        self.peers = peers or []
        self.now = now
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.concurrency = concurrency
        self.max_messages = max_messages
        self.progress = progress


class _PeerRun:
    """What the sender tracks about one peer during a run."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.queue: deque[str] = deque()
        self.listed = 0.0
        self.dirty = True
        self.inflight: set[str] = set()
        self.sending = 0
        self.polling = False
        self.poll_at = 0.0
        self.poll_gap = POLL_MIN
        self.poll_after = ""  # the last sent name of a full status poll: the next one goes on from it
        self.until: float | None = None  # backoff end, cached from peer.json
        self.expire_at = 0.0  # when a backed-off queue is next checked for expired TTLs
        self.ttl = False  # a message with a TTL was put for the peer (out/PEER/ttl, sticky)
        self.failed = False  # a transfer to it failed during this run: --now no longer applies


class Sender:
    """Delivers one spool's outbox."""

    def __init__(self, spool: Spool, opts: SendOptions) -> None:
        self.spool = spool
        self.cfg = spool.config
        self.opts = opts
        self.timeouts = tp.Timeouts(connect=self.cfg.connect_timeout, total=self.cfg.timeout)
        self.pool = tp.Pool()
        self.runs: dict[str, _PeerRun] = {}
        self.delivered = 0
        self.stopping = False
        self.total = 0
        self._last_progress = 0.0

    # -- peers ----------------------------------------------------------------

    def _peer(self, name: str) -> Peer:
        if name in self.cfg.peers:
            return self.cfg.peers[name]
        url = self.spool.peer_url(name)
        for p in self.cfg.peers.values():
            if p.url == url:
                return Peer(name, url, p.token, p.cafile)
        return Peer(name, url, None, self.cfg.cafile)

    def _refresh_peers(self) -> None:
        for name in self.spool.out_peers():
            if self.opts.peers and name not in self.opts.peers:
                continue
            if name not in self.runs:
                try:
                    self.runs[name] = _PeerRun(self._peer(name))
                except OSError as exc:
                    log.error("error peer=%s reason=cannot read its url: %s", name, exc.strerror)

    def _backoff_until(self, name: str) -> float:
        """Return when the peer's backoff ends: 0 for --now until it fails in this run.

        --now overrides only the backoff recorded before this run; a peer that fails
        again is backed off as usual, or a daemon would retry it in a tight loop.
        """
        run = self.runs.get(name)
        if self.opts.now and not (run and run.failed):
            return 0.0
        if run is None:
            return _number(self.spool.peer_state(name).get("until"))
        if run.until is None:  # read once: this sender is the only writer of peer.json
            run.until = _number(self.spool.peer_state(name).get("until"))
        return run.until

    def _peer_failed(self, run: _PeerRun, reason: str) -> None:
        st = self.spool.peer_state(run.peer.name)
        failures = _count(st.get("failures")) + 1
        delay = min(self.cfg.backoff_max, self.cfg.backoff_min * 2.0 ** min(failures - 1, BACKOFF_DOUBLINGS))
        delay *= random.uniform(0.5, 1.0)
        st.update(failures=failures, until=time.time() + delay, last_error=reason, last_error_at=time.time())
        self.spool.set_peer_state(run.peer.name, st)
        run.until = st["until"]
        run.failed = True
        log.warning("deferred peer=%s reason=%s retry_in=%.1fs", run.peer.name, reason, delay)

    def _peer_ok(self, run: _PeerRun) -> None:
        st = self.spool.peer_state(run.peer.name)
        if st.get("failures") or st.get("until") or time.time() - _number(st.get("last_ok")) > 1:
            st.update(failures=0, until=0, last_ok=time.time())
            self.spool.set_peer_state(run.peer.name, st)
        run.until = 0.0

    # -- sending --------------------------------------------------------------

    def _inflight(self) -> int:
        return sum(len(r.inflight) for r in self.runs.values())

    def _next_batch(self, run: _PeerRun, room: int) -> list[tuple[str, str, str]]:
        now = time.monotonic()
        age = now - run.listed
        if run.queue:
            relist = run.dirty and age > (RELIST_EVERY if len(run.queue) > 10000 else RELIST_BUSY)
        else:  # all listed were taken: only a wake-up or a failure says there is more
            relist = run.dirty or age > RELIST_IDLE
        if relist:
            run.queue = deque(
                n for n in self.spool.out_names(run.peer.name, "queued") if n not in run.inflight
            )
            run.listed = now
            run.dirty = False
        items: list[tuple[str, str, str]] = []
        size = 0
        wall = m.now_us()
        metas = self._metas(run) if self.cfg.max_attempts else set()
        base = self.spool.path("out", run.peer.name, "queued")
        while run.queue and len(items) < room:
            name = run.queue[0]
            path = f"{base}/{name}"
            ident = name.split(",", 1)[1]
            try:
                deadline, hsize = self.spool.peek(run.peer.name, name)
            except FileNotFoundError:
                run.queue.popleft()
                continue
            except (OSError, ValueError) as exc:
                run.queue.popleft()
                dest = self.spool.corrupt(path, str(exc))
                log.error("corrupt path=%s moved=%s reason=%s", path, dest, exc)
                continue
            if deadline and deadline < wall:
                run.queue.popleft()
                self._expired(run, name)
                self._wake_waiters()
                continue
            if ident in metas:
                tries = int(self.spool.out_meta(run.peer.name, ident).get("attempts", 0))
                if tries >= self.cfg.max_attempts:
                    run.queue.popleft()
                    self.spool.out_fail(run.peer.name, name, f"gave up after {tries} attempts", dead=True)
                    log.warning("dead id=%s peer=%s reason=max attempts", ident, run.peer.name)
                    continue
            if items and size + hsize > self.opts.batch_bytes:
                break
            run.queue.popleft()
            size += hsize
            items.append((ident, path, name))
            run.inflight.add(name)
        return items

    def _metas(self, run: _PeerRun) -> set[str]:
        try:
            return set(os.listdir(self.spool.path("out", run.peer.name, "meta")))
        except FileNotFoundError:
            return set()

    def _start_sends(self) -> None:
        wall = time.time()
        for run in self.runs.values():
            if len(self.pool) >= self.opts.concurrency or self.stopping:
                return
            if run.failed and self.opts.once:  # one try per pass: the next pass retries it
                continue
            if self._backoff_until(run.peer.name) > wall:
                self._expire_waiting(run)
                continue
            while run.sending < PIPELINE and len(self.pool) < self.opts.concurrency:
                room = self.opts.batch
                if self.opts.max_messages:
                    room = min(room, self.opts.max_messages - self.delivered - self._inflight())
                    if room <= 0:
                        return
                items = self._next_batch(run, room)
                if not items:
                    break
                t = tp.upload(run.peer, [(i, p) for i, p, _ in items], self.spool.node, self.timeouts)
                t.tag = [n for _, _, n in items]
                run.sending += 1
                self.pool.add(t)

    def _expire_waiting(self, run: _PeerRun) -> None:
        """Make the expired messages of a backed-off peer dead, if any message to it has a TTL.

        Otherwise a TTL would only be checked when its message is picked for a batch: an
        expired message would stay queued for the rest of the backoff (up to backoff_max),
        and dropr-put --ttl --wait would wait that long. Each check reads the header of
        every queued message, so it runs at most every EXPIRE_EVERY seconds and at most
        once per EXPIRE_COST times its own last duration.
        """
        now = time.monotonic()
        if now < run.expire_at:
            return
        run.ttl = run.ttl or self.spool.out_has_ttl(run.peer.name)  # a put with a TTL wakes us
        if not run.ttl:
            return
        wall = m.now_us()
        dead = 0
        for name in self.spool.out_names(run.peer.name, "queued"):
            if name in run.inflight:
                continue
            try:
                deadline, _ = self.spool.peek(run.peer.name, name)
            except (OSError, ValueError):
                continue  # gone meanwhile, or corrupt: the next batch moves it aside
            if deadline and deadline < wall:
                self._expired(run, name)
                dead += 1
        if dead:
            run.dirty = True
            self._wake_waiters()
        took = time.monotonic() - now
        run.expire_at = time.monotonic() + max(EXPIRE_EVERY, EXPIRE_COST * took)

    def _expired(self, run: _PeerRun, name: str) -> None:
        """Make a queued message whose TTL has passed dead."""
        self.spool.out_fail(run.peer.name, name, "ttl expired before delivery", dead=True)
        log.warning("dead id=%s peer=%s reason=ttl expired", name.split(",", 1)[1], run.peer.name)

    def _sent(self, t: tp.Transfer) -> None:
        run = self.runs[t.peer.name]
        run.sending -= 1
        names = {n.split(",", 1)[1]: n for n in t.tag}
        run.inflight.difference_update(t.tag)
        if t.error:
            self._peer_failed(run, t.error)
            run.dirty = True
            run.queue.clear()
            if self.cfg.max_attempts:
                for name in names.values():
                    self.spool.out_fail(run.peer.name, name, t.error, dead=False)
            return
        ok, retry = [], []
        for ident, name in names.items():
            status, reason = t.results.get(ident, (tp.RETRY, "no answer for this message"))
            if status in (tp.STORED, tp.DUPLICATE):
                ok.append(name)
                log.info(
                    "sent id=%s peer=%s%s",
                    ident,
                    run.peer.name,
                    " duplicate" if status == tp.DUPLICATE else "",
                )
            elif status == tp.REFUSED:
                self.spool.out_fail(run.peer.name, name, f"refused by peer: {reason}", dead=True)
                log.warning("dead id=%s peer=%s reason=%s", ident, run.peer.name, reason)
                self._wake_waiters()
            else:
                retry.append((name, reason))
        self.spool.out_move(run.peer.name, ok, "queued", "sent")
        self.delivered += len(ok)
        run.poll_at = min(run.poll_at or time.monotonic() + POLL_MIN, time.monotonic() + POLL_MIN)
        run.poll_gap = POLL_MIN
        if retry:
            for name, reason in retry:
                self.spool.out_fail(run.peer.name, name, reason or "peer asked to retry", dead=False)
            self._peer_failed(run, retry[0][1] or "peer asked to retry")
            run.dirty = True
            run.queue.clear()
        else:
            self._peer_ok(run)

    # -- receipts -------------------------------------------------------------

    def _start_polls(self, force: bool = False) -> None:
        now = time.monotonic()
        wall = time.time()
        for run in self.runs.values():
            if run.polling or len(self.pool) >= self.opts.concurrency + len(self.runs):
                continue
            if not force and (not run.poll_at or run.poll_at > now):
                continue
            if self._backoff_until(run.peer.name) > wall:
                continue
            # Each poll asks for the next STATUS_BATCH names after the last poll's, then
            # starts again from the oldest: messages nobody consumes at the peer (or that
            # it purged) must not hold the receipts of every later message up for good.
            names = self.spool.out_names(run.peer.name, "sent", STATUS_BATCH, run.poll_after)[:STATUS_BATCH]
            if not names and run.poll_after and force:  # --once polls once: from the oldest
                names = self.spool.out_names(run.peer.name, "sent", STATUS_BATCH)[:STATUS_BATCH]
            if not names:  # nothing sent, or nothing after the last full poll: a round is over
                run.poll_at = time.monotonic() + run.poll_gap if run.poll_after else 0
                run.poll_after = ""
                continue
            run.poll_after = names[-1] if len(names) >= STATUS_BATCH else ""
            ids = [n.split(",", 1)[1] for n in names]
            prefixes = [n.split(",", 1)[0] for n in names]
            t = tp.status(run.peer, ids, self.spool.node, self.timeouts, prefixes)
            t.tag = names
            run.polling = True
            self.pool.add(t)

    def _polled(self, t: tp.Transfer) -> None:
        run = self.runs[t.peer.name]
        run.polling = False
        if t.error:
            log.info("status poll failed peer=%s reason=%s", run.peer.name, t.error)
            run.poll_at = time.monotonic() + POLL_MAX
            return
        done, changed = [], False
        lost_before = time.time() - self.cfg.retention
        for name in t.tag:
            ident = name.split(",", 1)[1]
            state, reason = t.results.get(ident, ("unknown", ""))
            if state == "processed":
                done.append(name)
                log.info("processed id=%s peer=%s", ident, run.peer.name)
            elif state == "dead":
                self.spool.out_fail(run.peer.name, name, f"dead at peer: {reason}", dead=True, src="sent")
                log.warning("dead id=%s peer=%s reason=%s", ident, run.peer.name, reason)
                changed = True
            elif state == "unknown" and ident in t.results and self._receipt_lost(run, name, lost_before):
                changed = True
        if self.spool.out_move(run.peer.name, done, "sent", "processed"):
            changed = True
        if changed:
            self._wake_waiters()
            run.poll_gap = POLL_MIN
        else:
            run.poll_gap = min(POLL_MAX, run.poll_gap * 1.5)
        more = bool(run.poll_after)  # a full poll: the names after it are asked next, at once
        run.poll_at = time.monotonic() + (0 if more else run.poll_gap)

    def _receipt_lost(self, run: _PeerRun, name: str, before: float) -> bool:
        """Make a sent message dead if the peer has twice answered that it does not know it
        and it has been in sent/ since before ``before`` (the retention period ago).

        The peer answered "stored" once, so it knew the message. It forgets it when it
        purges it, a retention period after the message was finished there, or when its
        spool is lost. Either way no receipt will ever come: without this, the message
        stayed in sent/, and was asked about in every poll, for good. A recent one may
        still be a peer restored from a backup: it is asked about until the retention
        period has passed. Then twice (the first answer is noted in its record, which
        outlives a --once pass): a message the peer moves back and forth between two
        states while it looks for it reads as unknown for that moment.
        """
        changed = self.spool.out_changed(run.peer.name, "sent", name)
        if changed is None or changed >= before:
            return False
        ident = name.split(",", 1)[1]
        if not self.spool.out_meta(run.peer.name, ident).get("unknown_at"):
            self.spool.out_note(run.peer.name, ident, unknown_at=m.now_us())
            return False
        self.spool.out_fail(run.peer.name, name, RECEIPT_LOST, dead=True, src="sent")
        log.warning("dead id=%s peer=%s reason=receipt lost", ident, run.peer.name)
        return True

    def _wake_waiters(self) -> None:
        self.spool.wake("put-")

    # -- loops ----------------------------------------------------------------

    def _drive(self, timeout: float) -> None:
        for t in self.pool.poll(timeout):
            try:
                if t.kind == "send":
                    self._sent(t)
                else:
                    self._polled(t)
            finally:
                t.close()
        self._show_progress()

    def _show_progress(self, final: bool = False) -> None:
        if not self.opts.progress:
            return
        now = time.monotonic()
        if not final and now - self._last_progress < 0.2:
            return
        self._last_progress = now
        width = 30
        frac = self.delivered / self.total if self.total else 1.0
        bar = "#" * int(width * min(frac, 1.0))
        sys.stderr.write(f"\rdropr-send: [{bar:<{width}}] {self.delivered}/{self.total} sent")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def run_once(self) -> int:
        """One pass over everything due, then status polling; 0 if nothing is left due, else 75."""
        self._refresh_peers()
        if self.opts.progress:  # the bar's total: a listing of every queue, only for the bar
            self.total = sum(len(os.listdir(self.spool.path("out", n, "queued"))) for n in self.runs)
        while not self.stopping:
            self._start_sends()
            if not len(self.pool):
                break
            self._drive(0.5)
            if self.opts.max_messages and self.delivered >= self.opts.max_messages:
                break
        while len(self.pool):
            self._drive(0.5)
        self._show_progress(final=True)
        # One status poll per peer, going on from where the last pass's poll stopped
        # (kept in peer.json): a pass costs one poll however many messages wait.
        for run in self.runs.values():
            run.poll_after = str(self.spool.peer_state(run.peer.name).get("poll_after", ""))
        self._start_polls(force=True)
        while len(self.pool):
            self._drive(0.5)
        for run in self.runs.values():
            st = self.spool.peer_state(run.peer.name)
            if st.get("poll_after", "") != run.poll_after:
                st["poll_after"] = run.poll_after
                self.spool.set_peer_state(run.peer.name, st)
        self.spool.purge()
        left = [r.peer.name for r in self.runs.values() if self.spool.out_any(r.peer.name, "queued")]
        if left and not (self.opts.max_messages and self.delivered >= self.opts.max_messages):
            log.info("deferred peers=%s", ",".join(left))
            return EX_TEMPFAIL
        return EX_OK

    def run_daemon(self) -> int:
        """Deliver until TERM, sleeping on wake-ups, retries and polls."""
        waiter = self.spool.waiter(SEND_SOCK)
        last_purge = 0.0
        try:
            while not self.stopping:
                self._refresh_peers()
                self._start_sends()
                self._start_polls()
                if time.monotonic() - last_purge > PURGE_CHECK:
                    self.spool.purge_if_due()
                    last_purge = time.monotonic()
                if self.opts.max_messages and self.delivered >= self.opts.max_messages and not len(self.pool):
                    log.info("exiting after max_messages=%d", self.opts.max_messages)
                    break
                if len(self.pool):
                    self._drive(0.05)
                    if _readable(waiter):
                        waiter.drain()
                        self._mark_dirty()
                    continue
                if waiter.wait(self._sleep_for()):
                    self._mark_dirty()
        finally:
            waiter.close()
            self.pool.close()
        return EX_OK

    def _mark_dirty(self) -> None:
        for run in self.runs.values():
            run.dirty = True

    def _sleep_for(self) -> float:
        now = time.monotonic()
        wall = time.time()
        sleep = 30.0
        for run in self.runs.values():
            if run.poll_at:
                sleep = min(sleep, run.poll_at - now)
            until = self._backoff_until(run.peer.name)
            if until > wall and (run.queue or self.spool.out_any(run.peer.name, "queued")):
                sleep = min(sleep, until - wall)
                if run.ttl:
                    sleep = min(sleep, run.expire_at - now)
            elif run.queue:
                sleep = 0
        return max(0.0, sleep)


def _count(value: Any) -> int:
    """Return a failure count read from peer.json; anything but a number >= 0 reads as 0."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):  # None, "x", inf, nan
        return 0


def _number(value: Any) -> float:
    """Return a time read from peer.json; anything but a finite number >= 0 reads as 0."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return x if 0 <= x < float("inf") else 0.0


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


def _readable(waiter: Any) -> bool:
    import select

    return bool(select.select([waiter], [], [], 0)[0])


def run(spool: Spool, opts: SendOptions) -> int:
    """Take the spool's send lock and deliver, once or as a daemon."""
    from filelock import FileLock, Timeout

    check_peers(spool, opts.peers, opts.once)
    lock = FileLock(spool.path("lock", "send.lock"), mode=spoolmod.modes[0])  # as private as the spool
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockedError(
            f"another dropr-send is already running on {spool.root}; one sender per spool"
        ) from None
    sender = Sender(spool, opts)

    def stop(signum: int, _frame: Any) -> None:
        sender.stopping = True
        spool.wake_one(SEND_SOCK)  # select() resumes after a signal (PEP 475): wake it for real

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return sender.run_once() if opts.once else sender.run_daemon()
    finally:
        lock.release()
