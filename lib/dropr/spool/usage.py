"""The spool's usage: a running total of the bytes of live messages, for limits.quota.

Live is a state still to deliver or consume (LIVE: queued, sent, ready, wait, claimed).
The total is the payload bytes of every name in a live state folder, which is what
report.spool_bytes sums by reading every one (seconds at a million messages); dropr-put
compares it with the quota instead. Only a spool whose config sets a quota keeps it:
without one, nothing here is imported or run, and dropr-put pays nothing.

The record, ``usage`` in the spool root, is one line ``TOTAL OPENS CLOSES BOOT``,
rewritten in place under flock(2) of its own file. It is kept at the I/O seam: the
Spool of a quota has a GuardedFS, whose rename, link and unlink under out/ and in/
count what they do to live names (+ the size of a name made in a live folder, - of
one removed from it, a rename between a live folder and another both), so that no
transition, present or future, can forget to count. They count in a *window*:

    enter   flock(lock/usage.lock, SH)
    arm     OPENS += 1                  before the first call that changes the total
    calls   each adds what it did to the window's delta (lstat of the file, no more)
    exit    TOTAL += delta; CLOSES += 1 if armed; unlock

A call outside a window is a window of its own; the busy transitions (a put's commit,
a store, the sender's moves, a relay's store) open one for all their calls (Usage.batch).
A rename between two live folders (claim, release, due) changes nothing: it only holds
the lock shared, as every guarded call does, so that a rebuild, which holds it
exclusively, sees no name change while it counts.

What a crash can do, and the repair (check: every daemon's purge_if_due, at its start
and every PURGE_CHECK seconds; dropr-send --once's purge; Usage.used when there is no
record):

- kill -9 in an armed window: calls may have been made and not added, so OPENS > CLOSES
  stays, and no process holds the lock. check sees OPENS != CLOSES, takes the lock
  exclusively (every window still open ends first; a crashed one holds nothing) and
  rebuilds: TOTAL = the count of every live name, CLOSES = OPENS. So one crash costs
  one scan, within a minute, and errors never add up from one crash to the next.
  A call that fails with an error other than "gone" or "exists" leaves its window open
  the same way: whether it happened is unknown.
- A power loss or a kernel crash: the record is never fsynced (a write per window, no
  disk wait), so it may come back older than the names. It keeps the boot id of the
  kernel that last rebuilt it: after a reboot, check rebuilds.
- No record (a new quota, a record a daemon without a quota removed, an unreadable
  one): the first process that needs the total rebuilds it.
- A process whose config has no quota counts nothing: a daemon without a quota removes
  the record (NoUsage.check), so that it is counted anew once a quota is set. The
  processes of a spool must agree: restart the daemons after changing limits.quota.

A rebuild holds every live-name change of the spool off while it counts (seconds at a
million messages); only a crash, a reboot or a new quota cause one.
"""

from __future__ import annotations

import fcntl
import os
from _thread import _local  # threading.local, without importing threading (1 ms)

from .. import message as m
from . import NO_WINDOW, NoWindow
from ._fs import FS
from ._layout import stray_test

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable

    from . import Spool

LIVE = frozenset(("queued", "sent", "ready", "wait", "claimed"))  # still to deliver or consume
RECORD = "usage"  # in the spool root
LOCK = "usage.lock"  # in lock/: windows and guarded calls shared, a rebuild exclusive
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """Return the running kernel's boot id ("-" where there is none)."""
    try:
        with open(BOOT_ID, "rb") as f:
            return f.read().strip().decode("ascii", "replace") or "-"
    except OSError:
        return "-"


class Record:
    """The counter's fields: the total, the windows opened and closed, the boot id."""

    __slots__ = ("total", "opens", "closes", "boot")

    def __init__(self, total: int = 0, opens: int = 0, closes: int = 0, boot: str = "-") -> None:
        self.total, self.opens, self.closes, self.boot = total, opens, closes, boot

    @classmethod
    def parse(cls, raw: bytes) -> Record | None:
        """Parse a record; None for an empty or unreadable one."""
        fields = raw.split()
        if len(fields) != 4:
            return None
        try:
            return cls(int(fields[0]), int(fields[1]), int(fields[2]), fields[3].decode("ascii"))
        except ValueError:
            return None

    def pack(self) -> bytes:
        """One line of fixed width: a rewrite in place covers the whole of the last one."""
        return b"%020d %020d %020d %-36s\n" % (self.total, self.opens, self.closes, self.boot.encode()[:36])


