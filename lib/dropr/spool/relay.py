"""The relay store: messages a client relays through this node, queued in its outbox.

    relay/<dest>/<origin>/<id>   symlink -> "<client>/<outbox name>": every relayed id, once
    out/<dest>/relayed           empty: a relayed message was queued for dest (its sender then
                                 reads the origin o= of its sent/ entries for receipt polls)

A relayed message is written to tmp/ as a new outbox file: the header it came with,
o= set to its first origin (the header's, or the client) and h= to its hops plus one,
every other field kept (id, channel, priority, creation, the original deadline, size,
the end-to-end checksum, key), then the payload, checked against that checksum by the
upload parser. A relay never rewrites a payload.

Transition ``relay`` (Relays.store; a row of the spool's state table), under
lock/relay-<dest>.lock: make the index entry of each (EEXIST: the same client's is a
duplicate, another client's a loop, unless its outbox entry is in no state: a crash
leftover, replaced); sync 1 (the data, the index entries); link tmp/F to
out/<dest>/queued/N and unlink tmp/F; wake the sender; sync 2 (queued/); answer stored.
The relay/ folder is made at the first relayed message (older spools have none).
"""

from __future__ import annotations

import os
import time

from .. import message as m
from ..config import MEMBER_SEP
from ..protocol import DEAD, DUPLICATE, PENDING, PROCESSED, REFUSED, STORED, UNKNOWN
from ._fs import DirectWriter, read_json
from ._layout import DIRECT_MIN, SYNC_EACH_MAX, TTL_MARK, VIA_MARK, sorted_dirs

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from ..config import Peer
    from . import Spool
    from .inbox import Part

RELAYED_MARK = "relayed"  # out/<dest>/relayed: see above
INDEX = "relay"  # the index's top folder
TMP_TAG = "relay,"  # a relayed message's tmp name: "{pid}.{seq}.relay,{id}"
ORIGINS_CACHED = 100_000  # the sender keeps this many sent/ entries' origins (then starts over)
MEMBERS_TTL = 10.0  # a destination's group members are listed again after this (seconds)
LOOKUP_ORDER = ("processed", "dead", "sent", "queued")  # an entry mid-move is in two: the later wins
Item = tuple[str, m.Header]  # a relayed file in tmp/ (new header, payload), the header received
New = tuple[int, str, str]  # the item's index, its tmp file, its outbox name


