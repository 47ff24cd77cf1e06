"""The outbox: put batches, lookups, and the named transitions of an outbox entry.

    put             tmp/F -> out/P/queued/N (one link per peer)    PutBatch.commit
    mark_sent       queued/N -> sent/N                             the peer stored it
    mark_processed  sent/N -> processed/N                          the peer's consumer acked it
    record_failure  meta/ID: attempts + 1, last error              a temporary failure
    kill            meta/ID, then queued/N or sent/N -> dead/N     given up, with a reason
    requeue         meta/ID (synced), then dead/N -> queued/N      dropr-ack --requeue --out
    assign          out/G/queued/N -> out/M/queued/N               a group member takes it (groups.py)
    unassign        out/M/queued/N -> out/G/queued/N               back to the group queue

Each move of the sender is a link, then, once the new name is durable, an unlink (as
``FS.move``, in that order for a whole batch): only the sender moves those entries, and
a crash between the two leaves the entry in both states, which the next move of it
completes. A requeue is another process's move: one rename(2), so a crash leaves the
entry in one state, dead or queued. It resets the record first: attempts to 0, and,
for a message with a TTL, a new deadline in the record (``deadline``: the requeue's time
plus the message's TTL span), because the file is never changed after its final rename
and its header keeps the first deadline. The sender takes the record's deadline where
the header's has passed (``peek``). A crash between the two leaves the message dead
with its record reset: requeuing it again finishes the job.
"""

from __future__ import annotations

import errno
import os

from .. import message as m
from ..config import Peer
from ..errors import DataError, NoInputError, from_oserror
from ._fs import read_json
from ._layout import (
    CHUNK,
    DANGLING_AGE,
    OUT_STATES,
    SYNC_EACH_MAX,
    TTL_MARK,
    VIA_MARK,
    any_name,
    message_names,
    sorted_dirs,
    sorted_names,
)

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import IO, Any

    from . import Spool

Pending = tuple[str, str, "str | None", int]  # tmp path, outbox name, caller's id, fd or -1
HOLD_URL = "hold"  # the url file of a held peer (hold = true): dropr-send never pushes to it


