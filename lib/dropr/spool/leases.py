"""Leases: consumers claim inbox messages and end each claim; sweeps take back expired ones.

Every move of an inbox entry after the store is one rename(2) (consumers race on
them: the loser gets ENOENT), chosen by the table ACTIONS, read as s6-supervise's
``actions[state][event]``:

    state    event    to             record (meta/<origin>,<id>)
    ready    claim    claimed        -             mtime = lease end (Leases.claim)
    claimed  ack      done           -
    claimed  release  ready | wait   returns + 1   wait: mtime = due time (a delay)
    claimed  fail     ready | wait   returns + 1, failures + 1, error
    claimed  reject   dead           returns + 1, failures + 1, error
    claimed  expire   ready | dead   as fail; dead once failures reach max_attempts
    wait     due      ready          -
    dead     requeue  ready          returns = failures = 0, requeues + 1 (synced first)

A handler returns False when the entry is gone (another consumer or sweeper won).
A requeue (dropr-ack --requeue) writes its record before the rename, durably: a crash
between leaves the message dead with its counts reset, and requeuing it again finishes
the job; the rename is the one step that puts it back, so it is never in two states.
The caller holds off purges meanwhile (Retention.hold): a purge unlinks dead entries.
"""

from __future__ import annotations

import os

from .. import message as m
from .. import retry
from ._fs import read_json
from ._layout import SWEEP_EVERY, message_names, stamp

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from . import Spool

    Handler = Callable[["Leases", str, str, str, float], bool]


