"""One peer as dropr-send sees it during a run: two small state machines and its queue.

Sending (``PeerRun.send``); n = batches in flight, at most PIPELINE::

    state     start     ok              fail                resume (until passed)
    IDLE      SENDING   -               -                   -
    SENDING   SENDING   SENDING|IDLE    BACKOFF|DEFERRED    -
    BACKOFF   -         SENDING|IDLE    BACKOFF             SENDING|IDLE
    DEFERRED  -         DEFERRED        DEFERRED            -

  IDLE      no batch in flight, not backed off: a batch may start
  SENDING   n > 0 batches in flight, no failure since: more may start while n < PIPELINE
  BACKOFF   a transfer failed: no batch starts before ``until`` (peer.json); batches
            started before the failure may still come back (ok: the peer is fine again)
  DEFERRED  --once only: a transfer failed in this pass; the next pass retries the peer

``ok`` and ``fail`` are a batch coming back (every message stored, duplicate or
refused; or a failure, or a message to retry), so both need one in flight. --now
only starts a run IDLE whatever peer.json says: a peer that fails again is backed
off as usual, or a daemon would retry it in a tight loop.

Receipt polling (``PeerRun.poll``), independent of sending::

    state     sent      ask       news   no_news   error   round_over
    QUIET     DUE       POLLING   -      -         -       QUIET|DUE
    DUE       DUE       POLLING   -      -         -       QUIET|DUE
    POLLING   POLLING   -         DUE    DUE       DUE     -

  QUIET     nothing known to wait for a receipt: no poll until a batch comes back
            (a --once pass asks once anyway: ``ask`` from QUIET)
  DUE       a poll is due at ``poll_at``; the gap grows while nothing changes
  POLLING   a status request is in flight; a batch back meanwhile only resets the gap

``sent`` is a batch coming back without a transfer failure; ``news``/``no_news``
the answers to a poll (whether any message changed state), ``error`` no answer;
``round_over`` nothing (more) to ask about.

A pair missing from the table is a bug in the sender: ``fire`` raises TransitionError.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import retry
from .message import now_us, split_out_name
from .protocol import DEAD, PROCESSED, UNKNOWN
from .summary import PROCESSED as PROCESSED_LINE

if TYPE_CHECKING:
    from .config import Peer
    from .groups import GroupRun
    from .spool import Spool
    from .summary import Summary
    from .transport import Transfer

log = logging.getLogger(__name__)

POLL_MIN = 0.2
POLL_MAX = 5.0  # receipts are polled at most this far apart while messages wait in sent/
STATUS_BATCH = 1000  # sent names one receipt request asks about (a poll, a fetch's answer)
PIPELINE = 2  # batches in flight per peer: the server's workers commit them in parallel
BACKOFF_JITTER = 0.5  # a peer's delay is drawn from [50 %, 100 %] of the doubled one
LIST_WINDOW = 100_000  # queued names listed at once: a million took ~100 MiB (the first ones by name);
# 100,000 hold ~10 MiB, and a listing scans the whole folder (0.2-0.4 s at a million)
RELIST_EVERY = 1.0  # a large queue is re-listed at most this often while puts keep arriving
RELIST_BUSY = 0.1  # any queue still being worked through: re-listed at most this often
RELIST_IDLE = 30.0  # an empty queue is listed again without a wake-up this often (a put
# that died between its link and its wake-up)
EXPIRE_EVERY = 1.0  # a backed-off peer's queue is checked for expired TTLs at most this often,
IN_MEMORY = 16 << 10  # a message up to this size is read whole when its batch is made (one
# open, not two: libcurl opens a file part itself), larger ones are sent from their file
EXPIRE_COST = 20  # and at most once per this many times the last check took (<= 5% of a CPU)
QUEUED, SENT_DIR = "queued", "sent"  # outbox folders

# Sending: states and events.
IDLE, SENDING, BACKOFF, DEFERRED = "idle", "sending", "backoff", "deferred"
START, OK, FAIL, RESUME = "start", "ok", "fail", "resume"
# Polling: states and events.
QUIET, DUE, POLLING = "quiet", "due", "polling"
SENT, ASK, NEWS, NO_NEWS, ERROR, ROUND_OVER = "sent", "ask", "news", "no_news", "error", "round_over"

SEND_STATES = (IDLE, SENDING, BACKOFF, DEFERRED)
SEND_EVENTS = (START, OK, FAIL, RESUME)
POLL_STATES = (QUIET, DUE, POLLING)
POLL_EVENTS = (SENT, ASK, NEWS, NO_NEWS, ERROR, ROUND_OVER)


class TransitionError(RuntimeError):
    """An event the peer's state has no transition for (a bug in the sender)."""