class Outbox:
    """The out/ folder of one spool."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.fs = spool.fs
        self.base = spool.path("out")

    # -- lookups ----------------------------------------------------------------

    def peer_dir(self, peer: Peer) -> str:
        """Return (creating it the first time) the outbox folder of a peer."""
        d = f"{self.base}/{peer.name}"
        if not os.path.isdir(os.path.join(d, "meta")):
            _make_peer_dir(self, peer, d)
        return d

    def find(self, ident: str) -> list[tuple[str, str, str]]:
        """Return (peer, state, name) for every destination of an outbox message."""
        names = self._names_of(ident)
        found = []
        for peer in self.peers():
            for state in OUT_STATES:
                for name in names:
                    if os.path.lexists(f"{self.base}/{peer}/{state}/{name}"):
                        found.append((peer, state, name))
        return found

    def _names_of(self, ident: str) -> list[str]:
        try:
            prefix = os.readlink(self.sp.path("ids", ident))
            return [f"{prefix},{ident}"]
        except OSError:
            pass
        t = m.generated_time(ident)
        if t is None:
            return []
        return [m.out_name(p, t, ident) for p in range(10)]

    def claim_id(self, ident: str, prefix: str) -> bool:
        """Create ids/<id>; return False if the id is already in the outbox."""
        link = self.sp.path("ids", ident)
        for _ in range(2):
            try:
                self.fs.symlink(prefix, link)
                return True
            except FileExistsError:
                if self.find(ident):
                    return False
                try:
                    age = m.now_us() / 1e6 - os.lstat(link).st_mtime
                except FileNotFoundError:
                    continue
                if age < DANGLING_AGE:
                    return False  # another putter of the same id is committing right now
                self.fs.unlink(link)
        return False

    def peers(self) -> list[str]:
        """Return the names of all outbox peers."""
        return sorted_dirs(self.base)

    def names(
        self, peer: str, state: str, first: int = 0, after: str = "", *, strays: list[str] | None = None
    ) -> list[str]:
        """Return the sorted message names in one outbox state of a peer (with first: at
        least those; with after: only the names that sort after it).

        Any other file there is moved to corrupt/; a caller that changes nothing (dropr-ls)
        passes strays, a list that gets their names instead, and they stay.
        """
        folder = f"{self.base}/{peer}/{state}"
        names, bad = message_names(folder, "out", first, after)
        if bad:
            self.sp.retention.strays(folder, bad, strays)
        return names

    def has_ttl(self, peer: str) -> bool:
        """Return whether a message with a TTL was ever put for a peer (see PutBatch)."""
        return os.path.exists(f"{self.base}/{peer}/{TTL_MARK}")

    def changed(self, peer: str, state: str, name: str) -> float | None:
        """Return when an outbox entry last changed state (its ctime: a link or an unlink of
        the message, at any of its peers, sets it), or None if it is not there."""
        try:
            return os.lstat(f"{self.base}/{peer}/{state}/{name}").st_ctime
        except FileNotFoundError:
            return None

    def any(self, peer: str, state: str) -> bool:
        """Return whether one outbox state of a peer holds anything (no listing)."""
        return any_name(f"{self.base}/{peer}/{state}", "out")

    def url(self, peer: str) -> str:
        """Return the URL recorded for an outbox peer."""
        with open(f"{self.base}/{peer}/url", encoding="utf-8") as f:
            return f.read().strip()

    def peer_state(self, peer: str) -> dict[str, Any]:
        """Return the stored delivery state of a peer (backoff, last ok, last error)."""
        return read_json(f"{self.base}/{peer}/peer.json")

    def set_peer_state(self, peer: str, data: dict[str, Any]) -> None:
        """Replace the stored delivery state of a peer."""
        self.fs.write_json(f"{self.base}/{peer}/peer.json", data)

    def read_header(self, peer: str, state: str, name: str) -> m.Header:
        """Read the envelope of an outbox message; ValueError if it is corrupt."""
        with open(f"{self.base}/{peer}/{state}/{name}", "rb") as f:
            raw = f.read(m.HEADER_SIZE)
            hdr = m.Header.parse(raw)
            size = os.fstat(f.fileno()).st_size - m.HEADER_SIZE
        if size != hdr.size:
            raise ValueError(f"payload is {size} bytes, header says {hdr.size}")
        return hdr

    def peek(self, peer: str, name: str, fd: int = -1) -> tuple[int, int]:
        """Return (deadline µs or 0, payload size) of a queued message, reading only its header.

        The sender's fast path: three system calls, no full parse (the receiver checks
        the whole header). ValueError if the file is not a dropr message. A deadline
        that has passed is replaced by a later one a requeue recorded (see above).
        fd: the message already open (a holder about to send it), read and left open.
        """
        mine = fd < 0
        if mine:
            fd = os.open(f"{self.base}/{peer}/queued/{name}", os.O_RDONLY)
        try:
            raw = os.pread(fd, m.HEADER_SIZE, 0)
            size = os.fstat(fd).st_size - m.HEADER_SIZE
        finally:
            if mine:
                os.close(fd)
        return _deadline(self, peer, name, raw, size), size

    def load(self, peer: str, name: str, small: int) -> tuple[int, int, bytes | None]:
        """Return peek's (deadline, size) of a queued message and, if its payload is at most
        small bytes, the whole file (header and payload: what the peer is sent), read in
        one call: the sender then uploads it from memory, not opening it a second time."""
        fd = os.open(f"{self.base}/{peer}/queued/{name}", os.O_RDONLY)
        try:
            whole = os.pread(fd, m.HEADER_SIZE + small + 1, 0)
            size = len(whole) - m.HEADER_SIZE
            if size > small:  # larger: libcurl reads it from the file as it sends it
                size = os.fstat(fd).st_size - m.HEADER_SIZE
        finally:
            os.close(fd)
        deadline = _deadline(self, peer, name, whole[: m.HEADER_SIZE], size)
        return deadline, size, whole if size <= small else None

    def meta(self, peer: str, ident: str) -> dict[str, Any]:
        """Return the attempt record of one outbox message."""
        return read_json(f"{self.base}/{peer}/meta/{ident}")

    def note(self, peer: str, ident: str, **fields: Any) -> None:
        """Add fields to the record of one outbox message."""
        meta_path = f"{self.base}/{peer}/meta/{ident}"
        meta = read_json(meta_path)
        meta.update(fields)
        self.fs.write_json(meta_path, meta)

    # -- transitions ------------------------------------------------------------

    def mark_sent(self, peer: str, names: Iterable[str]) -> int:
        """Move queued entries the peer stored to sent; return how many moved."""
        return self._move(peer, names, "queued", "sent")

    def mark_processed(self, peer: str, names: Iterable[str]) -> int:
        """Move sent entries the peer's consumer acked to processed; return how many moved."""
        return self._move(peer, names, "sent", "processed")

    def record_failure(self, peer: str, name: str, reason: str) -> None:
        """Count a failed attempt of one message and keep its reason (it stays where it is)."""
        ident = m.split_out_name(name)[1]
        meta_path = f"{self.base}/{peer}/meta/{ident}"
        meta = read_json(meta_path)
        meta["attempts"] = int(meta.get("attempts", 0)) + 1
        meta["error"] = reason
        meta["at"] = m.now_us()
        self.fs.write_json(meta_path, meta)

    def kill(self, peer: str, names: Iterable[str], reason: str, *, state: str = "queued") -> int:
        """Give messages up: record the reason, then move them from state (queued or sent)
        to dead; return how many moved."""
        names = list(names)
        for name in names:
            self.record_failure(peer, name, reason)
        return self._move(peer, names, state, "dead")

    def requeue(self, peer: str, names: Iterable[str]) -> list[str]:
        """Put dead entries back into queued/ with their attempts and TTL reset (see the
        module docstring); return the names moved. The caller holds off purges
        (Retention.hold) and wakes the sender."""
        base = f"{self.base}/{peer}"
        moved = []
        for name in names:
            src = f"{base}/dead/{name}"
            if not os.path.lexists(src) or os.path.lexists(f"{base}/queued/{name}"):
                continue  # not dead; or queued too: a kill by the sender in progress
            self._reset(peer, name, src)
            try:
                self.fs.rename(src, f"{base}/queued/{name}")
            except FileNotFoundError:
                continue
            if os.path.lexists(src):  # the same file: the sender linked it into dead/ meanwhile
                continue  # and unlinks queued/N next: it stays dead
            moved.append(name)
        if moved:  # a rename is durable with both folders: else dead/N may come back beside
            self.fs.fsync_dir(f"{base}/queued")  # queued/N after a power loss
            self.fs.fsync_dir(f"{base}/dead")
        return moved

    def _reset(self, peer: str, name: str, path: str) -> None:
        """Write a requeued message's record: attempts 0, a new TTL deadline, durably."""
        ident = m.split_out_name(name)[1]
        meta = self.meta(peer, ident)
        now = m.now_us()
        meta.update(attempts=0, requeues=int(meta.get("requeues", 0)) + 1, requeued_at=now)
        meta.pop("unknown_at", None)
        meta.pop("deadline", None)
        try:
            with open(path, "rb") as f:
                hdr = m.Header.parse(f.read(m.HEADER_SIZE))
            if hdr.deadline:
                meta["deadline"] = now + max(0, hdr.deadline - hdr.created)
        except (OSError, ValueError):
            pass  # no header to read: the sender moves the file aside as corrupt
        self.fs.write_json(f"{self.base}/{peer}/meta/{ident}", meta, sync=True)

    def assign(self, group: str, member: str, names: Iterable[str], state: str = "queued") -> list[str]:
        """Give queued entries of a group to one of its members (group queued/ -> member
        queued/), their records along; return the names moved. Both folders are synced
        before the member sends any: a crash leaves an entry in both queues, never in a
        member's sent/ beside the group queue (settle keeps the group's copy). With
        state "sent": hand a sent/ entry of the folder from before it was a group to the
        member at its recorded url (settle keeps the member's copy)."""
        src, dst = f"{self.base}/{group}/{state}", f"{self.base}/{member}/{state}"
        moved = self._move_dirs(src, dst, names, True)
        _carry(self, group, member, moved)
        return moved

    def unassign(self, member: str, group: str, names: Iterable[str]) -> list[str]:
        """Take queued entries back from a group member into the group queue, their records
        along without pinned_at (a pin is one member's); return the names moved."""
        moved = self._move_dirs(f"{self.base}/{member}/queued", f"{self.base}/{group}/queued", names, True)
        _carry(self, member, group, moved)
        return moved

    def _move(self, peer: str, names: Iterable[str], src: str, dst: str) -> int:
        """Move names from one state of a peer to another (_move_dirs); return how many moved."""
        base = f"{self.base}/{peer}"
        return len(self._move_dirs(f"{base}/{src}", f"{base}/{dst}", names))

    def _move_dirs(self, src: str, dst: str, names: Iterable[str], sync_src: bool = False) -> list[str]:
        """Link each name into dst, make dst durable, then unlink the names in src (and
        with sync_src make that durable too); return the names moved.

        The new names are durable before any old one goes: a power loss may keep an
        unlink and lose a link made before it in another folder, which left the entry
        in no state. An unlink that is lost brings the old name back beside the new
        one, which the next move of the entry completes (FS.move)."""
        linked = []
        with self.sp.usage.batch():  # a quota's total: one update for the batch (usage.py)
            for name in names:
                if self._link(f"{src}/{name}", f"{dst}/{name}"):
                    linked.append(name)
            if linked:
                self.fs.fsync_dir(dst)
            for name in linked:
                self.fs.unlink_quiet(f"{src}/{name}")
        if linked and sync_src:
            self.fs.fsync_dir(src)
        return linked

    def _link(self, src: str, dst: str) -> bool:
        """Link src to dst (there already from a cut move: fine); False if src is gone."""
        try:
            self.fs.link(src, dst)
        except FileNotFoundError:
            return False
        except FileExistsError:
            try:
                if not os.path.samefile(src, dst):
                    raise
            except FileNotFoundError:
                return False
        return True


