"""The spool's I/O seam: every call that changes a file or a folder of the spool.

The spool creates, writes, syncs, links, renames and unlinks through one ``FS``
object (``Spool.fs``), and nowhere else; reads (stat, listdir, readlink) are
direct. A test installs another FS (``Spool(root, fs=...)``): ``_trace.TracingFS``
records each operation with its path(s), and the path of the descriptor for
write and fsync, and can make any of them fail. A crash-state explorer replays
such a record.

The real FS's methods call ``os`` directly (one bound-method call on every path,
no more), and ``write_all`` loops on ``os.write`` itself: it is the put path's
write. The helpers built of several operations (move, mkdirs, write_json, ...)
call the primitives through ``self``, so a replacing FS sees every step.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

PRIVATE_MODES = (0o600, 0o700)  # files, folders: no other local user reads a payload (as mail queues)
GROUP_MODES = (0o640, 0o2750)  # with an operators' group (config `group`): the spool root is
# set-group-ID, so every folder and file made below it takes the group, and no chown is needed
SUM_XATTR = "user.dropr.sum"  # an inbox file's "k=<crc32> s=<size>" (FS.set_sum, dropr-ls --verify)
DIRECT_BLOCK = 1 << 20  # DirectWriter's unit: a multiple of every device's block size

_libc: Any = None


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding fd to stable storage (group commit)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def free_bytes(path: str) -> int:
    """Return the bytes available to unprivileged writers on path's filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FS:
    """The real filesystem: each method is one system call, or a named sequence of them.

    Files and folders are made with ``modes`` (file, folder), set by the Spool from its
    config (PRIVATE_MODES or GROUP_MODES): modes come from dropr, not from the umask.
    """

    def __init__(self, modes: tuple[int, int] = PRIVATE_MODES) -> None:
        self.file_mode, self.dir_mode = modes

    # -- primitives ------------------------------------------------------------

    def create(self, path: str, flags: int = os.O_EXCL) -> int:
        """Create a file for writing (O_EXCL unless flags say otherwise); return its fd."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | flags, self.file_mode)

    def open_sync(self, path: str) -> int:
        """Open a written file read-only, to fsync it; return its fd."""
        return os.open(path, os.O_RDONLY)

    def close(self, fd: int) -> None:
        """Close a descriptor from create or open_sync."""
        os.close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write once; return how many bytes went."""
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """Write at an offset; return how many bytes went."""
        return os.pwrite(fd, data, offset)

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        """Write every byte or raise: a nearly full disk may take only part of a write."""
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]

    def fsync(self, fd: int) -> None:
        """Make a file's data and size durable."""
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Make a file's data durable."""
        os.fdatasync(fd)

    def syncfs(self, path: str) -> None:
        """Make everything written on the filesystem of a folder durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        """fsync a directory so the names in it are durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        """rename(2): replaces dst."""
        os.rename(src, dst)

    def link(self, src: str, dst: str) -> None:
        """link(2): FileExistsError if dst exists."""
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        """unlink(2)."""
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        """mkdir(2) with the spool's folder mode."""
        os.mkdir(path, self.dir_mode)

    def give_to_group(self, path: str, gid: int) -> None:
        """chown(2) a folder to a group and chmod(2) it set-group-ID (GROUP_MODES)."""
        os.chown(path, -1, gid)
        os.chmod(path, GROUP_MODES[1])

    def symlink(self, target: str, path: str) -> None:
        """symlink(2): FileExistsError if path exists."""
        os.symlink(target, path)

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        """Set (atime, mtime), or both to now."""
        os.utime(path, times)

    def set_sum(self, file: int | str, value: bytes) -> None:
        """Keep a received message's checksum in its inode (the extended attribute SUM_XATTR)
        of a descriptor, else a path: it follows the file through every link and rename,
        and the file's fsync keeps it."""
        os.setxattr(file, SUM_XATTR, value)

    # -- sequences of primitives -----------------------------------------------

    def unlink_quiet(self, path: str) -> None:
        """Unlink a file that may be gone already."""
        try:
            self.unlink(path)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        """Move a file that only one process moves: link(2) then unlink(2).

        Every rename(2) between two folders takes one lock of the whole filesystem
        (s_vfs_rename_mutex), so the spool's writers, the sender and the consumers
        all queued on it: a quarter of the CPU of an end-to-end run went to renames,
        much of it spinning on that lock. A link takes only the folder's own lock.
        A crash between the two calls leaves the file under both names: the old name
        of a tmp file is swept, an outbox entry found in two states is moved again
        (the link finds the new name there and the old one goes). Not for the inbox
        states consumers race on: their claims need the atomic rename.
        """
        try:
            self.link(src, dst)
        except FileExistsError:
            if not os.path.samefile(src, dst):
                raise
        self.unlink(src)

    def mkdirs(self, path: str) -> bool:
        """Create path and missing parents, each made durable; return True if any was made.

        Parents outside the spool are created with the same mode: a spool's parent made
        for it (~/.local/state) is no one else's business either."""
        try:
            self.mkdir(path)
        except FileExistsError:
            return False
        except FileNotFoundError:
            self.mkdirs(os.path.dirname(path))
            try:
                self.mkdir(path)
            except FileExistsError:
                return False
        self.fsync_dir(os.path.dirname(path))
        return True

    def write_file(self, path: str, text: str, *, sync: bool = True, flags: int = os.O_EXCL) -> None:
        """Create path (O_EXCL, unless flags say otherwise) holding text; with sync, fsync it."""
        fd = self.create(path, flags)
        try:
            self.write_all(fd, text.encode())
            if sync:
                self.fsync(fd)
        finally:
            self.close(fd)

    def write_json(self, path: str, data: dict[str, Any], *, sync: bool = False) -> None:
        """Replace a record file: write .new, rename; with sync, durably (file, then folder).

        Records beside messages (attempts, last error, backoff) are advice, not data:
        no fsync; a crash may lose the latest count or leave an empty file, read as {}.
        A requeue's reset is synced: it must be on disk before the move it comes with.
        They may say why a payload failed: as private as the payload (file_mode).
        """
        import json

        tmp = f"{path}.{os.getpid()}.new"
        self.write_file(tmp, json.dumps(data), sync=sync, flags=os.O_TRUNC)
        self.rename(tmp, path)
        if sync:
            self.fsync_dir(os.path.dirname(path))

    def touch(self, path: str) -> None:
        """Create path if missing and set its mtime to now (a stamp file)."""
        self.close(self.create(path, 0))
        self.utime(path)

    def lock(self, path: str, *, wait: bool = True) -> Flock:
        """Return an exclusive lock on path, held in a with block."""
        return Flock(path, wait=wait, mode=self.file_mode)