class PeerRun:
    """What the sender tracks about one peer during a run."""

    def __init__(self, peer: Peer, spool: Spool, *, once: bool = False, now: bool = False) -> None:
        self.peer = peer
        self.spool = spool
        self.once = once
        self.queue: deque[str] = deque()  # listed queued names not yet taken into a batch
        self.listed = 0.0  # when queued/ was last listed (monotonic)
        self.dirty = True  # a wake-up or a failure says queued/ may hold more than listed
        self.inflight: set[str] = set()  # names in batches in flight
        self.cut = False  # the last listing stopped at LIST_WINDOW: more are queued
        self.sending = 0  # batches in flight
        self.expire_at = 0.0  # when a backed-off queue is next checked for expired TTLs
        self.ttl = False  # a message with a TTL was put for the peer (out/PEER/ttl, sticky)
        self.poll_at = 0.0  # when the next receipt poll is due (monotonic; 0: none is)
        self.poll_gap = POLL_MIN
        self.poll_after = ""  # the last sent name of a full status poll: the next one goes on from it
        self.relayed = False  # a relayed message was queued for the peer (Relays.marked, sticky)
        # this sender is the only writer of peer.json: its backoff end is read once
        st = spool.peer_state(peer.name)
        self.until = 0.0 if now else _number(st.get("until"))
        self.failing_since = _number(st.get("failing_since"))  # 0: its last attempt went well
        self.group: GroupRun | None = None  # of a group member: its group's run (groups.py)
        self.send = BACKOFF if self.until > time.time() else IDLE
        self.poll = QUIET
        if spool.out_any(peer.name, SENT_DIR):  # sent before a restart: poll them now, or a
            self.poll, self.poll_at = DUE, time.monotonic()  # daemon with nothing new to send never did

    def fire(self, event: str) -> None:
        """Make the transition the table has for event in the current state."""
        sending = event in SEND_EVENTS
        state = self.send if sending else self.poll
        handler = TABLE.get((state, event))
        if handler is None:
            raise TransitionError(f"peer {self.peer.name}: no transition for {event} in state {state}")
        if sending:
            self.send = handler(self)
        else:
            self.poll = handler(self)

    # -- sending --------------------------------------------------------------

    def backed_off(self, wall: float) -> bool:
        """Return whether the peer's backoff lasts past wall (time.time()). A backoff ends
        at most send.backoff_max from now: one that ends later was set before the clock was
        stepped back, and would hold the peer for as long as the step (#16)."""
        self.until = min(self.until, wall + self.spool.config.backoff_max)
        return self.until > wall

    def may_send(self, wall: float) -> bool:
        """Return whether a batch may start now; a backoff that is over ends here."""
        if self.send == BACKOFF and not self.backed_off(wall):
            self.fire(RESUME)
        return self.send in (IDLE, SENDING) and self.sending < PIPELINE

    def batch_ok(self) -> None:
        """A batch came back without a failure: record the peer as fine in peer.json."""
        self.record_ok()
        self.fire(OK)

    def record_ok(self) -> None:
        """Record the peer as fine in peer.json (a batch, or a group member's probe, went well)."""
        st = self.spool.peer_state(self.peer.name)
        if st.get("failures") or st.get("until") or time.time() - _number(st.get("last_ok")) > 1:
            st.update(failures=0, until=0, last_ok=time.time())
            st.pop("failing_since", None)
            self.spool.set_peer_state(self.peer.name, st)
        self.until = 0.0
        self.failing_since = 0.0

    def came_back(self, t: Transfer, failed: list[str]) -> None:
        """A batch came back, failed names to retry (recorded): a group member's group acts on them."""
        if self.group is not None:
            self.group.batch_back(self, t, failed)

    def batch_failed(self, reason: str) -> None:
        """A batch came back failed: back the peer off (peer.json) and log it."""
        self.back_off(reason)
        self.fire(FAIL)

    def back_off(self, reason: str) -> None:
        """Back the peer off in peer.json (failing_since: its first failure since it was
        fine) and log it."""
        cfg = self.spool.config
        st = self.spool.peer_state(self.peer.name)
        failures = _count(st.get("failures")) + 1
        delay = retry.backoff(failures - 1, cfg.backoff_min, cfg.backoff_max, jitter=BACKOFF_JITTER)
        now = time.time()
        st.update(failures=failures, until=now + delay, last_error=reason, last_error_at=now)
        if failures == 1 or not _number(st.get("failing_since")):
            st["failing_since"] = now
        self.spool.set_peer_state(self.peer.name, st)
        self.until = st["until"]
        self.failing_since = st["failing_since"]
        log.warning("deferred peer=%s reason=%s retry_in=%.1fs", self.peer.name, reason, delay)

    # -- the outbox's transitions: every spool call that moves a message --------

    def mark_sent(self, names: list[str]) -> None:
        """Move names the peer stored from queued/ to sent/."""
        self.spool.mark_sent(self.peer.name, names)

    def mark_processed(self, names: list[str]) -> int:
        """Move names the peer processed from sent/ to processed/; return how many moved."""
        return self.spool.mark_processed(self.peer.name, names)

    def note_failure(self, name: str, reason: str) -> None:
        """Record a failed attempt of a queued message; it stays queued."""
        self.spool.record_failure(self.peer.name, name, reason)

    def kill(self, name: str, error: str, why: str, src: str = QUEUED) -> None:
        """Make a message dead with error in its record; why is the log line's reason."""
        self.spool.kill(self.peer.name, [name], error, state=src)
        log.warning("dead id=%s peer=%s reason=%s", split_out_name(name)[1], self.peer.name, why)

    def set_aside(self, path: str, exc: Exception) -> None:
        """Move a queued file that is no message to corrupt/."""
        dest = self.spool.corrupt(path, str(exc))
        log.error("corrupt path=%s moved=%s reason=%s", path, dest, exc)

    # -- the queue ------------------------------------------------------------

    def may_have_work(self, now: float) -> bool:
        """Return whether next_batch may find a message (now: time.monotonic()): listed names
        are left, or the queue is due a listing. False lets a pass over a thousand peers skip
        the drained ones in a few hundred nanoseconds each (a group member's queue is filled
        by its group: ask the group)."""
        return bool(self.queue) or self.dirty or self.cut or now - self.listed > RELIST_IDLE

    def _relist(self) -> None:
        now = time.monotonic()
        age = now - self.listed
        if self.queue:
            relist = self.dirty and age > (RELIST_EVERY if len(self.queue) > 10000 else RELIST_BUSY)
        else:  # all listed were taken: only a wake-up, a failure or a cut listing says there is more
            relist = self.may_have_work(now)
        if relist:
            window = LIST_WINDOW + len(self.inflight)
            self.queue.clear()  # listed again: not two windows in memory at once
            names = self.spool.out_names(self.peer.name, QUEUED, window)
            self.cut = len(names) >= window
            self.queue = deque(n for n in names if n not in self.inflight)
            self.relayed = self.relayed or self.spool.relays.marked(self.peer.name)
            self.listed = now
            self.dirty = False

    def next_batch(self, room: int, batch_bytes: int) -> list[tuple[str, str | bytes, str]]:
        """Take up to room queued messages (id, path or the whole file, name) for a batch;
        kill the expired. A message of at most IN_MEMORY bytes is read whole here, once."""
        self._relist()
        items: list[tuple[str, str | bytes, str]] = []
        size = 0
        wall = now_us()
        max_attempts = self.spool.config.max_attempts
        metas = self._metas() if max_attempts else set()
        base = self.spool.path("out", self.peer.name, QUEUED)
        ids: set[str] = set()  # relayed ids are unique per origin only: one batch has each once
        while self.queue and len(items) < room:
            name = self.queue[0]
            path = f"{base}/{name}"
            ident = split_out_name(name)[1]
            if ident in ids:
                break  # the next batch takes it
            try:
                deadline, hsize, whole = self.spool.outbox.load(self.peer.name, name, IN_MEMORY)
            except FileNotFoundError:
                self.queue.popleft()
                continue
            except (OSError, ValueError) as exc:
                self.queue.popleft()
                self.set_aside(path, exc)
                continue
            if deadline and deadline < wall:
                self.queue.popleft()
                self.kill(name, retry.TTL_EXPIRED, retry.TTL_EXPIRED_LOG)
                self.wake_waiters()
                continue
            if ident in metas:
                tries = int(self.spool.out_meta(self.peer.name, ident).get("attempts", 0))
                if tries >= max_attempts:
                    self.queue.popleft()
                    self.kill(name, retry.MAX_ATTEMPTS.format(tries), retry.MAX_ATTEMPTS_LOG)
                    continue
            if items and size + hsize > batch_bytes:
                break
            self.queue.popleft()
            size += hsize
            ids.add(ident)
            items.append((ident, path if whole is None else whole, name))
            self.inflight.add(name)
            if whole is not None and self.relayed:  # its receipt poll needs its o=: read now
                self.spool.relays.note_origin(name, whole)
        return items

    def _metas(self) -> set[str]:
        try:
            return set(os.listdir(self.spool.path("out", self.peer.name, "meta")))
        except FileNotFoundError:
            return set()

    def expire_waiting(self) -> None:
        """Make the expired messages of a backed-off peer dead, if any message to it has a TTL.

        Otherwise a TTL would only be checked when its message is picked for a batch: an
        expired message would stay queued for the rest of the backoff (up to backoff_max),
        and dropr-put --ttl --wait would wait that long. Each check reads the header of
        every queued message, so it runs at most every EXPIRE_EVERY seconds and at most
        once per EXPIRE_COST times its own last duration.
        """
        now = time.monotonic()
        if now < self.expire_at:
            return
        self.ttl = self.ttl or self.spool.out_has_ttl(self.peer.name)  # a put with a TTL wakes us
        if not self.ttl:
            return
        wall = now_us()
        dead = 0
        for name in self.spool.out_names(self.peer.name, QUEUED):
            if name in self.inflight:
                continue
            try:
                deadline, _ = self.spool.peek(self.peer.name, name)
            except (OSError, ValueError):
                continue  # gone meanwhile, or corrupt: the next batch moves it aside
            if deadline and deadline < wall:
                self.kill(name, retry.TTL_EXPIRED, retry.TTL_EXPIRED_LOG)
                dead += 1
        if dead:
            self.dirty = True
            self.wake_waiters()
        took = time.monotonic() - now
        self.expire_at = time.monotonic() + max(EXPIRE_EVERY, EXPIRE_COST * took)

    def take_receipts(self, answers: list[tuple[str, str, str]], summary: Summary | None = None) -> bool:
        """Record the receipt states the peer gave (take_receipts); return whether any changed."""
        return take_receipts(self.spool, self.peer.name, answers, summary)

    def wake_waiters(self) -> None:
        """Wake dropr-put --wait: a message of theirs may be finished."""
        self.spool.wakeups.wake_putters()

    # -- polling --------------------------------------------------------------

    def poll_names(self, force: bool) -> list[str]:
        """Return the sent names the next receipt poll asks about (receipt_names); force: a
        --once pass's one poll, from the oldest if nothing is after the last one."""
        names, self.poll_after = receipt_names(self.spool, self.peer.name, self.poll_after, force)
        return names

    def poll_due(self, now: float, force: bool) -> bool:
        """Return whether a receipt poll may start now (force: a --once pass's one poll)."""
        if self.poll == POLLING:
            return False
        return force or (self.poll == DUE and self.poll_at <= now)