class Leases:
    """The claims on the inbox of one spool."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.fs = spool.fs
        self.root = spool.root
        self._ready: dict[str, tuple[float, list[str]]] = {}  # channel -> (listed at, names left)
        self._swept: dict[str, float] = {}  # channel -> when a claim with keep last swept it

    # -- the events of a claim ----------------------------------------------------

    def finish(self, channel: str, name: str, how: str, *, reason: str = "", delay: float = 0) -> bool:
        """End a claim: how is ack, release, fail or reject; False if the claim was lost."""
        return self.handle("claimed", how, channel, name, reason=reason, delay=delay)

    def handle(
        self, state: str, event: str, channel: str, name: str, *, reason: str = "", delay: float = 0
    ) -> bool:
        """Apply an event to an entry in a state (see ACTIONS); False if the entry is gone."""
        try:
            action = ACTIONS[state, event]
        except KeyError:
            raise ValueError(f"no {event} of an inbox entry in {state}") from None
        return action(self, channel, name, reason, delay)

    def ack(self, channel: str, name: str) -> bool:
        """Move a claimed message to done; False if the claim was lost."""
        return self.handle("claimed", "ack", channel, name)

    def release(self, channel: str, name: str, *, reason: str = "", delay: float = 0) -> bool:
        """Give a claimed message back, now or after delay seconds, as no failure."""
        return self.handle("claimed", "release", channel, name, reason=reason, delay=delay)

    def fail(self, channel: str, name: str, *, reason: str = "", delay: float = 0) -> bool:
        """Give a claimed message back after a failed attempt, now or after delay seconds."""
        return self.handle("claimed", "fail", channel, name, reason=reason, delay=delay)

    def reject(self, channel: str, name: str, reason: str = "") -> bool:
        """Move a claimed message to dead, for good."""
        return self.handle("claimed", "reject", channel, name, reason=reason)

    def requeue(self, channel: str, name: str) -> bool:
        """Put a dead message back into ready, its counts reset; False if it is not dead."""
        return self.handle("dead", "requeue", channel, name)

    def _ack(self, channel: str, name: str, reason: str, delay: float) -> bool:
        try:
            self.fs.rename(
                f"{self.root}/in/{channel}/claimed/{name}", f"{self.root}/in/{channel}/done/{name}"
            )
        except FileNotFoundError:
            return False
        return True

    def _release(self, channel: str, name: str, reason: str, delay: float) -> bool:
        due = m.now_us() / 1e6 + delay if delay > 0 else 0
        return self._return(channel, name, "wait" if due else "ready", failed=False, reason=reason, due=due)

    def _fail(self, channel: str, name: str, reason: str, delay: float) -> bool:
        due = m.now_us() / 1e6 + delay if delay > 0 else 0
        return self._return(channel, name, "wait" if due else "ready", failed=True, reason=reason, due=due)

    def _reject(self, channel: str, name: str, reason: str, delay: float) -> bool:
        return self._return(channel, name, "dead", failed=True, reason=reason or retry.REJECTED)

    def _expire(self, channel: str, name: str, reason: str, delay: float) -> bool:
        _, _, origin, ident = m.parse_in_name(name)
        meta = self.sp.inbox.meta(channel, origin, ident)
        most = self.sp.config.max_attempts
        dead = bool(most) and int(meta.get("failures", 0)) + 1 >= most
        why = retry.LEASE_EXPIRED_DEAD if dead else retry.LEASE_EXPIRED
        return self._return(channel, name, "dead" if dead else "ready", failed=True, reason=why)

    def _due(self, channel: str, name: str, reason: str, delay: float) -> bool:
        try:
            self.fs.rename(f"{self.root}/in/{channel}/wait/{name}", f"{self.root}/in/{channel}/ready/{name}")
        except FileNotFoundError:
            return False
        return True

    def _requeue(self, channel: str, name: str, reason: str, delay: float) -> bool:
        def reset(meta: dict[str, Any]) -> None:  # the last error stays: it says why it was dead
            meta.update(returns=0, failures=0, requeues=int(meta.get("requeues", 0)) + 1)

        if not os.path.lexists(f"{self.root}/in/{channel}/dead/{name}"):
            return False
        return self._record_and_move(channel, name, "dead", "ready", reset, sync=True)

    def _return(
        self, channel: str, name: str, dst: str, *, failed: bool, reason: str, due: float = 0
    ) -> bool:
        """Record an attempt's end and move the message from claimed to dst; False if it is gone.

        The due time is set before the record is written: a claim already lost, or a
        time the file cannot take, then leaves both as they were.
        """
        if due:
            try:
                self.fs.utime(f"{self.root}/in/{channel}/claimed/{name}", (stamp(due), stamp(due)))
            except FileNotFoundError:
                return False

        def count(meta: dict[str, Any]) -> None:
            meta["returns"] = int(meta.get("returns", 0)) + 1
            if failed:
                meta["failures"] = int(meta.get("failures", 0)) + 1
            if reason:
                meta["error"] = reason

        return self._record_and_move(channel, name, "claimed", dst, count, sync=False)

    def _record_and_move(
        self,
        channel: str,
        name: str,
        src: str,
        dst: str,
        update: Callable[[dict[str, Any]], None],
        *,
        sync: bool,
    ) -> bool:
        """Update a message's record (synced first with sync), then rename it from src to dst
        and sync dst; False if it is gone. Every inbox transition with a record takes this path."""
        _, _, origin, ident = m.parse_in_name(name)
        cdir = f"{self.root}/in/{channel}"
        meta_path = f"{cdir}/meta/{origin},{ident}"
        meta = read_json(meta_path)
        update(meta)
        self.fs.write_json(meta_path, meta, sync=sync)
        try:
            self.fs.rename(f"{cdir}/{src}/{name}", f"{cdir}/{dst}/{name}")
        except FileNotFoundError:
            return False
        self.fs.fsync_dir(f"{cdir}/{dst}")
        return True

    # -- claims and sweeps --------------------------------------------------------

    def sweep_channel(self, channel: str) -> int:
        """Return expired leases to ready (or dead, past the config's max_attempts) and due
        waiting messages to ready; return how many moved."""
        now = m.now_us() / 1e6
        moved = 0
        inbox = self.sp.inbox
        for name in inbox.names(channel, "wait"):
            try:
                if os.stat(f"{self.root}/in/{channel}/wait/{name}").st_mtime <= now:
                    moved += self.handle("wait", "due", channel, name)
            except FileNotFoundError:
                pass
        for name in inbox.names(channel, "claimed"):
            try:
                if os.stat(f"{self.root}/in/{channel}/claimed/{name}").st_mtime > now:
                    continue
            except FileNotFoundError:
                continue
            moved += self.handle("claimed", "expire", channel, name)
        return moved

    def claim(
        self,
        channel: str,
        n: int,
        lease: float,
        *,
        keep: bool = False,
        each: Callable[[Claim], None] | None = None,
        sync: bool = True,
    ) -> list[Claim]:
        """Claim up to n ready messages for a lease of `lease` seconds, most urgent first.

        Each call sweeps expired leases and due retries, then lists ready/. With keep
        (a handler loop claiming one at a time from a large inbox, --follow) the listing
        is kept between calls and renewed when used up, after SWEEP_EVERY, or by
        forget_ready, and the sweep (a stat of every claimed entry: one per message in a
        pipeline whose acks trail the claims) runs at most every SWEEP_EVERY: an expired
        lease or a more urgent arrival may then wait up to that long. each,
        if given, is called with every claim once the claims are durable.

        The claims' renames are made durable (sync_claims) before anyone hears of them:
        else an ack's rename into done/ could reach the disk without the claim's, and a
        power loss would leave the message in ready/ and done/ at once. With sync=False
        the caller calls sync_claims before it ends any of them (dropr-recv --exec starts
        the handlers first, so the two fsyncs overlap their run).
        """
        cdir = f"{self.root}/in/{channel}"
        if not os.path.isdir(cdir):
            return []
        now = m.now_us() / 1e6
        listed, names = self._ready.get(channel, (0.0, [])) if keep else (0.0, [])
        ready = f"{cdir}/ready"
        if not names or now - listed > SWEEP_EVERY:
            if not keep or now - self._swept.get(channel, 0.0) > SWEEP_EVERY:
                self.sweep_channel(channel)
                self._swept[channel] = now
            listed = now
            names, strays = message_names(ready, "in", n + 256)  # spares for other consumers
            if strays:
                self.sp.retention.strays(ready, strays)
        out: list[Claim] = []
        expiry = stamp(now + lease)
        names.reverse()  # pop() from the end takes the most urgent first
        while names and len(out) < n:
            name = names.pop()
            c = Claim(self.sp, channel, name, expiry)  # before the rename: nothing can fail after it
            if not self._take(f"{ready}/{name}", f"{cdir}/claimed/{name}", now, expiry):
                continue  # another consumer won this one
            out.append(c)
        if keep:
            names.reverse()
            self._ready[channel] = (listed, names)
        if out and sync:
            self.sync_claims(channel)
        if each is not None:
            for c in out:
                each(c)
        return out

    def sync_claims(self, channel: str) -> None:
        """Make the claims of a channel durable: fsync claimed/, then ready/ (a rename is
        durable once both its folders are). One pair per claim call, not per message."""
        cdir = f"{self.root}/in/{channel}"
        self.fs.fsync_dir(f"{cdir}/claimed")
        self.fs.fsync_dir(f"{cdir}/ready")

    def _take(self, src: str, dst: str, now: float, expiry: float) -> bool:
        """ready -> claimed: set the lease end, rename, set it again (see the state table)."""
        try:
            self.fs.utime(src, (now, expiry))
            self.fs.rename(src, dst)
            self.fs.utime(dst, (now, expiry))
        except FileNotFoundError:
            return False
        return True

    def forget_ready(self, channel: str) -> None:
        """Drop the kept listing of ready messages (an arrival may be more urgent)."""
        self._ready.pop(channel, None)

    def claimed_index(self) -> dict[str, list[tuple[str, str]]]:
        """Map every claimed id (and origin,id) to its (channel, name)s, in one scan."""
        return self.index("claimed")

    def index(self, state: str, channels: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
        """Map every id (and origin,id) in one state of channels (default all) to its
        (channel, name)s, in one scan."""
        index: dict[str, list[tuple[str, str]]] = {}
        inbox = self.sp.inbox
        for ch in inbox.channels() if channels is None else channels:
            for name in inbox.names(ch, state):
                try:
                    _, _, origin, ident = m.parse_in_name(name)
                except ValueError:
                    continue
                index.setdefault(ident, []).append((ch, name))
                index.setdefault(f"{origin},{ident}", []).append((ch, name))
        return index


ACTIONS: dict[tuple[str, str], Handler] = {
    ("claimed", "ack"): Leases._ack,
    ("claimed", "release"): Leases._release,
    ("claimed", "fail"): Leases._fail,
    ("claimed", "reject"): Leases._reject,
    ("claimed", "expire"): Leases._expire,
    ("wait", "due"): Leases._due,
    ("dead", "requeue"): Leases._requeue,
}
# (state, event) -> handler(leases, channel, name, reason, delay): see the module docstring


class Claim:
    """A claimed inbox message: where it is and until when the lease holds."""

    __slots__ = ("spool", "channel", "name", "expiry", "priority", "arrival", "origin", "ident")

    def __init__(self, spool: Spool, channel: str, name: str, expiry: float) -> None:
        self.spool = spool
        self.channel = channel
        self.name = name
        self.expiry = expiry
        self.priority, self.arrival, self.origin, self.ident = m.parse_in_name(name)

    @property
    def path(self) -> str:
        """Return the payload file's path while claimed."""
        return self.spool.path("in", self.channel, "claimed", self.name)

    def renew(self, lease: float) -> bool:
        """Extend the lease; False if the message is no longer claimed."""
        self.expiry = stamp(m.now_us() / 1e6 + lease)
        try:
            self.spool.fs.utime(self.path, (self.expiry, self.expiry))
            return True
        except FileNotFoundError:
            return False

    def info(self) -> dict[str, Any]:
        """Return the fields dropr-recv prints for this message."""
        meta = self.spool.inbox.meta(self.channel, self.origin, self.ident)
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        return {
            "id": self.ident,
            "channel": self.channel,
            "origin": self.origin,
            "priority": self.priority,
            "created": self.arrival / 1e6,
            "size": size,
            "attempt": int(meta.get("returns", 0)) + 1,
            "path": self.path,
        }
