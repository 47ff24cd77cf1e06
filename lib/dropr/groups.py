"""A peer group as dropr-send drives it: which member takes which message, and when.

A group (``urls = [...]``) has its own queue, out/GROUP/queued/ (what dropr-put
queued), and one outbox folder per member, out/GROUP+CRC/ (config.member_name),
each sent and polled by an ordinary PeerRun. The GroupRun sits beside them:

- Just in time: when a member's run may take a batch, ``fill`` assigns it that
  batch's messages from the group queue (Outbox.assign), so what is assigned and not
  yet tried stays small. failover: the first member in config order that is healthy;
  spread: the healthy members in turn, a batch each; a message with a key (header
  y=) goes to the healthy member with the highest weight of (key, url) (rendezvous:
  a key moves only while its member is down, and comes back after).
- Healthy: not backed off, and fine at its last attempt (PeerRun.failing_since 0).
  A member whose backoff is over after a failure is probed with GET v1/health
  before it is given new messages; no message is risked on a probe. What is
  already in its queued/ is retried there as usual.
- After a failed batch (``batch_back``): a failure that stored nothing for sure
  (``ambiguous`` False) gives the messages back to the group queue (Outbox.unassign)
  at once; an ambiguous one (a timeout, a connection cut mid-request, HTTP 500, a
  200 that cannot be read) pins them (``pinned_at`` in the member's meta/ID): they
  stay, retried at that member, until it has failed for send.failover_after
  (``failing_since``), when ``tick`` gives them back to the group queue and another
  member may store them. So a message is at two members' inboxes only after
  failover_after: at least once across a group, exactly once in each inbox.

Notes: the group run is the only process that moves entries between the group
queue and its members (it runs in the one dropr-send). A member whose url left the
config keeps its folder and its PeerRun (it still sends what it holds and is polled
for receipts) but is given nothing new. A crash mid-assign is settled at start
(Outbox.settle).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING

from . import message as m
from . import retry
from . import transport as tp
from .config import SPREAD, Peer, group_of
from .peerrun import IDLE, PIPELINE, QUEUED, SENDING, SENT, SENT_DIR, PeerRun
from .spool.outbox import settle

if TYPE_CHECKING:
    from .sender import Sender
    from .spool import Spool

log = logging.getLogger(__name__)

MAYBE_STORED = frozenset({200, 500, 502, 504})  # HTTP answers after which a message may be stored
SCAN_MAX = 5000  # group queue names looked at per fill (a spread group's keys for others)


def ambiguous(t: tp.Transfer) -> bool:
    """Tell whether a failed upload may have stored some of its messages at the peer.

    Not: libcurl failed before one byte of the request went out (no connection: host
    not found, refused, a connect timeout), the transfer failed before it started,
    an HTTP answer of dropr-serve but 200 and 500 (dropr.7: every other answer
    stores nothing), or per-message retry answers in a 200. Yes: any libcurl failure
    once bytes went out (a timeout, a connection cut; even "could not connect":
    libcurl sends a request again on a new connection when a kept-alive one dies
    without an answer, and the dead one may have delivered it whole), 500, a 200
    that cannot be read, and a proxy's 502 or 504 (it may have passed the request on
    to a dropr-serve that stored it and died, or was slow).

    So uploads to members open a new connection each (transport.upload): libcurl
    takes a kept-alive connection used less than a second ago for alive without a
    look, and a batch sent on one whose server had died in between read as maybe
    stored: pinned for failover_after after nearly every crash of a member.
    """
    if not t.error:
        return False
    if t.curl_errno:
        return t.request_bytes > 0
    return t.code in MAYBE_STORED


def rendezvous(key: int, members: list[PeerRun]) -> PeerRun:
    """Return the member a key goes to among members: the highest weight(key, url).

    The weight is a BLAKE2b digest, not a CRC-32 as first planned: a CRC is linear, so
    crc(key + url1) and crc(key + url2) differ by the same XOR for every key, and which
    is higher comes down to one bit of the key: three members got 50, 25 and 25 %."""
    return max(members, key=lambda r: _weight(key, r.peer.url))


def _weight(key: int, url: str) -> bytes:
    return hashlib.blake2b(f"{key:08x}{url}".encode(), digest_size=8).digest()


def member_peer(spool: Spool, folder: str) -> Peer | None:
    """Return the Peer of a member folder, configured or left over (its recorded url, the
    group's token); None for a folder that is no member of a configured group."""
    group = group_of(folder)
    gpeer = spool.config.peers.get(group or "")
    if gpeer is None or not gpeer.members:
        return None
    for p in gpeer.members:
        if p.name == folder:
            return p
    peer = Peer(folder, spool.peer_url(folder), gpeer.token, gpeer.cafile)
    peer.group = gpeer.name
    return peer


class GroupRun:
    """What the sender tracks about one peer group: its queue and its members' runs."""

    def __init__(self, group: Peer, spool: Spool, runs: list[PeerRun], *, once: bool = False) -> None:
        self.peer = group
        self.name = group.name
        self.spool = spool
        self.spread = group.mode == SPREAD
        spool.peer_dir(group)
        self.queue = PeerRun(group, spool, once=once)  # the group queue: listing, kill, expiry
        self.members = runs  # configured members, in config order: the only ones given messages
        self.others: list[PeerRun] = []  # member folders whose url left the config
        self.turn = 0  # spread: the index of the member whose turn it is
        self.keys: dict[str, int | None] = {}  # spread: a queued name's key (header y=)
        self.pinned: dict[str, set[str]] = {}  # member folder -> names pinned there
        self.probing: set[str] = set()  # members with a health probe in flight
        for r in runs:
            self._join(r)

    def _join(self, run: PeerRun) -> None:
        run.group = self
        self.pinned[run.peer.name] = self._read_pins(run.peer.name)

    def adopt(self, run: PeerRun) -> None:
        """Take a member folder whose url left the config (it is given nothing new)."""
        self.others.append(run)
        self._join(run)

    def settle(self) -> None:
        """Finish the assigns and unassigns a crash cut (the spool's state table); hand the
        sent/ entries of the folder from before it was a group to the member at its url."""
        names = [r.peer.name for r in (*self.members, *self.others)]
        fixed = settle(self.spool.outbox, self.name, names)
        if fixed:
            log.info("settled group=%s entries=%d reason=a move cut by a crash", self.name, fixed)
        sent = self.spool.out_names(self.name, SENT_DIR)
        if not sent:
            return
        url = self.spool.peer_url(self.name)
        home = next((r for r in (*self.members, *self.others) if r.peer.url == url), None)
        if home is None:
            log.warning(
                "unpolled group=%s sent=%d reason=sent to %s, no member now", self.name, len(sent), url
            )
            return
        self.spool.outbox.assign(self.name, home.peer.name, sent, state=SENT_DIR)
        home.fire(SENT)  # their receipts are polled there, soon

    def _read_pins(self, member: str) -> set[str]:
        """Return the queued names of a member whose record says pinned_at."""
        try:
            metas = set(os.listdir(self.spool.path("out", member, "meta")))
        except FileNotFoundError:
            return set()
        pins = set()
        for name in self.spool.out_names(member, QUEUED):
            ident = m.split_out_name(name)[1]
            if ident in metas and self.spool.out_meta(member, ident).get("pinned_at"):
                pins.add(name)
        return pins

    # -- choosing -------------------------------------------------------------

    def healthy(self, wall: float) -> list[PeerRun]:
        """Return the members that may be given new messages, in config order."""
        return [r for r in self.members if not r.backed_off(wall) and not r.failing_since]

    def _ready(self, r: PeerRun) -> bool:
        return r.send in (IDLE, SENDING) and r.sending < PIPELINE

    def _turn_of(self, healthy: list[PeerRun]) -> PeerRun | None:
        """Return the member whose turn it is (spread): the next healthy one that can take a batch."""
        n = len(self.members)
        for i in range(n):
            r = self.members[(self.turn + i) % n]
            if r in healthy and self._ready(r):
                return r
        return None

    def _key(self, name: str) -> int | None:
        if name not in self.keys:
            try:
                with open(self.spool.path("out", self.name, QUEUED, name), "rb") as f:
                    self.keys[name] = m.Header.parse(f.read(m.HEADER_SIZE)).key
            except (OSError, ValueError):
                self.keys[name] = None  # gone, or corrupt: fill's peek sees to it
        return self.keys[name]

    def _target(self, name: str, healthy: list[PeerRun], turn: PeerRun | None) -> PeerRun | None:
        if not self.spread:
            return healthy[0]
        key = self._key(name)
        return turn if key is None else rendezvous(key, healthy)

    # -- assigning ------------------------------------------------------------

    def fill(self, member: PeerRun, room: int, wall: float) -> None:
        """Assign the group's messages for member's next batch (up to room in its queue)."""
        want = room - len(member.queue)
        if want <= 0 or member not in self.members:
            return
        if member.dirty:  # a wake-up (a put) marks every run dirty: the group queue too
            self.queue.dirty = True
        healthy = self.healthy(wall)
        if member not in healthy or (not self.spread and member is not healthy[0]):
            return
        names = self._pick(member, want, healthy)
        if not names:
            return
        moved = self.spool.outbox.assign(self.name, member.peer.name, names)
        member.queue.extend(moved)
        if self.spread and any(self.keys.get(n) is None for n in moved):  # some went by turn
            self.turn = (self.members.index(member) + 1) % len(self.members)
        for n in names:
            self.keys.pop(n, None)

    def _pick(self, member: PeerRun, want: int, healthy: list[PeerRun]) -> list[str]:
        """Take up to want names of the group queue that go to member; kill the expired."""
        q = self.queue
        q._relist()
        turn = self._turn_of(healthy) if self.spread else None
        taken: list[str] = []
        skipped: list[str] = []
        now = m.now_us()
        while q.queue and len(taken) < want and len(skipped) < SCAN_MAX:
            name = q.queue.popleft()
            if self._target(name, healthy, turn) is not member:
                skipped.append(name)  # another member's (its key's, or its turn): left in place
                continue
            try:
                deadline, _ = self.spool.peek(self.name, name)
            except FileNotFoundError:
                self.keys.pop(name, None)
                continue
            except (OSError, ValueError) as exc:
                self.keys.pop(name, None)
                q.set_aside(self.spool.path("out", self.name, QUEUED, name), exc)
                continue
            if deadline and deadline < now:
                self.keys.pop(name, None)
                q.kill(name, retry.TTL_EXPIRED, retry.TTL_EXPIRED_LOG)
                q.wake_waiters()
                continue
            taken.append(name)
        q.queue.extendleft(reversed(skipped))
        return taken

    def _give_back(self, member: PeerRun, names: list[str], why: str) -> None:
        """Unassign names from member to the group queue (those still queued there)."""
        moved = self.spool.outbox.unassign(member.peer.name, self.name, names)
        self.pinned[member.peer.name].difference_update(names)
        if moved:
            self.queue.dirty = True
            log.info("unassigned peer=%s count=%d reason=%s", member.peer.name, len(moved), why)

    # -- coming back ----------------------------------------------------------

    def batch_back(self, member: PeerRun, t: tp.Transfer, failed: list[str]) -> None:
        """Act on a member's batch that came back with failed names (PeerRun recorded it)."""
        pins = self.pinned.setdefault(member.peer.name, set())
        if failed and ambiguous(t):
            new = [n for n in failed if n not in pins]
            for name in new:
                self.spool.out_note(member.peer.name, m.split_out_name(name)[1], pinned_at=m.now_us())
            if new:
                self.spool.sync(many=True)  # a lost pin could send it to a second member early
                pins.update(new)
                log.info("pinned peer=%s count=%d reason=%s", member.peer.name, len(new), t.error)
        elif failed:
            self._give_back(member, [n for n in failed if n not in pins], "nothing was stored")
        if member.backed_off(time.time()):  # what it holds beyond this batch goes back too
            queued = self.spool.out_names(member.peer.name, QUEUED)
            rest = [n for n in queued if n not in pins and n not in member.inflight]
            if rest:
                self._give_back(member, rest, "member backed off")
                member.queue.clear()
                member.dirty = True

    def tick(self, pool: tp.Pool, node: str, timeouts: tp.Timeouts, wall: float) -> None:
        """Start due health probes, give back pins older than failover_after, expire TTLs."""
        after = self.spool.config.failover_after
        for r in (*self.members, *self.others):
            pins = self.pinned.get(r.peer.name)
            if pins and r.failing_since and wall - r.failing_since >= after:
                ready = [n for n in pins if n not in r.inflight]
                self._give_back(r, ready, f"failing for {wall - r.failing_since:.0f}s (send.failover_after)")
                r.queue.clear()
                r.dirty = True
        for r in self.members:
            if r.failing_since and not r.backed_off(wall) and r.peer.name not in self.probing:
                t = tp.health(r.peer, node, timeouts)
                t.tag = r
                self.probing.add(r.peer.name)
                pool.add(t)
        if not self.healthy(wall):
            self.queue.expire_waiting()

    def probed(self, t: tp.Transfer) -> None:
        """Take in a health probe's answer: the member is fine, or backed off again."""
        r: PeerRun = t.tag
        self.probing.discard(r.peer.name)
        if t.error:
            r.back_off(f"health probe: {t.error}")
        else:
            r.record_ok()
            log.info("healthy peer=%s group=%s", r.peer.name, self.name)

    def sleep_for(self, wall: float) -> float:
        """Return how long the daemon may sleep before this group has something to do: a
        pin to give back, a probe (due when a failed member's backoff is over, whether or
        not anything waits: the first member of a failover group takes new messages
        again as soon as it answers)."""
        sleep = 30.0
        after = self.spool.config.failover_after
        for r in (*self.members, *self.others):
            if self.pinned.get(r.peer.name) and r.failing_since:
                sleep = min(sleep, r.failing_since + after - wall)
        for r in self.members:
            if r.backed_off(wall):
                sleep = min(sleep, r.until - wall)
            elif r.failing_since and r.peer.name not in self.probing:
                sleep = 0.0
        return max(0.0, sleep)


def track(sender: Sender, folder: str) -> bool:
    """Track a configured group's folder or a member's: a GroupRun in sender.groups, a
    PeerRun per member in sender.runs; return False for any other folder."""
    spool, opts = sender.spool, sender.opts
    group = spool.config.peers.get(group_of(folder) or folder)
    if group is None or not group.members:
        return False

    def member_run(peer: Peer) -> PeerRun:
        spool.peer_dir(peer)
        run = sender.runs[peer.name] = PeerRun(peer, spool, once=opts.once, now=opts.now)
        return run

    g = sender.groups.get(group.name)
    if g is None:
        g = sender.groups[group.name] = GroupRun(
            group, spool, [member_run(p) for p in group.members], once=opts.once
        )
        g.settle()
    if folder not in sender.runs and folder != group.name:
        peer = member_peer(spool, folder)
        if peer is not None:
            g.adopt(member_run(peer))
            g.settle()
    return True