def receipt_names(spool: Spool, peer: str, after: str, wrap: bool) -> tuple[list[str], str]:
    """Return the sent names a receipt request asks about, and where the next one goes on:
    the next STATUS_BATCH after the name `after`, then again from the oldest (with wrap, at
    once when nothing is after it), so that messages nobody consumes at the peer (or that it
    purged) do not hold later receipts up for good. The one walk for both ways receipts are
    asked for: a sender's poll (PeerRun.poll_names) and a holder's fetch answer (fetch.py)."""
    names = spool.out_names(peer, SENT_DIR, STATUS_BATCH, after)[:STATUS_BATCH]
    if not names and after and wrap:
        names = spool.out_names(peer, SENT_DIR, STATUS_BATCH)[:STATUS_BATCH]
    if not names:
        return names, after
    return names, names[-1] if len(names) >= STATUS_BATCH else ""


def take_receipts(
    spool: Spool, peer: str, answers: list[tuple[str, str, str]], summary: Summary | None = None
) -> bool:
    """Record receipt states (name, state, reason) of sent/ entries of a peer: processed
    -> processed/, dead -> dead/ with the reason, unknown -> receipt_lost; return whether
    any message finished or died. The one place for both ways receipts come back: a
    sender's status poll, and a fetcher's answers at its holder (fetch.py). The processed
    are counted in summary (a sender's), or logged in one line (a holder's)."""
    done, changed = [], False
    lost_before = time.time() - spool.config.retention
    debug = log.isEnabledFor(logging.DEBUG)  # once per answer: no logging call per message
    for name, state, reason in answers:
        ident = split_out_name(name)[1]
        if state == PROCESSED:
            done.append(name)
            if debug:
                log.debug("processed id=%s peer=%s", ident, peer)
        elif state == DEAD:
            if spool.kill(peer, [name], retry.DEAD_AT_PEER.format(reason), state=SENT_DIR):
                log.warning("dead id=%s peer=%s reason=%s", ident, peer, reason)
                changed = True
        elif state == UNKNOWN and receipt_lost(spool, peer, name, lost_before):
            changed = True
    moved = spool.mark_processed(peer, done) if done else 0
    if summary is not None:
        summary.add(PROCESSED_LINE, peer, moved)
    elif moved:
        log.info("processed peer=%s count=%d", peer, moved)
    return bool(moved) or changed