def _make_peer_dir(ob: Outbox, peer: Peer, d: str) -> None:
    """Create a peer's outbox folder d: its states, and its url written in a tmp/ file of
    this call's own and renamed into place. Puts, and a server's relaying threads, may do it
    at once: with one shared url.new, one's rename took it from under another's (exit 74)."""
    fs = ob.fs
    for s in (*OUT_STATES, "meta"):
        fs.mkdirs(os.path.join(d, s))
    url = os.path.join(d, "url")
    if os.path.exists(url):
        return
    if peer.via:  # the url is the relay's: without this, the folder's messages
        # would go to the relay's inbox once the peer left the config
        fs.write_file(os.path.join(d, VIA_MARK), peer.via + "\n", flags=os.O_TRUNC)
    where = HOLD_URL if peer.hold else peer.url  # a held peer fetches: no url
    tmp = ob.sp.path("tmp", f"url-{os.urandom(8).hex()}")  # a crash leaves it to the tmp sweep
    fs.write_file(tmp, where + "\n")
    fs.rename(tmp, url)  # the same text whoever renames last
    fs.fsync_dir(d)


def _deadline(ob: Outbox, peer: str, name: str, raw: bytes, size: int) -> int:
    """Return the deadline of a queued message from its raw header (see Outbox.peek)."""
    if size < 0:
        raise ValueError("not a dropr message header")
    deadline = m.header_deadline(raw)
    if deadline and deadline < m.now_us():  # passed: a requeue may have set a later one
        later = ob.meta(peer, m.split_out_name(name)[1]).get("deadline")
        if isinstance(later, int) and later > deadline:
            return later
    return deadline