class Relays:
    """The relay/ index and the relayed entries of one spool's outbox."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.fs = spool.fs
        self.root = spool.path(INDEX)
        self._made: set[str] = set()  # index folders known to exist
        self._last = 0  # the last arrival time given (µs): each name of this process is new
        self._members: dict[str, tuple[float, list[str]]] = {}  # dest -> (listed at, its members)
        self._origins: dict[str, str] = {}  # outbox name -> its o= (a name is never reused)

    # -- writing -------------------------------------------------------------------

    def open(self, client: str, hdr: m.Header) -> Part:
        """Start a relayed message's outbox file in tmp/, its new header written; the caller
        appends the payload (the upload parser checks it against the header's checksum)."""
        from .inbox import Part

        new = m.Header(
            hdr.ident, hdr.channel, hdr.priority, hdr.created, hdr.deadline, hdr.size, hdr.crc,
            key=hdr.key, origin=hdr.origin or client, hops=hdr.hops + 1,
        )  # fmt: skip
        path = self.sp.tmp_name(f"{TMP_TAG}{hdr.ident}")
        if hdr.size >= DIRECT_MIN:
            big = DirectWriter(path, self.fs)
            part = Part(path, -1, False, self.fs, big)
        else:
            part = Part(path, self.fs.create(path), False, self.fs)
        try:
            part.write(new.pack())
        except BaseException:
            part.close()
            self.fs.unlink_quiet(path)
            raise
        return part

    def store(self, client: str, dest: Peer, items: list[Item]) -> list[tuple[str, str]]:
        """Queue relayed files for dest durably; return (STORED, DUPLICATE or REFUSED, reason)
        for each. Every file not queued is removed."""
        results = [(STORED, "")] * len(items)
        if not items:
            return results
        with self.fs.lock(self.sp.path("lock", f"relay-{dest.name}.lock")):
            queued = f"{self.sp.outbox.peer_dir(dest)}/queued"
            new, dirs = self._index(client, dest.name, items, results)
            if not new:
                return results
            dirs |= self._mark(dest.name, RELAYED_MARK)
            if any(items[i][1].deadline for i, _, _ in new):  # the sender expires them while backed off
                dirs |= self._mark(dest.name, TTL_MARK)
            self._sync_data([tmp for _, tmp, _ in new], dirs)
            with self.sp.usage.batch():  # a quota's total: one update (usage.py)
                for _, tmp, name in new:
                    self.fs.move(tmp, f"{queued}/{name}")  # link + unlink: see FS.move
            self.sp.wakeups.wake_sender([dest.name])  # before the fsync of queued/, as PutBatch.commit
            if dest.hold:  # fetched, not pushed: wake the fetches held for it
                self.sp.wakeups.wake_fetchers(dest.name)
            self.sp.sync(dirs=[queued])
        return results

    def _index(
        self, client: str, dest: str, items: list[Item], results: list[tuple[str, str]]
    ) -> tuple[list[New], set[str]]:
        """Make the index entry of each new message; return them, and the folders to sync.
        The others' files go, their results set (duplicate, or refused: a loop)."""
        new: list[New] = []
        dirs: set[str] = set()
        seen: set[tuple[str, str]] = set()
        for i, (tmp, hdr) in enumerate(items):
            origin = hdr.origin or client
            folder = self._dir(dest, origin)
            name = m.out_name(hdr.priority, self._arrival(), hdr.ident)
            if (origin, hdr.ident) in seen:
                answer: tuple[str, str] | None = (DUPLICATE, "")  # twice in one request
            else:
                answer = self._entry(client, dest, origin, hdr.ident, f"{client}/{name}")
            if answer is not None:
                self.fs.unlink_quiet(tmp)
                results[i] = answer
                continue
            seen.add((origin, hdr.ident))
            new.append((i, tmp, name))
            dirs.add(folder)
        return new, dirs

    def _entry(self, client: str, dest: str, origin: str, ident: str, target: str) -> tuple[str, str] | None:
        """Make one index entry; None if made, else the answer (duplicate, or a loop)."""
        link = f"{self.root}/{dest}/{origin}/{ident}"
        try:
            self.fs.symlink(target, link)
            return None
        except FileExistsError:
            pass
        owner, _, name = _target(link)
        if self.where(dest, name) is None:  # a crash before its link into queued/: replace it
            self.fs.unlink(link)
            self.fs.symlink(target, link)
            return None
        if owner == client:
            return DUPLICATE, ""
        node = self.sp.node
        return REFUSED, f"loop: {node} has relayed {origin}'s message {ident} before, from {owner}"

    def _dir(self, dest: str, origin: str) -> str:
        folder = f"{self.root}/{dest}/{origin}"
        if folder not in self._made:
            self.fs.mkdirs(folder)  # each new folder made durable in its parent
            self._made.add(folder)
        return folder

    def _arrival(self) -> int:
        t = m.now_us()
        self._last = t = t if t > self._last else self._last + 1
        return t

    def _mark(self, dest: str, mark: str) -> set[str]:
        """Mark dest's outbox (RELAYED_MARK, TTL_MARK); return the folder to sync if new."""
        folder = f"{self.sp.outbox.base}/{dest}"
        path = f"{folder}/{mark}"
        if os.path.exists(path):
            return set()
        try:
            self.fs.close(self.fs.create(path))
        except FileExistsError:
            pass
        return {folder}

    def _sync_data(self, files: list[str], dirs: set[str]) -> None:
        """Sync 1: the data of the new files and their index entries (one syncfs for many)."""
        if len(files) > SYNC_EACH_MAX:
            self.sp.sync(many=True)
            return
        fds = [self.fs.open_sync(f) for f in files]
        try:
            self.sp.sync(fds=fds, dirs=sorted(dirs))
        finally:
            for fd in fds:
                self.fs.close(fd)

    # -- lookups -------------------------------------------------------------------

    def where(self, dest: str, name: str) -> tuple[str, str] | None:
        """Return (outbox folder, state) of a relayed entry: dest's, or one of its group
        members' (a group's sender moves its messages there); None if in no state."""
        base = self.sp.outbox.base
        for fresh in (False, True):  # a member made since the last listing: list them again
            for folder in self._folders(dest, fresh):
                for state in LOOKUP_ORDER:
                    if os.path.lexists(f"{base}/{folder}/{state}/{name}"):
                        return folder, state
        return None

    def _folders(self, dest: str, fresh: bool) -> list[str]:
        """Return dest's outbox folder and its group members' (listed at most every MEMBERS_TTL
        unless fresh)."""
        now = time.monotonic()
        cached = self._members.get(dest)
        if fresh or cached is None or now - cached[0] > MEMBERS_TTL:
            prefix = dest + MEMBER_SEP
            members = [f for f in sorted_dirs(self.sp.outbox.base) if f.startswith(prefix)]
            cached = self._members[dest] = (now, members)
        return [dest, *cached[1]]

    def status(self, client: str, dest: str, origin: str, ident: str) -> tuple[str, str]:
        """Return the receipt state of a message client relayed for dest: pending (queued or
        sent on), processed, dead (with why), or unknown (never relayed for this client)."""
        try:
            owner, _, name = _target(f"{self.root}/{dest}/{origin}/{ident}")
        except (OSError, ValueError):
            return UNKNOWN, ""
        found = self.where(dest, name) if owner == client else None
        if found is None:
            return UNKNOWN, ""
        folder, state = found
        if state == "processed":
            return PROCESSED, ""
        if state == "dead":
            meta = read_json(f"{self.sp.outbox.base}/{folder}/meta/{ident}")
            return DEAD, str(meta.get("error", ""))
        return PENDING, ""

    def via(self, folder: str) -> str | None:
        """Return the relay an outbox folder's peer was reached through (out/P/via), or None."""
        try:
            with open(f"{self.sp.outbox.base}/{folder}/{VIA_MARK}", encoding="utf-8") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def marked(self, folder: str) -> bool:
        """Return whether a relayed message was ever queued for an outbox folder (or its group)."""
        base = self.sp.outbox.base
        if os.path.exists(f"{base}/{folder}/{RELAYED_MARK}"):
            return True
        group, sep, _ = folder.rpartition(MEMBER_SEP)
        return bool(sep) and os.path.exists(f"{base}/{group}/{RELAYED_MARK}")

    def poll_origins(self, folder: str, names: list[str]) -> tuple[list[str], list[str] | None]:
        """Return the sent/ names of one receipt poll with each id once (a relayed id is unique
        per origin only: the second waits for a later poll), and each one's first origin
        ("" for this node's own), read from its header; (names, None) for a folder that
        never held a relayed message (``marked``)."""
        if not self.marked(folder):
            return names, None
        kept: list[str] = []
        origins: list[str] = []
        ids: set[str] = set()
        base = f"{self.sp.outbox.base}/{folder}/sent"
        known = self._origins
        if len(known) > ORIGINS_CACHED:
            known.clear()
        for name in names:
            ident = m.split_out_name(name)[1]
            if ident in ids:
                continue
            ids.add(ident)
            kept.append(name)
            origin = known.get(name)
            if origin is None:
                origin = _origin_of(f"{base}/{name}")
                if origin is not None:  # gone meanwhile (processed): not worth keeping
                    known[name] = origin
            origins.append(origin or "")
        return kept, origins

    def note_origin(self, name: str, whole: bytes) -> None:
        """Keep the first origin of an outbox entry, read from its header (whole: the file as
        it is sent), for poll_origins: its receipt polls then read no header again."""
        known = self._origins
        if len(known) > ORIGINS_CACHED:
            known.clear()
        known[name] = _header_origin(whole[: m.HEADER_SIZE])

    # -- retention -----------------------------------------------------------------

    def purge(self, before: float) -> int:
        """Remove index entries made before ``before`` whose outbox entry is gone (purged
        after the retention, or never made: a crash leftover); return how many went."""
        removed = 0
        for dest in sorted_dirs(self.root):
            with self.fs.lock(self.sp.path("lock", f"relay-{dest}.lock")):  # no store midway
                for origin in sorted_dirs(f"{self.root}/{dest}"):
                    removed += self._purge_origin(dest, f"{self.root}/{dest}/{origin}", before)
        return removed

    def _purge_origin(self, dest: str, folder: str, before: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return 0
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_mtime >= before:
                    continue
                _, _, name = _target(e.path)
            except (OSError, ValueError):
                continue
            if self.where(dest, name) is None:
                self.fs.unlink_quiet(e.path)
                removed += 1
        return removed


def _target(link: str) -> tuple[str, str, str]:
    """Return (client, "/", outbox name) of an index entry; OSError if there is none."""
    return os.readlink(link).partition("/")


def _origin_of(path: str) -> str | None:
    """Return the o= of an outbox file's header, "" if it has none, None if it is gone."""
    try:
        with open(path, "rb") as f:
            raw = f.read(m.HEADER_SIZE)
    except OSError:
        return None
    return _header_origin(raw)


def _header_origin(raw: bytes) -> str:
    """Return the o= of a raw header, "" if it has none."""
    at = raw.find(b" o=")
    if at < 0:
        return ""
    end = raw.find(b" ", at + 3)
    return raw[at + 3 : end].decode("ascii", "replace")