def receipt_lost(spool: Spool, peer: str, name: str, before: float) -> bool:
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
    changed = spool.out_changed(peer, SENT_DIR, name)
    if changed is None or changed >= before:
        return False
    ident = split_out_name(name)[1]
    if not spool.out_meta(peer, ident).get("unknown_at"):
        spool.out_note(peer, ident, unknown_at=now_us())
        return False
    spool.kill(peer, [name], retry.RECEIPT_LOST, state=SENT_DIR)
    log.warning("dead id=%s peer=%s reason=%s", ident, peer, retry.RECEIPT_LOST_LOG)
    return True


# -- the transitions ------------------------------------------------------------------------------


def _start(r: PeerRun) -> str:
    r.sending += 1
    return SENDING


def _ok(r: PeerRun) -> str:
    r.sending -= 1
    r.until = 0.0
    if r.send == DEFERRED:
        return DEFERRED
    return SENDING if r.sending else IDLE


def _fail(r: PeerRun) -> str:
    r.sending -= 1
    r.dirty = True  # what it did not take is listed again after the backoff
    r.queue.clear()
    return DEFERRED if r.once or r.send == DEFERRED else BACKOFF


def _resume(r: PeerRun) -> str:
    return SENDING if r.sending else IDLE


def _sent(r: PeerRun) -> str:
    soon = time.monotonic() + POLL_MIN
    r.poll_at = min(r.poll_at or soon, soon)
    r.poll_gap = POLL_MIN
    return POLLING if r.poll == POLLING else DUE