def read_json(path: str) -> dict[str, Any]:
    """Read a record file; {} if it is missing or unreadable (see FS.write_json)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except FileNotFoundError:
        return {}  # the usual case: no record, and no json import for it
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class DirectWriter:
    """Write a large file past the page cache (O_DIRECT), in aligned blocks of DIRECT_BLOCK.

    On this class of VM, filling fresh page-cache pages runs at 300 MB/s while the disk
    takes direct writes at 1 GB/s; the page cache is no use to a file that is synced
    at once and read later. Data is gathered in a page-aligned buffer; the last,
    partial block goes through the page cache (O_DIRECT cleared), and fsync covers both.
    Where the filesystem refuses O_DIRECT (tmpfs), every write is a plain one.

    A direct write returns only when the disk has the block, so full blocks are written
    by a helper thread while the caller fills the other buffer: the disk's time overlaps
    with receiving and checksumming the next block. At most one block is in flight; its
    error (a full disk) is raised by the next write or by close.
    """

    __slots__ = ("fd", "fs", "buf", "spare", "fill", "direct", "_pool", "_pending")

    def __init__(self, path: str, fs: FS | None = None) -> None:
        import mmap
        from concurrent.futures import ThreadPoolExecutor

        self.fs = fs = fs if fs is not None else FS()
        try:
            self.fd = fs.create(path, os.O_EXCL | os.O_DIRECT)
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.fd = fs.create(path)
            self.direct = False
        self.buf = mmap.mmap(-1, DIRECT_BLOCK)  # anonymous memory: page-aligned
        self.spare = mmap.mmap(-1, DIRECT_BLOCK)
        self.fill = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dropr-write")  # starts at the 1st block
        self._pending: Any = None

    def write(self, data: bytes | memoryview) -> None:
        """Append data."""
        view = memoryview(data)
        while view:
            n = min(len(view), DIRECT_BLOCK - self.fill)
            self.buf[self.fill : self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == DIRECT_BLOCK:
                self._hand_off()

    def _hand_off(self) -> None:
        """Start writing the full buffer in the helper thread; go on in the other one."""
        self._wait()
        full = self.buf
        self.buf, self.spare = self.spare, full
        self.fill = 0
        self._pending = self._pool.submit(self._flush, full, DIRECT_BLOCK)

    def _wait(self) -> None:
        """Wait for the block in flight; raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _flush(self, buf: Any, size: int) -> None:
        view = memoryview(buf)[:size]
        try:
            if self.direct and size == DIRECT_BLOCK:
                try:
                    n = self.fs.write(self.fd, view)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._plain()  # a filesystem that took the flag at open but not here
                    n = 0
                if n == size:
                    return
                if n:  # a short direct write (a disk filling up): the rest cannot be aligned
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            else:
                self._plain()
            self.fs.write_all(self.fd, view)
        finally:
            view.release()

    def _plain(self) -> None:
        if self.direct:
            import fcntl

            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def close(self) -> None:
        """Write what is left and close the file (not synced: the caller's sync does that)."""
        if self.fd < 0:
            return
        try:
            self._wait()
            if self.fill:
                self._flush(self.buf, self.fill)
        finally:
            self._pool.shutdown(wait=True)  # a block still in flight after an error
            self.fs.close(self.fd)
            self.fd = -1
            self.fill = 0
            self.buf.close()
            self.spare.close()


class Flock:
    """An exclusive flock(2) held while in the with block, by one thread of one process.

    Each use opens the lock file afresh, so threads of one process exclude each other
    too. The store lock is taken per request: filelock costs 80-380 µs per use here
    (its path canonicalisation and registries), this about 10 µs. A lock file holds
    no data: its creation is not an operation of the FS seam.
    """

    __slots__ = ("path", "fd", "wait", "mode")

    def __init__(self, path: str, *, wait: bool = True, mode: int = PRIVATE_MODES[0]) -> None:
        self.path = path
        self.fd = -1
        self.wait = wait  # False: BlockingIOError if another holds it
        self.mode = mode  # of the lock file, if this makes it

    def acquire(self) -> None:
        """Take the lock; BlockingIOError if another holds it and wait is False."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def release(self) -> None:
        """Let the lock go."""
        fd, self.fd = self.fd, -1
        os.close(fd)  # closing the last descriptor releases the lock

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