def _carry(ob: Outbox, src: str, dst: str, names: list[str]) -> None:
    """Move the records (attempts, last error) of moved entries from src's meta/ to dst's."""
    try:
        metas = set(os.listdir(f"{ob.base}/{src}/meta")) if names else set()
    except FileNotFoundError:
        return
    for name in names:
        ident = m.split_out_name(name)[1]
        if ident in metas:
            meta = ob.meta(src, ident)
            meta.pop("pinned_at", None)
            ob.fs.write_json(f"{ob.base}/{dst}/meta/{ident}", meta)
            ob.fs.unlink_quiet(f"{ob.base}/{src}/meta/{ident}")


def settle(ob: Outbox, group: str, members: Iterable[str]) -> int:
    """Finish the assigns and unassigns a crash cut (the state table); return how many.

    An entry in the group queue and a member's queued/ loses the member's name
    (nothing sent it: the member sends only once both folders are synced); one in
    the group queue and a member's sent/, processed/ or dead/ loses the group's, and
    so does one in the group's sent/ (a hand-over) found at a member."""
    fixed = 0
    for gstate in ("queued", "sent"):
        gdir = f"{ob.base}/{group}/{gstate}"
        names = set(sorted_names(gdir))
        for member in members if names else ():
            for state in OUT_STATES:
                folder = f"{ob.base}/{member}/{state}"
                both = names.intersection(sorted_names(folder))
                drop = folder if (gstate, state) == ("queued", "queued") else gdir
                for name in both:
                    ob.fs.unlink_quiet(f"{drop}/{name}")
                    names.discard(name)
                if both:
                    ob.fs.fsync_dir(drop)
                fixed += len(both)
    return fixed


