"""The inbox's receiving side: the one store path, the rcv/ index, lookups and receipts.

Every writer stores through here: ``open_part`` makes the file one message's payload
is written to (and chooses how: its rcv/ entry, a tmp file, or past the page cache
for a large one), ``store`` commits them, ``unreceive`` drops a refused one.
"""

from __future__ import annotations

import errno
import os

from .. import log as _log
from .. import message as m
from ..protocol import DEAD, DUPLICATE, PENDING, PROCESSED, STORED, UNKNOWN
from ._fs import DirectWriter, read_json
from ._layout import (
    DIRECT_MIN,
    FIND_ORDER,
    IN_STATES,
    SYNC_EACH_MAX,
    message_names,
    sorted_dirs,
    sorted_names,
)

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from . import Spool
    from ._fs import FS, Flock

Item = tuple[str, m.Header, int]  # a received file: path, header, fd of an entry or -1
New = tuple[str, str, str, int]  # a new message: file, channel, inbox name, fd or -1
log = _log.get(__name__)
RCV_TAG = "rcv,"  # a received message's tmp name: "{pid}.{seq}.rcv,{origin},{id}"


class Part:
    """The file one received message's payload is being written to (Inbox.open_part)."""

    __slots__ = ("path", "fd", "entry", "fs", "big")

    def __init__(self, path: str, fd: int, entry: bool, fs: FS, big: DirectWriter | None = None) -> None:
        self.path = path
        self.fd = fd  # -1 for a DirectWriter's file
        self.entry = entry  # written as its rcv/ entry: fd stays open until the store is done
        self.fs = fs
        self.big = big

    def write(self, data: bytes | memoryview) -> None:
        """Append payload bytes."""
        if self.big is None:
            self.fs.write_all(self.fd, data)
        else:
            self.big.write(data)

    def close(self) -> None:
        """Finish writing (not synced: the store syncs). An entry's descriptor stays open
        (fd) for store() and unreceive(); its owner closes it after."""
        if self.big is not None:
            big, self.big = self.big, None
            big.close()
        elif self.fd >= 0 and not self.entry:
            fd, self.fd = self.fd, -1
            self.fs.close(fd)


class Sums:
    """Keeps the checked checksum and size of each new message with its file, for dropr-ls
    --verify (an inbox file is the payload alone): Inbox._index, before sync 1, which makes
    it durable with the data. Never fails a store: a filesystem without user extended
    attributes (or a full one) keeps none, said once, and --verify counts those unchecked."""

    __slots__ = ("fs", "on", "said")

    def __init__(self, fs: FS) -> None:
        self.fs = fs
        self.on = True  # the filesystem keeps extended attributes
        self.said = False  # that it does not was logged

    def keep(self, path: str, fd: int, hdr: m.Header) -> None:
        """Keep hdr's k and s with a new message's file (by fd when open, else by path)."""
        if not self.on:
            return
        try:
            # by descriptor where the entry's is open (no path lookup: 1 µs of the 3-4 a call takes)
            self.fs.set_sum(fd if fd >= 0 else path, b"k=%08x s=%d" % (hdr.crc, hdr.size))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                self.on = False  # the filesystem has none: stop asking
            if not self.said:
                self.said = True
                log.warning(
                    "checksums not kept path=%s reason=%s (dropr-ls --verify counts these unchecked)",
                    path, exc.strerror or exc,
                )  # fmt: skip


def _look(root: str, channel: str, name: str, prefix: str) -> tuple[str, str, str, int] | None:
    """Return (channel, state, name, created) of an inbox name in the first state that has it."""
    for state in FIND_ORDER:
        if os.path.lexists(f"{root}/in/{channel}/{state}/{name}"):
            return channel, state, name, m.prefix_time(prefix)
    return None


def _find_generated(
    root: str, origin: str, ident: str, prefix: str, channels: list[str]
) -> tuple[str, str, str, int] | None:
    """Look a generated id up by the name its prefix gives, in the states of channels, with no
    readlink of its rcv/ entry first (Inbox.find): a status poll's, which most find in done/."""
    if not (prefix and prefix.endswith(ident[:13]) and m.generated_time(ident)):
        return None
    name = m.in_name_of(prefix, origin, ident)
    for ch in channels:
        if found := _look(root, ch, name, prefix):
            return found
    return None