def _ask(r: PeerRun) -> str:
    return POLLING


def _answered(r: PeerRun) -> str:
    more = bool(r.poll_after)  # a full poll: the names after it are asked next, at once
    r.poll_at = time.monotonic() + (0 if more else r.poll_gap)
    return DUE


def _news(r: PeerRun) -> str:
    r.poll_gap = POLL_MIN
    return _answered(r)


def _no_news(r: PeerRun) -> str:
    r.poll_gap = min(POLL_MAX, r.poll_gap * 1.5)
    return _answered(r)


def _error(r: PeerRun) -> str:
    r.poll_at = time.monotonic() + POLL_MAX
    return DUE


def _round_over(r: PeerRun) -> str:
    """Nothing sent, or nothing after the last full poll: wait a gap if a round ran, else rest."""
    r.poll_at = time.monotonic() + r.poll_gap if r.poll_after else 0
    r.poll_after = ""
    return DUE if r.poll_at else QUIET


TABLE: dict[tuple[str, str], Callable[[PeerRun], str]] = {
    (IDLE, START): _start,
    (SENDING, START): _start,
    (SENDING, OK): _ok,
    (BACKOFF, OK): _ok,
    (DEFERRED, OK): _ok,
    (SENDING, FAIL): _fail,
    (BACKOFF, FAIL): _fail,
    (DEFERRED, FAIL): _fail,
    (BACKOFF, RESUME): _resume,
    (QUIET, SENT): _sent,
    (DUE, SENT): _sent,
    (POLLING, SENT): _sent,
    (QUIET, ASK): _ask,
    (DUE, ASK): _ask,
    (POLLING, NEWS): _news,
    (POLLING, NO_NEWS): _no_news,
    (POLLING, ERROR): _error,
    (QUIET, ROUND_OVER): _round_over,
    (DUE, ROUND_OVER): _round_over,
}


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