class PutBatch:
    """Messages written to tmp/ and committed together: one durable commit for many."""

    def __init__(
        self,
        spool: Spool,
        peers: list[Peer],
        *,
        channel: str,
        priority: int,
        ttl: float,
        key: int | None = None,
    ) -> None:
        if not peers:
            raise DataError("no destination; give --to PEER")
        self.spool = spool
        self.fs = fs = spool.fs
        self.peers = peers
        self.channel = m.check_name(channel, "a channel")
        self.priority = priority
        self.ttl_us = int(ttl * 1e6)
        self.key = key  # header y=: message.key_hash of dropr-put --key
        self.pending: list[Pending] = []
        self.ids: list[str] = []  # ids committed, in order, including no-op duplicates
        self._dup: list[str] = []
        try:
            self._dirs = [spool.outbox.peer_dir(p) for p in peers]
            self._held = [p.name for p in peers if p.hold]  # their fetches are woken too
            if ttl:
                for d in self._dirs:
                    if not os.path.exists(f"{d}/{TTL_MARK}"):
                        fs.close(fs.create(f"{d}/{TTL_MARK}", 0))
        except OSError as exc:
            raise from_oserror(exc, f"cannot create the outbox of a peer in {spool.root}") from None

    def _start(self, ident: str | None) -> tuple[str, int, str, int] | None:
        if ident is not None:
            m.check_id(ident)
            if self.spool.outbox.find(ident):
                self._dup.append(ident)
                return None
            arrival = m.now_us()
        else:
            ident, arrival = self.spool.ids.new()
        tmp = self.spool.tmp_name(ident)
        return ident, arrival, tmp, self.fs.create(tmp)

    def _header(self, ident: str, arrival: int, size: int, crc: int) -> bytes:
        deadline = arrival + self.ttl_us if self.ttl_us else 0
        return m.Header(ident, self.channel, self.priority, arrival, deadline, size, crc, key=self.key).pack()

    def _write(self, ident: str | None, fill: Callable[[int, str, int], None]) -> None:
        """Start a tmp file for one message and let fill(fd, id, arrival) write it."""
        caller = ident
        try:
            started = self._start(ident)
            if started is None:
                return
            ident, arrival, tmp, fd = started
            try:
                fill(fd, ident, arrival)
            except BaseException:
                self.fs.close(fd)
                self.fs.unlink_quiet(tmp)
                raise
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.EISDIR, errno.EBADF):
                raise NoInputError(f"cannot read input: {exc.strerror}") from None
            raise from_oserror(exc, f"cannot write to spool {self.spool.root}") from None
        if len(self.pending) >= SYNC_EACH_MAX:
            self.fs.close(fd)  # a batch this size is made durable by one syncfs, not per file
            fd = -1
        self.pending.append((tmp, m.out_name(self.priority, arrival, ident), caller, fd))

    def add(self, payload: bytes, ident: str | None = None) -> None:
        """Write one message with an in-memory payload to tmp/."""

        def fill(fd: int, ident: str, arrival: int) -> None:
            self.fs.write_all(fd, self._header(ident, arrival, len(payload), m.crc32(payload)) + payload)

        self._write(ident, fill)

    def add_stream(self, src: IO[bytes] | int, ident: str | None = None, limit: int = 0) -> None:
        """Write one message streamed from a file or descriptor, in constant memory."""
        fdin = src if isinstance(src, int) else src.fileno()
        fs = self.fs

        def fill(fd: int, ident: str, arrival: int) -> None:
            os.lseek(fd, m.HEADER_SIZE, os.SEEK_SET)
            size = 0
            crc = 0
            while chunk := os.read(fdin, CHUNK):
                size += len(chunk)
                if limit and size > limit:
                    raise DataError(f"message is larger than the limit of {limit} bytes")
                crc = m.crc32(chunk, crc)
                fs.write_all(fd, chunk)
            if fs.pwrite(fd, self._header(ident, arrival, size, crc), 0) != m.HEADER_SIZE:
                raise OSError(errno.EIO, "short write of the message header")

        self._write(ident, fill)

    def __len__(self) -> int:
        return len(self.pending)

    def take(self) -> tuple[list[Pending], list[str]]:
        """Hand over what is pending, for a commit that runs while new messages are written."""
        taken = self.pending, self._dup
        self.pending, self._dup = [], []
        return taken

    def commit(self, taken: tuple[list[Pending], list[str]] | None = None) -> list[str]:
        """Make every pending (or taken) message durable and queued for each peer; return their ids.

        Data first (fsync of each file, or one syncfs for many), then the names in
        queued/, then the fsync of queued/. A running sender is woken between the links
        and that last fsync, so that its wake-up (0.05-0.3 ms from idle) and its start
        on the batch overlap the fsync (0.15 ms) instead of following it. It can only
        send what has its data durable, and nothing is reported stored before the fsync
        is done; if that fsync fails (EIO), what the sender took may already be on its
        way, as it might be after any failed directory fsync, whose names may or may not
        have reached the disk.
        """
        sp = self.spool
        pending, dups = taken if taken is not None else self.take()
        done: list[str] = []
        linked: list[str] = []  # names made by this commit, undone if it fails
        try:
            sp.sync(fds=[p[3] for p in pending if p[3] >= 0], many=len(pending) > SYNC_EACH_MAX)
            for p in pending:
                if p[3] >= 0:
                    self.fs.close(p[3])
            pending = [(t, n, c, -1) for t, n, c, _ in pending]
            with sp.usage.batch():  # a quota's total: one update for the commit (usage.py)
                index_dir = self._link(pending, done, dups, linked)
            dirs = [os.path.join(d, "queued") for d in self._dirs]
            if index_dir:
                dirs.append(sp.path("ids"))
            if done:
                # before the fsync of queued/ (see this docstring); it lists only these queues
                sp.wakeups.wake_sender([p.name for p in self.peers])
                for held in self._held:
                    sp.wakeups.wake_fetchers(held)
            sp.sync(dirs=dirs)
        except OSError as exc:
            for p in pending:
                if p[3] >= 0:
                    self.fs.close(p[3])
                self.fs.unlink_quiet(p[0])
            for dst in linked:
                self.fs.unlink_quiet(dst)
            raise from_oserror(exc, f"cannot commit to spool {sp.root}") from None
        self.ids.extend(done)
        self.ids.extend(dups)
        return done + dups

    def _link(self, pending: list[Pending], done: list[str], dups: list[str], linked: list[str]) -> bool:
        """Link each synced tmp file into queued/ of every peer and unlink it; return whether
        an ids/ entry was made. Adds the ids to done (or dups), the names made to linked."""
        fs = self.fs
        index_dir = False
        for tmp, name, caller, _ in pending:
            prefix, ident = m.split_out_name(name)
            if caller is not None:
                if not self.spool.outbox.claim_id(caller, prefix):
                    fs.unlink_quiet(tmp)
                    dups.append(caller)
                    continue
                linked.append(self.spool.path("ids", caller))
                index_dir = True
            # link + unlink, not rename: see FS.move
            for d in self._dirs:
                dst = f"{d}/queued/{name}"
                fs.link(tmp, dst)
                linked.append(dst)
            fs.unlink(tmp)
            done.append(ident)
        return index_dir

    def abort(self) -> None:
        """Drop every uncommitted message."""
        for tmp, _, _, fd in self.pending:
            if fd >= 0:
                self.fs.close(fd)
            self.fs.unlink_quiet(tmp)
        self.pending = []