class Inbox:
    """The in/ and rcv/ folders of one spool, as the receiver sees them."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.fs = spool.fs
        self.root = spool.root
        self._made: set[str] = set()  # folders known to exist
        self._sums = Sums(spool.fs)

    def channel_dir(self, channel: str) -> str:
        """Return (creating it the first time) the inbox folder of a channel."""
        d = f"{self.root}/in/{channel}"
        if d in self._made:
            return d
        if not os.path.isdir(f"{d}/meta"):
            for s in (*IN_STATES, "meta"):
                self.fs.mkdirs(os.path.join(d, s))
        self._made.add(d)
        return d

    def _rcv_dir(self, origin: str) -> str:
        rcv = f"{self.root}/rcv/{origin}"
        if rcv not in self._made:
            self.fs.mkdirs(rcv)
            self._made.add(rcv)
        return rcv

    # -- lookups ----------------------------------------------------------------

    def find(
        self,
        origin: str,
        ident: str,
        *,
        prefix: str = "",
        channel: str = "",
        channels: list[str] | None = None,
    ) -> tuple[str, str, str, int] | None:
        """Return (channel, state, name, created) of a received message, or None.

        Every received id has an entry in rcv/<origin>/: a symlink to "{channel}/{prefix}"
        for a caller-chosen id, a hard link of the message itself for a generated one,
        whose name is "{p}{time in the id},{origin},{id}". No entry: never received (or
        purged). Prefix and channel, when known (the sender's name in a status poll),
        narrow the search to one name per state; channels, a listing of the inbox
        channels that the caller keeps over many lookups. Two passes, because a message
        that moves back (claimed to ready) between two stats of one pass would be missed.
        """
        if channels is not None and (found := _find_generated(self.root, origin, ident, prefix, channels)):
            return found
        try:
            target = os.readlink(f"{self.root}/rcv/{origin}/{ident}")
            channel, _, prefix = target.partition("/")
            places = [(channel, prefix)]
        except OSError as exc:
            t = m.generated_time(ident)
            if exc.errno != errno.EINVAL or t is None:
                return None  # no entry (EINVAL: a hard link, so a generated id)
            prefixes = [prefix] if prefix.endswith(ident[:13]) else [f"{p}{t:013x}" for p in range(10)]
            chans = [channel] if channel else channels if channels is not None else self.channels()
            places = [(ch, pre) for ch in chans for pre in prefixes]
        for _ in range(2):
            for ch, pre in places:
                found = _look(self.root, ch, m.in_name_of(pre, origin, ident), pre)
                if found is not None:
                    return found
        return None

    def status(
        self, origin: str, ident: str, prefix: str = "", channels: list[str] | None = None
    ) -> tuple[str, str]:
        """Return the receipt state of a received message: processed, dead, pending, unknown."""
        found = self.find(origin, ident, prefix=prefix, channels=channels)
        if found is None:
            return UNKNOWN, ""
        channel, state, name, _ = found
        if state == "done":
            return PROCESSED, ""
        if state == "dead":
            return DEAD, str(self.meta(channel, origin, ident).get("error", ""))
        return PENDING, ""

    def origins(self) -> list[str]:
        """Return the nodes this spool has received messages from."""
        return sorted_names(f"{self.root}/rcv")

    def channels(self) -> list[str]:
        """Return the names of all inbox channels."""
        return sorted_dirs(f"{self.root}/in")

    def names(self, channel: str, state: str, *, strays: list[str] | None = None) -> list[str]:
        """Return the sorted message names in one inbox state of a channel; other files
        there are moved to corrupt/, or listed in strays and left, as Outbox.names does."""
        folder = f"{self.root}/in/{channel}/{state}"
        names, bad = message_names(folder, "in")
        if bad:
            self.sp.retention.strays(folder, bad, strays)
        return names

    def meta(self, channel: str, origin: str, ident: str) -> dict[str, Any]:
        """Return the attempt record of one inbox message."""
        return read_json(f"{self.root}/in/{channel}/meta/{origin},{ident}")

    # -- receiving --------------------------------------------------------------

    def open_part(self, origin: str, hdr: m.Header, *, entry: bool = True) -> Part:
        """Open the file a received message's payload goes into, chosen by its size: past
        the page cache (DirectWriter) from DIRECT_MIN on, else as receive_file does."""
        if hdr.size >= DIRECT_MIN:
            path = self.rcv_tmp_name(origin, hdr.ident)
            return Part(path, -1, False, self.fs, DirectWriter(path, self.fs))
        return Part(*self.receive_file(origin, hdr, entry=entry), self.fs)

    def receive_file(self, origin: str, hdr: m.Header, *, entry: bool = True) -> tuple[str, int, bool]:
        """Create the file an upload's payload goes into; return (path, fd, written as entry).

        With entry, a generated id's payload is written straight into its rcv/ index
        entry, the name store() would otherwise link it to: two names fewer to make and
        unlink per message. The entry is created with O_EXCL, so an id received before,
        or being received by another request, gets a tmp file instead, which store()
        sorts out under the lock as it does every tmp file. The caller keeps the
        descriptor of an entry open until store() or unreceive() is done with it: it
        pins the inode, which is how they tell whether the entry is still this upload's
        (a resend that finds an entry unstored takes it over).
        """
        if entry and m.generated_time(hdr.ident) == hdr.created:
            path = f"{self._rcv_dir(origin)}/{hdr.ident}"
            try:
                return path, self.fs.create(path), True
            except FileExistsError:
                pass
        path = self.rcv_tmp_name(origin, hdr.ident)
        return path, self.fs.create(path), False

    def rcv_tmp_name(self, origin: str, ident: str) -> str:
        """Return a fresh tmp/ path for a received message (the tmp sweep reads the name)."""
        return self.sp.tmp_name(f"{RCV_TAG}{origin},{ident}")

    @staticmethod
    def rcv_tmp_id(name: str) -> tuple[str, str] | None:
        """Return (origin, id) of a tmp/ name made by rcv_tmp_name, or None for another."""
        if f".{RCV_TAG}" not in name:
            return None
        _, origin, ident = name.split(",", 2)
        return origin, ident

    def unreceive(self, origin: str, path: str, fd: int = -1) -> bool:
        """Remove the file of a refused or failed upload part; fd: an entry's, still open.

        An rcv/ entry is removed under the origin's lock, and only while it is still
        this part's file and in no inbox state: if a resend took the entry over, or a
        failed store got it into ready/ first, it is not ours to drop.
        """
        if fd < 0:
            self.fs.unlink_quiet(path)
            return True
        return self.drop_entry(origin, path, os.fstat(fd).st_ino)

    def drop_entry(self, origin: str, path: str, ino: int, untouched_since: float | None = None) -> bool:
        """Unlink an rcv/ entry under the origin's lock if it is still inode ino, in no inbox
        state (one link) and, with untouched_since, not written since; return whether it went."""
        with self._lock(origin):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return False
            if st.st_ino != ino or st.st_nlink != 1:
                return False
            if untouched_since is not None and st.st_mtime >= untouched_since:
                return False
            self.fs.unlink(path)
            return True

    def _lock(self, origin: str) -> Flock:
        """The lock of one origin's received ids: stores, and removals of their entries."""
        return self.fs.lock(f"{self.root}/lock/rcv-{origin}.lock")

    # -- the store --------------------------------------------------------------

    def store(self, origin: str, items: list[Item]) -> list[str]:
        """Commit received files into the inbox; return STORED or DUPLICATE for each.

        ``items`` are (path, header, fd) made by open_part or receive_file, with the
        payload already written and checked; fd is the open descriptor of a file written
        as its rcv/ entry, -1 for a tmp file (closed); the caller closes them after.
        Under the origin's lock: index the new ones, sync their data and index entries,
        link them into ready, wake their consumers, sync ready. So no message is in the
        inbox before its index entry is durable, and no duplicate is answered before the
        first copy is durable. Sync 1 is fsync of each file and of rcv/ for a few new
        messages (a syncfs would flush every other writer's data too: a worse tail
        latency), one syncfs for a batch; sync 2 fsyncs the ready/ folders touched.

        Consumers are woken before sync 2, so that their wake-up (0.25 ms on an idle
        CPU) overlaps the fsync of ready/ (0.2 ms). What they may claim meanwhile has
        its data and its index entry durable: if the ready/ name is lost in a crash,
        the sender, which got no answer, resends, and the resend finds the index entry
        and stores it again, or answers duplicate if a consumer had moved it on.
        """
        if not items:
            return []
        rcv = self._rcv_dir(origin)
        results: list[str] = []
        touched: set[str] = set()  # channels whose ready/ got a name
        with self._lock(origin):
            try:
                new = self._index(origin, items, rcv, results)
                if new:
                    self._sync_data(new, rcv)
                with self.sp.usage.batch():  # a quota's total: one update (usage.py)
                    self._link_ready(new, touched)
            finally:
                for channel in touched:  # before sync 2: see above
                    self.sp.wakeups.wake_consumers(channel)
                # sync 2, even after a failure midway: whatever is in ready/ must be
                # durable before the lock lets a resend see it and answer "duplicate"
                if touched:
                    self.sp.sync(dirs=[f"{self.root}/in/{ch}/ready" for ch in touched])
        return results

    def _sync_data(self, new: list[New], rcv: str) -> None:
        """Sync 1: the data and index entries of new messages, before any name in ready/."""
        many = len(new) > SYNC_EACH_MAX
        opened = [] if many else [self.fs.open_sync(f) for f, _, _, fd in new if fd < 0]
        try:
            self.sp.sync(fds=opened + [fd for _, _, _, fd in new if fd >= 0], dirs=[rcv], many=many)
        finally:
            for fd in opened:
                self.fs.close(fd)

    def _link_ready(self, new: list[New], touched: set[str]) -> None:
        """Give each new message its name in ready/; add its channel to touched."""
        for f, channel, name, fd in new:
            ready = f"{self.root}/in/{channel}/ready"
            if fd >= 0:  # written as its index entry, which stays
                self.fs.link(f, f"{ready}/{name}")
            else:
                self.fs.move(f, f"{ready}/{name}")
            touched.add(channel)

    def _index(self, origin: str, items: list[Item], rcv: str, results: list[str]) -> list[New]:
        """Make the rcv/ entry of each new message; return (file, channel, name, fd) of those."""
        new: list[New] = []
        made: set[str] = set()
        for tmp, hdr, fd in items:
            # Inbox names sort by the origin's creation time, not by arrival here, so
            # the order is the same whichever of several concurrent batches lands first.
            name = m.in_name(hdr.priority, hdr.created, origin, hdr.ident)
            prefix = m.split_in_name(name)[0]
            if fd >= 0:  # written as its own rcv/ entry (receive_file): is the entry still it?
                # Its only name until this store links it into ready/ is the entry; a resend
                # that took the entry over unlinked it. So one link left means still ours.
                if os.fstat(fd).st_nlink != 1:
                    # A resend found the entry unstored and took it over, so this file
                    # has no name left. That resend's store ran under this lock first.
                    if self.find(origin, hdr.ident, prefix=prefix) is None:
                        raise OSError(errno.EAGAIN, "another upload of this id failed midway")
                    results.append(DUPLICATE)
                    continue
            elif not self._make_entry(origin, tmp, hdr, f"{rcv}/{hdr.ident}", prefix, made):
                results.append(DUPLICATE)
                continue
            made.add(hdr.ident)
            self._sums.keep(tmp, fd, hdr)
            self.channel_dir(hdr.channel)  # made before sync 1, so its folders are durable too
            new.append((tmp, hdr.channel, name, fd))
            results.append(STORED)
        return new

    def _make_entry(
        self, origin: str, tmp: str, hdr: m.Header, link: str, prefix: str, made: set[str]
    ) -> bool:
        """Make the rcv/ entry of a tmp file; False (and the file gone) for a duplicate.

        The index entry is the duplicate check: one link(2) that fails if the id was
        received before, in any channel and state (no stat of every state). dropr-put's
        own ids carry their creation time, so their entry is a hard link of the message
        (no inode to allocate); other ids need a symlink that says where the message went.
        """
        target = "" if m.generated_time(hdr.ident) == hdr.created else f"{hdr.channel}/{prefix}"
        try:
            self._entry(tmp, link, target)
        except FileExistsError:
            # indexed earlier in this request (not yet in ready), or received before
            if hdr.ident in made or self.find(origin, hdr.ident, prefix=prefix) is not None:
                self.fs.unlink(tmp)
                return False
            # a leftover of a crash before the link into ready, or an upload of
            # this id written as its entry that is still unstored: take it over
            self.fs.unlink(link)
            self._entry(tmp, link, target)
        return True

    def _entry(self, tmp: str, link: str, target: str) -> None:
        """Create a received id's rcv/ entry: a symlink to target, or a hard link of tmp."""
        if target:
            self.fs.symlink(target, link)
        else:
            self.fs.link(tmp, link)