class Usage:
    """The running total of one spool with a quota (see the module docstring)."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.path = spool.path(RECORD)
        self.lock = spool.path("lock", LOCK)
        self.mode = spool.fs.file_mode
        self.local = _local()  # .window: the thread's window (batch), None outside one

    # -- the record ---------------------------------------------------------------

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)

    def read(self) -> Record | None:
        """Return the record (None: missing or unreadable), read under a shared lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return Record.parse(os.pread(fd, 128, 0))
        finally:
            os.close(fd)

    def change(self, delta: int = 0, opens: int = 0, closes: int = 0) -> None:
        """Add to the record's fields under its lock (a missing record is left missing)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # the next process that needs the total counts it whole
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            rec = Record.parse(os.pread(fd, 128, 0))
            if rec is None:
                return  # unreadable: rebuilt by the next check or use
            rec.total += delta
            rec.opens += opens
            rec.closes += closes
            os.pwrite(fd, rec.pack(), 0)
        finally:
            os.close(fd)

    def write(self, rec: Record) -> None:
        """Replace the record (a rebuild, under the exclusive lock)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = rec.pack()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    # -- what callers use ---------------------------------------------------------

    def used(self) -> int:
        """Return the bytes of live messages: the record's total, counted whole if missing."""
        rec = self.read()
        if rec is None:
            rec = self.rebuild(force=False)
        return rec.total

    def batch(self) -> Window | NoWindow:
        """Return a window for every guarded call of this thread in a with block (one
        record update for a batch, not one per call); nested: a window that does nothing."""
        if getattr(self.local, "window", None) is not None:
            return NO_WINDOW
        return Window(self, current=True)

    def check(self) -> bool:
        """Rebuild the record if a crash, a reboot or a missing record may have made it
        wrong (see the module docstring); return whether it did. Windows keep opening on
        a busy spool, and flock(2) lets shared holders overtake a waiting exclusive one:
        the lock is tried for up to CHECK_WAIT seconds, then left to the next check."""
        rec = self.read()
        if rec is not None and rec.opens == rec.closes and rec.boot == boot_id():
            return False
        return self._rebuild(force=False, wait=CHECK_WAIT)[1]

    def rebuild(self, *, force: bool = True) -> Record:
        """Count the live states whole, with every live-state change of the spool held
        off, and write the record; unless force, keep a record found sound under the lock."""
        rec = self._rebuild(force=force, wait=None)[0]
        assert rec is not None
        return rec

    def _rebuild(self, *, force: bool, wait: float | None) -> tuple[Record | None, bool]:
        """rebuild, waiting for the lock for ever (wait None) or up to wait seconds;
        return the record (None: the lock was busy) and whether it was counted anew."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            if not _exclusive(fd, wait):
                return None, False
            boot = boot_id()  # every window has ended, none starts, no name changes
            rec = self.read()
            if not force and rec is not None and rec.opens == rec.closes and rec.boot == boot:
                return rec, False
            opens = rec.opens if rec is not None else 0
            rec = Record(count(self.sp), opens, opens, boot)
            self.write(rec)
            return rec, True
        finally:
            os.close(fd)


CHECK_WAIT = 2.0  # seconds a check tries for the exclusive lock


def _exclusive(fd: int, wait: float | None) -> bool:
    """Take flock(fd) exclusively, waiting for ever or trying for up to wait seconds."""
    if wait is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    import time

    end = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)


class Window:
    """The record updates of one or more guarded calls (see the module docstring)."""

    __slots__ = ("usage", "fd", "delta", "armed", "unsure", "current")

    def __init__(self, usage: Usage, *, current: bool = False) -> None:
        self.usage = usage
        self.fd = -1
        self.delta = 0
        self.armed = False
        self.unsure = False  # a call failed halfway: leave the window open for check
        self.current = current  # the thread's window for its guarded calls (Usage.batch)

    def __enter__(self) -> Window:
        u = self.usage
        self.fd = os.open(u.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, u.mode)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(self.fd)
            raise
        if self.current:
            u.local.window = self
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.current:
                self.usage.local.window = None
            if self.armed and not self.unsure:
                self.usage.change(self.delta, closes=1)
        finally:
            os.close(self.fd)

    def call(self, op: Callable[[], None], size: str, header: int, sign: int) -> None:
        """Make a guarded call that changes the total by sign * (size's payload bytes)."""
        if not self.armed:
            self.usage.change(opens=1)
            self.armed = True
        try:
            n = os.lstat(size).st_size - header
        except FileNotFoundError:
            n = None
        try:
            op()
        except (FileNotFoundError, FileExistsError):
            raise  # nothing was done
        except BaseException:
            self.unsure = True
            raise
        if n is not None:
            self.delta += sign * n


class GuardedFS(FS):
    """The real FS, whose rename, link and unlink under out/ and in/ count what they do
    to live names in the spool's usage, each under lock/usage.lock shared."""

    def __init__(self, root: str, modes: tuple[int, int]) -> None:
        super().__init__(modes)
        self.usage: Usage | None = None  # set by the Spool once made
        self.cut = len(root) + 1
        self.guarded = (f"{root}/out/", f"{root}/in/")

    def _header(self, path: str) -> int:
        """Return the header size of a live message at path (out 256, in 0), -1 if none."""
        parts = path[self.cut :].split("/")
        if len(parts) != 4 or parts[2] not in LIVE or stray_test(parts[0], 1)(parts[3]):
            return -1
        return m.HEADER_SIZE if parts[0] == "out" else 0

    def _do(self, op: Callable[[], None], size: str, header: int, sign: int) -> None:
        """Make a guarded call in this thread's window, or in one of its own."""
        usage = self.usage
        assert usage is not None
        w = getattr(usage.local, "window", None)
        if w is not None:
            if sign:
                w.call(op, size, header, sign)
            else:
                op()
            return
        with Window(usage) as w:
            if sign:
                w.call(op, size, header, sign)
            else:
                op()

    def rename(self, src: str, dst: str) -> None:
        """rename(2); between a live folder and another, counted."""
        if not (src.startswith(self.guarded) or dst.startswith(self.guarded)):
            os.rename(src, dst)
            return
        hs, hd = self._header(src), self._header(dst)
        sign = 0 if (hs < 0) == (hd < 0) else (1 if hd >= 0 else -1)
        self._do(lambda: os.rename(src, dst), src, max(hs, hd), sign)

    def link(self, src: str, dst: str) -> None:
        """link(2); into a live folder, counted."""
        if not dst.startswith(self.guarded):
            os.link(src, dst)
            return
        h = self._header(dst)
        self._do(lambda: os.link(src, dst), src, h, 1 if h >= 0 else 0)

    def unlink(self, path: str) -> None:
        """unlink(2); out of a live folder, counted."""
        if not path.startswith(self.guarded):
            os.unlink(path)
            return
        h = self._header(path)
        self._do(lambda: os.unlink(path), path, h, -1 if h >= 0 else 0)


# -- the whole count --------------------------------------------------------------


def count(spool: Spool) -> int:
    """Return the payload bytes of every name in a live state folder (one lstat a name,
    by scandir; strays, which are no messages, not counted)."""
    total = 0
    for folder in spool.out_peers():
        for state in ("queued", "sent"):
            total += _count(spool.path("out", folder, state), "out", m.HEADER_SIZE)
    for ch in spool.channels():
        for state in ("ready", "wait", "claimed"):
            total += _count(spool.path("in", ch, state), "in", 0)
    return total


def _count(folder: str, box: str, header: int) -> int:
    """Return the payload bytes of the messages in one state folder."""
    stray = stray_test(box)
    size = 0
    try:
        it = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    with it:
        for e in it:
            if stray(e.name):
                continue
            try:
                size += e.stat(follow_symlinks=False).st_size - header
            except FileNotFoundError:
                continue
    return size
