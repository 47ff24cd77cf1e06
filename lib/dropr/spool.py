"""The spool: the only code that creates, renames, links or unlinks spool files.

Layout (one filesystem; ``tmp`` must be on the same one as everything else, or
rename and link could not be atomic)::

    node                         this node's name, fixed at first use
    dropr.toml                   optional config
    tmp/                         files being written; swept when untouched for 36 h
    ids/<id>                     symlink -> "{p}{arrival}" for caller-chosen outbox ids
    out/<peer>/url               where the peer is
    out/<peer>/peer.json         backoff, last success, last error (write .new, rename)
    out/<peer>/<state>/<name>    state: queued sent processed dead; hard links of one file
    out/<peer>/meta/<id>         attempts and last error of one message (written on failure)
    out/<peer>/ttl               empty: a message with a TTL was put for the peer
    in/<channel>/<state>/<name>  state: ready wait claimed done dead
    in/<channel>/meta/<origin>,<id>  returns, failures, last error
    rcv/<origin>/<id>            every received id: a hard link of the message for a generated
                                 id (its inbox name follows from the id; the upload is written
                                 there), a symlink -> "{channel}/{p}{created}" for a chosen one
    corrupt/                     unreadable files moved aside, and strays: files in a state
                                 folder with no message name (see _message_names)
    wake/                        datagram sockets of waiting senders and consumers
    lock/                        send.lock (one sender), rcv-<origin>.lock (one committer)

Names: outbox ``{p}{arrival:013x},{id}``, inbox ``{p}{created:013x},{origin},{id}``
where created is the origin's put time, so the inbox keeps the origin's order
(``message``). An outbox file is a 256-byte header and the payload; an inbox file
is the payload alone. Nothing is modified after its final rename, except the
mtime of ``claimed`` (the lease expiry) and ``wait`` (when due) entries.

State table. Each transition is one rename, or a link then an unlink ("move", see
_move) where only one process moves the file; "crash" says what a kill -9 or power
loss between the steps leaves, and what recovery makes of it.

===========  ==================================  ==================================================
transition   steps                               crash windows
===========  ==================================  ==================================================
put          write tmp/F (header+payload);       before sync 1: tmp leftover, swept by age; nothing
             sync 1; [symlink ids/ID];           was printed. After link to some peers only: those
             link F to out/P/queued/N per peer;  peers get it, id never printed (retry with --id to
             unlink F; wake the sender; sync 2;  be exact); so may the peers of a put whose sync 2
             print ids                           failed. A dangling ids/ symlink (crash before
                                                 the link) is older than 60 s and replaced.
sent         move queued/N -> sent/N             before: sent again, the peer answers duplicate.
                                                 Between link and unlink: in both; sent again
                                                 (duplicate), and the next move drops queued/N.
processed    move sent/N -> processed/N          before: the next status poll does it again.
dead (out)   write meta/ID; move -> dead/N       before the move: still queued, meta says why.
store (in)   write rcv/O/ID (generated id: made  the receiver holds lock/rcv-O.lock from the
             O_EXCL, and still this upload's     index check to sync 2, so a duplicate is never
             at the lock) or tmp/F; lock origin; answered before the first copy is durable, and
             for tmp/F, link (or symlink)        no message is in the inbox before its index
             rcv/O/ID, EEXIST: duplicate; sync 1 entry. An rcv entry whose message is nowhere
             (F and rcv/O); link F -> ready/N;   (a crash before the link into ready) is
             unlink tmp/F; wake consumers;       replaced under the lock; the sender resends.
             sync 2; unlock; answer "stored"     The tmp sweep drops a stray tmp/F, and its rcv/
                                                 hard link when only the two hold it; purge
                                                 drops rcv/ files no inbox state links,
                                                 untouched 36 h (an upload cut by a crash).
claim        utime(ready/N, lease end);          between: the file sits in ready with a future
             rename -> claimed/N; utime again    mtime, which ready ignores; after: a lease that is
                                                 already set, so no sweeper can take it back early.
ack          rename claimed/N -> done/N          before: the lease expires, redelivered (at least
                                                 once).
release      [utime(claimed/N, due)]; write      before the rename: the lease expires (at the due
             meta; rename claimed/N -> ready/N   time, if set) and the count is raised once more
             or wait/N                           (an over-count by one).
reject       write meta; rename -> dead/N        as release.
expire       write meta; rename claimed/N ->     two sweepers: one rename wins, the other gets
             ready/N                             ENOENT and skips.
due          rename wait/N -> ready/N            idempotent.
purge        unlink done|processed|dead after    leftovers of a purge are purged again.
             retention (ctime age), meta, index
===========  ==================================  ==================================================

Syncing: "sync" is fsync of each written file and each touched directory for a
few messages, and one syncfs(2) of the spool's filesystem for the files of a batch
(group commit): the data of every file before any of its names, every name before
the caller hears "stored". A sync of names alone (sync 2) fsyncs the few folders
they are in, even for a batch: a syncfs would wait for every other writer's data.
"""

from __future__ import annotations

import errno
import os

from . import log as _log
from . import message as m
from .config import Config, Peer
from .errors import (
    ConfigError,
    DataError,
    NoInputError,
    NotFoundError,
    TempFailError,
    from_oserror,
)

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import IO, Any

OUT_STATES = ("queued", "sent", "processed", "dead")
IN_STATES = ("ready", "wait", "claimed", "done", "dead")
FIND_ORDER = ("done", "ready", "claimed", "wait", "dead")  # most receipt polls end in done
TMP_MAX_AGE = 36 * 3600  # no writer keeps a tmp file untouched this long: puts and
# uploads write continuously, and a put whose tmp file was swept fails at its link.
DANGLING_AGE = 60  # an index symlink whose message is missing this long is a crash leftover
RCV_SWEEP_EVERY = 12 * 3600  # purge looks for rcv/ leftovers of crashed uploads this often
PURGE_EVERY = 600.0  # the daemons purge a spool at most this often (seconds), one at a time
PURGE_CHECK = 60.0  # and look whether a purge is due this often (Spool.purge_if_due)
SEND_SOCK = "send.sock"  # the sender's wake-up socket in wake/
TTL_MARK = "ttl"  # out/<peer>/ttl: messages with a TTL were put for the peer (the sender
# checks a backed-off peer's queue for expired ones only then)
SWEEP_EVERY = 1.0  # claimers look for expired leases and due retries at most this often
WAKE_SETTLE = 0.1  # wake/ unchanged this long (seconds) has a listing worth keeping: see _waiting
SYNC_EACH_MAX = 4  # up to this many files: fsync each; more: one syncfs
CHUNK = 1 << 20
DIRECT_BLOCK = 1 << 20  # DirectWriter's unit: a multiple of every device's block size
DIRECT_MIN = 8 << 20  # messages at least this large are written past the page cache

PRIVATE_MODES = (0o600, 0o700)  # files, folders: no other local user reads a payload (as mail queues)
GROUP_MODES = (0o640, 0o2750)  # with an operators' group (config `group`): the spool root is
# set-group-ID, so every folder and file made below it takes the group, and no chown is needed
MAX_STAMP = 253402300799.0  # 9999-12-31 23:59:59: the latest lease end or due time written;
# a later one overflows time_t (OverflowError), and the kernel clamps this one to what the
# filesystem holds (ext4: 2446, or 2038 with 128-byte inodes), without an error
STRAY_WHY = "not a message name"  # the .why of a stray file moved out of a state folder
NAME_PATTERNS = {"out": r"[0-9][0-9a-f]{13},[^,]+", "in": r"[0-9][0-9a-f]{13},[^,]+,[^,]+"}
# the message names spool makes in the state folders of each box (see the docstring)
REGEX_FROM = 20000  # names: fewer are checked in Python (0.4 µs a name) rather than by
# NAME_PATTERNS (0.15 µs), whose `re` import would add 6 ms to a dropr-recv or dropr-ack
modes = PRIVATE_MODES  # what this process creates files and folders with: every command opens
# one spool, whose config sets them (Spool.__init__); a test that opens several sets them per spool
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")

log = _log.get(__name__)
_libc: Any = None
_stray_tests: dict[str, Callable[[str], object]] = {}


def group_id(group: str) -> int:
    """Return the id of a group given by name or number, or raise ConfigError."""
    import grp

    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {group!r} in the config; create it or fix group") from None


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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte or raise: a nearly full disk may take only part of a write."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


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

    __slots__ = ("fd", "buf", "spare", "fill", "direct", "_pool", "_pending")

    def __init__(self, path: str) -> None:
        import mmap
        from concurrent.futures import ThreadPoolExecutor

        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, modes[0])
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes[0])
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
                    n = os.write(self.fd, view)
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
            write_all(self.fd, view)
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
            os.close(self.fd)
            self.fd = -1
            self.fill = 0
            self.buf.close()
            self.spare.close()


def fsync_dir(path: str) -> None:
    """fsync a directory so the names in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: str) -> bool:
    """Create path and missing parents; return True if anything was created.

    Parents outside the spool are created with the same mode: a spool's parent made
    for it (~/.local/state) is no one else's business either."""
    try:
        os.mkdir(path, modes[1])
    except FileExistsError:
        return False
    except FileNotFoundError:
        _mkdirs(os.path.dirname(path))
        try:
            os.mkdir(path, modes[1])
        except FileExistsError:
            return False
    fsync_dir(os.path.dirname(path))
    return True


def _create_text(path: str) -> IO[str]:
    """Open a new (or truncated) text file with the spool's file mode, for writing."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, modes[0]), "w", encoding="utf-8")


def _write_json(path: str, data: dict[str, Any]) -> None:
    # Records beside messages (attempts, last error, backoff) are advice, not data:
    # no fsync; a crash may lose the latest count or leave an empty file, read as {}.
    # They may say why a payload failed: as private as the payload.
    import json

    tmp = f"{path}.{os.getpid()}.new"
    with _create_text(tmp) as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any]:
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


def _sorted_names(path: str, first: int = 0, after: str = "") -> list[str]:
    """Return the names in a folder, sorted; with first, at least the first that many;
    with after, only those that sort after it."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if after:
        names = [n for n in names if n > after]
    if first and len(names) > 4 * first:
        import heapq

        return heapq.nsmallest(first, names)  # O(N), not a sort of a million names
    names.sort()
    return names


def _sorted_dirs(path: str) -> list[str]:
    """Return the names of the folders in a folder, sorted (peers, channels): a stray
    file beside them is no peer or channel."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _out_stray(name: str) -> bool:
    """Whether name is no outbox name: NAME_PATTERNS["out"] in Python."""
    return (
        len(name) < 16 or name[14] != "," or name[0] not in _DIGITS
        or not _HEX.issuperset(name[1:14]) or name.count(",") != 1
    )  # fmt: skip


def _in_stray(name: str) -> bool:
    """Whether name is no inbox name: NAME_PATTERNS["in"] in Python."""
    return (
        len(name) < 18 or name[14] != "," or name[0] not in _DIGITS
        or not _HEX.issuperset(name[1:14]) or name.count(",") != 2
        or ",," in name or name[-1] == ","
    )  # fmt: skip


def stray_test(box: str, count: int = REGEX_FROM) -> Callable[[str], object]:
    """Return a test that is true for a name that is no message name of box ("out", "in"),
    for checking count names.

    Many names: one regular expression call each, 0.15 µs (Python took 0.4 µs). The
    expression fails on a message name, so the usual case makes no match object.
    """
    if count < REGEX_FROM:
        return _out_stray if box == "out" else _in_stray
    test = _stray_tests.get(box)
    if test is None:
        import re

        test = _stray_tests[box] = re.compile(rf"(?!{NAME_PATTERNS[box]}\Z)").match
    return test


def _message_names(path: str, box: str, first: int = 0, after: str = "") -> tuple[list[str], list[str]]:
    """Return (message names, strays) of a state folder of box, listed as _sorted_names does.

    Spool only ever names a file in a state folder with a message name (its tmp files
    are in tmp/, its records in meta/), so anything else there was put there by hand
    or by another program: a stray, which no caller may get as a message. With first,
    only the names picked are checked, unless one of them is a stray. The check runs
    before the sort: a million names take 0.15 s in the order listed, 0.35 s sorted
    (their strings are then scattered in memory).
    """
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    if after:
        names = [n for n in names if n > after]
    if first and len(names) > 4 * first:
        import heapq

        picked = heapq.nsmallest(first, names)  # O(N), not a sort of a million names
        if not any(map(stray_test(box, first), picked)):
            return picked, []
        bad = list(filter(stray_test(box, len(names)), names))
        gone = set(bad)
        return heapq.nsmallest(first, (n for n in names if n not in gone)), sorted(bad)
    bad = list(filter(stray_test(box, len(names)), names))
    if bad:
        gone = set(bad)
        names = [n for n in names if n not in gone]
        bad.sort()
    names.sort()
    return names, bad


def _any_name(path: str, box: str) -> bool:
    """Return whether a state folder of box holds a message, reading no more than the first."""
    stray = stray_test(box, 1)
    try:
        with os.scandir(path) as it:
            return any(not stray(e.name) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


class Spool:
    """One spool directory: outbox, inbox, indexes and the transitions between states."""

    def __init__(self, root: str, config: Config | None = None, *, create: bool = True) -> None:
        global modes
        self.root = os.path.abspath(root)
        self.config = config or Config()
        self.tmp = os.path.join(self.root, "tmp")
        modes = GROUP_MODES if self.config.group is not None else PRIVATE_MODES
        if create:
            self._init_dirs()
        elif not os.path.isdir(self.tmp):
            raise NotFoundError(f"no spool at {self.root}; put a message first or pass --spool")
        self.node = self._node()
        self._tmpseq = 0
        self._made: set[str] = set()  # folders known to exist
        self._ready: dict[str, tuple[float, list[str]]] = {}  # channel -> (listed at, names left)
        self._wake_list: tuple[tuple[int, int], list[str]] | None = None  # see _waiting
        self.ids = m.IdMaker()

    # -- layout -------------------------------------------------------------

    def _init_dirs(self) -> None:
        if os.path.isdir(os.path.join(self.root, "wake")):
            return
        group = self.config.group
        gid = group_id(group) if group is not None and not os.path.isdir(self.root) else -1
        try:
            if _mkdirs(self.root) and group is not None:
                self._give_to_group(group, gid)
            for sub in ("tmp", "ids", "out", "in", "rcv", "corrupt", "wake", "lock"):
                _mkdirs(os.path.join(self.root, sub))
        except OSError as exc:
            raise from_oserror(exc, f"cannot create spool {self.root}") from None

    def _give_to_group(self, group: str, gid: int) -> None:
        """Make a new spool root the operators' group's, set-group-ID (see GROUP_MODES)."""
        try:
            os.chown(self.root, -1, gid)
        except PermissionError:
            raise ConfigError(
                f"cannot give spool {self.root} to group {group!r}: this user is not in it; "
                "add the user to the group or drop group from the config"
            ) from None
        os.chmod(self.root, GROUP_MODES[1])

    def _node(self) -> str:
        path = os.path.join(self.root, "node")
        wanted = os.environ.get("DROPR_NODE") or self.config.node
        try:
            with open(path, encoding="ascii") as f:
                node = f.read().strip()
        except FileNotFoundError:
            node = ""
        except OSError as exc:
            raise from_oserror(exc, f"cannot read {path}") from None
        if node:
            if wanted and wanted != node:
                raise ConfigError(
                    f"spool {self.root} belongs to node {node!r}, not {wanted!r}; "
                    "the node name is fixed at first use"
                )
            return node
        node = wanted or _safe_hostname()
        try:
            m.check_name(node, "node")
        except ValueError as exc:
            raise ConfigError(f"bad node name {node!r}: {exc}; set node in the config") from None
        try:
            tmp = os.path.join(self.tmp, f"node.{os.getpid()}")
            with _create_text(tmp) as f:
                f.write(node + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # link, not rename: the first writer wins, all agree
            fsync_dir(self.root)
        except FileExistsError:
            with open(path, encoding="ascii") as f:
                node = f.read().strip()
        except OSError as exc:
            raise from_oserror(exc, f"cannot fix the node name in {path}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return node

    def path(self, *parts: str) -> str:
        """Return a path inside the spool (parts are names, never absolute)."""
        return "/".join((self.root, *parts))

    def tmp_name(self, tag: str) -> str:
        """Return a fresh path in tmp/ unique to this process."""
        self._tmpseq += 1
        return os.path.join(self.tmp, f"{os.getpid()}.{self._tmpseq}.{tag}")

    def sync(self, fds: Iterable[int] = (), dirs: Iterable[str] = (), many: bool = False) -> None:
        """Make written files and names durable: fsync each, or one syncfs for many."""
        if many:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
            return
        for fd in fds:
            os.fsync(fd)
        for d in dirs:
            fsync_dir(d)

    # -- outbox: put --------------------------------------------------------

    def peer_dir(self, peer: Peer) -> str:
        """Return (creating it the first time) the outbox folder of a peer."""
        d = self.path("out", peer.name)
        if not os.path.isdir(os.path.join(d, "meta")):
            for s in (*OUT_STATES, "meta"):
                _mkdirs(os.path.join(d, s))
            url = os.path.join(d, "url")
            if not os.path.exists(url):
                with _create_text(url + ".new") as f:
                    f.write(peer.url + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(url + ".new", url)
                fsync_dir(d)
        return d

    def batch(
        self, peers: list[Peer], *, channel: str = "default", priority: int = 5, ttl: float = 0
    ) -> PutBatch:
        """Start a batch of messages to put durably in one commit."""
        return PutBatch(self, peers, channel=channel, priority=priority, ttl=ttl)

    def find_out(self, ident: str) -> list[tuple[str, str, str]]:
        """Return (peer, state, name) for every destination of an outbox message."""
        names = self._out_names(ident)
        found = []
        for peer in self.out_peers():
            for state in OUT_STATES:
                for name in names:
                    if os.path.lexists(self.path("out", peer, state, name)):
                        found.append((peer, state, name))
        return found

    def _out_names(self, ident: str) -> list[str]:
        try:
            prefix = os.readlink(self.path("ids", ident))
            return [f"{prefix},{ident}"]
        except OSError:
            pass
        t = m.generated_time(ident)
        if t is None:
            return []
        return [m.out_name(p, t, ident) for p in range(10)]

    def _claim_id(self, ident: str, prefix: str) -> bool:
        """Create ids/<id>; return False if the id is already in the outbox."""
        link = self.path("ids", ident)
        for _ in range(2):
            try:
                os.symlink(prefix, link)
                return True
            except FileExistsError:
                if self.find_out(ident):
                    return False
                try:
                    age = m.now_us() / 1e6 - os.lstat(link).st_mtime
                except FileNotFoundError:
                    continue
                if age < DANGLING_AGE:
                    return False  # another putter of the same id is committing right now
                os.unlink(link)
        return False

    # -- outbox: sender side ------------------------------------------------

    def out_peers(self) -> list[str]:
        """Return the names of all outbox peers."""
        return _sorted_dirs(self.path("out"))

    def out_names(
        self, peer: str, state: str, first: int = 0, after: str = "", *, strays: list[str] | None = None
    ) -> list[str]:
        """Return the sorted message names in one outbox state of a peer (with first: at
        least those; with after: only the names that sort after it).

        Any other file there is moved to corrupt/; a caller that changes nothing (dropr-ls)
        passes strays, a list that gets their names instead, and they stay.
        """
        folder = self.path("out", peer, state)
        names, bad = _message_names(folder, "out", first, after)
        if bad:
            self._strays(folder, bad, strays)
        return names

    def out_has_ttl(self, peer: str) -> bool:
        """Return whether a message with a TTL was ever put for a peer (see PutBatch)."""
        return os.path.exists(f"{self.root}/out/{peer}/{TTL_MARK}")

    def out_changed(self, peer: str, state: str, name: str) -> float | None:
        """Return when an outbox entry last changed state (its ctime: a link or an unlink of
        the message, at any of its peers, sets it), or None if it is not there."""
        try:
            return os.lstat(f"{self.root}/out/{peer}/{state}/{name}").st_ctime
        except FileNotFoundError:
            return None

    def out_any(self, peer: str, state: str) -> bool:
        """Return whether one outbox state of a peer holds anything (no listing)."""
        return _any_name(self.path("out", peer, state), "out")

    def peer_url(self, peer: str) -> str:
        """Return the URL recorded for an outbox peer."""
        with open(self.path("out", peer, "url"), encoding="utf-8") as f:
            return f.read().strip()

    def peer_state(self, peer: str) -> dict[str, Any]:
        """Return the stored delivery state of a peer (backoff, last ok, last error)."""
        return _read_json(self.path("out", peer, "peer.json"))

    def set_peer_state(self, peer: str, data: dict[str, Any]) -> None:
        """Replace the stored delivery state of a peer."""
        _write_json(self.path("out", peer, "peer.json"), data)

    def read_header(self, peer: str, state: str, name: str) -> m.Header:
        """Read the envelope of an outbox message; ValueError if it is corrupt."""
        with open(self.path("out", peer, state, name), "rb") as f:
            raw = f.read(m.HEADER_SIZE)
            hdr = m.Header.parse(raw)
            size = os.fstat(f.fileno()).st_size - m.HEADER_SIZE
        if size != hdr.size:
            raise ValueError(f"payload is {size} bytes, header says {hdr.size}")
        return hdr

    def peek(self, peer: str, name: str) -> tuple[int, int]:
        """Return (deadline µs or 0, payload size) of a queued message, reading only its header.

        The sender's fast path: three system calls, no full parse (the receiver checks
        the whole header). ValueError if the file is not a dropr message.
        """
        fd = os.open(f"{self.root}/out/{peer}/queued/{name}", os.O_RDONLY)
        try:
            raw = os.pread(fd, m.HEADER_SIZE, 0)
            size = os.fstat(fd).st_size - m.HEADER_SIZE
        finally:
            os.close(fd)
        if len(raw) != m.HEADER_SIZE or not raw.startswith(m.MAGIC) or size < 0:
            raise ValueError("not a dropr message header")
        at = raw.find(b" d=")
        end = raw.find(b" ", at + 3)
        try:
            return int(raw[at + 3 : end]), size
        except ValueError:
            raise ValueError("bad message header: no deadline field") from None

    def out_move(self, peer: str, names: Iterable[str], src: str, dst: str) -> int:
        """Move outbox entries of a peer between states; return how many moved."""
        moved = 0
        base = f"{self.root}/out/{peer}"
        for name in names:
            try:
                _move(f"{base}/{src}/{name}", f"{base}/{dst}/{name}")
                moved += 1
            except FileNotFoundError:
                pass
        if moved:
            fsync_dir(self.path("out", peer, dst))
        return moved

    def out_meta(self, peer: str, ident: str) -> dict[str, Any]:
        """Return the attempt record of one outbox message."""
        return _read_json(self.path("out", peer, "meta", ident))

    def out_note(self, peer: str, ident: str, **fields: Any) -> None:
        """Add fields to the record of one outbox message."""
        meta_path = self.path("out", peer, "meta", ident)
        meta = _read_json(meta_path)
        meta.update(fields)
        _write_json(meta_path, meta)

    def out_fail(self, peer: str, name: str, reason: str, *, dead: bool, src: str = "queued") -> None:
        """Record a failed attempt; with dead, move the message to dead with the reason."""
        ident = m.parse_out_name(name)[2]
        meta_path = self.path("out", peer, "meta", ident)
        meta = _read_json(meta_path)
        meta["attempts"] = int(meta.get("attempts", 0)) + 1
        meta["error"] = reason
        meta["at"] = m.now_us()
        _write_json(meta_path, meta)
        if dead:
            self.out_move(peer, [name], src, "dead")

    def corrupt(self, path: str, why: str) -> str:
        """Move an unreadable file aside into corrupt/; return its new path."""
        rel = os.path.relpath(path, self.root).replace("/", "=")
        dest = self.path("corrupt", rel)
        try:
            os.rename(path, dest)
            with _create_text(dest + ".why") as f:
                f.write(why + "\n")
        except FileNotFoundError:
            pass
        return dest

    def _strays(self, folder: str, names: list[str], keep: list[str] | None = None) -> None:
        """Move files of a state folder that are no messages into corrupt/, or, for a caller
        that changes nothing, add their names to keep. Never fails: a stray that cannot be
        moved (a folder in the way in corrupt/) is logged and stays, skipped by every listing."""
        if keep is not None:
            keep.extend(names)
            return
        for name in names:
            path = f"{folder}/{name}"
            try:
                dest = self.corrupt(path, STRAY_WHY)
            except OSError as exc:
                log.error("stray path=%s reason=%s; cannot move it to corrupt/: %s", path, STRAY_WHY, exc)
                continue
            log.error("corrupt path=%s moved=%s reason=%s", path, dest, STRAY_WHY)

    # -- inbox: receiver side -----------------------------------------------

    def channel_dir(self, channel: str) -> str:
        """Return (creating it the first time) the inbox folder of a channel."""
        d = f"{self.root}/in/{channel}"
        if d in self._made:
            return d
        if not os.path.isdir(f"{d}/meta"):
            for s in (*IN_STATES, "meta"):
                _mkdirs(os.path.join(d, s))
        self._made.add(d)
        return d

    def find_in(
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
                name = f"{pre},{origin},{ident}"
                for state in FIND_ORDER:
                    if os.path.lexists(f"{self.root}/in/{ch}/{state}/{name}"):
                        return ch, state, name, int(pre[1:], 16)
        return None

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
                return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes[0]), True
            except FileExistsError:
                pass
        path = self.rcv_tmp_name(origin, hdr.ident)
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes[0]), False

    def unreceive(self, origin: str, path: str, fd: int = -1) -> bool:
        """Remove the file of a refused or failed upload part; fd: an entry's, still open.

        An rcv/ entry is removed under the origin's lock, and only while it is still
        this part's file and in no inbox state: if a resend took the entry over, or a
        failed store got it into ready/ first, it is not ours to drop.
        """
        if fd < 0:
            _unlink_quiet(path)
            return True
        return self._drop_entry(origin, path, os.fstat(fd).st_ino)

    def _drop_entry(self, origin: str, path: str, ino: int, untouched_since: float | None = None) -> bool:
        """Unlink an rcv/ entry under the origin's lock if it is still inode ino, in no inbox
        state (one link) and, with untouched_since, not written since; return whether it went."""
        with self._rcv_lock(origin):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return False
            if st.st_ino != ino or st.st_nlink != 1:
                return False
            if untouched_since is not None and st.st_mtime >= untouched_since:
                return False
            os.unlink(path)
            return True

    def _rcv_lock(self, origin: str) -> _Flock:
        """The lock of one origin's received ids: stores, and removals of their entries."""
        return _Flock(self.path("lock", f"rcv-{origin}.lock"))

    def rcv_tmp_name(self, origin: str, ident: str) -> str:
        """Return a fresh tmp/ path for a received message (the tmp sweep reads the name)."""
        return self.tmp_name(f"rcv,{origin},{ident}")

    def _rcv_dir(self, origin: str) -> str:
        rcv = f"{self.root}/rcv/{origin}"
        if rcv not in self._made:
            _mkdirs(rcv)
            self._made.add(rcv)
        return rcv

    def store(self, origin: str, items: list[tuple[str, m.Header, int]]) -> list[str]:
        """Commit received files into the inbox; return "stored" or "duplicate" for each.

        ``items`` are (path, header, fd) made by receive_file, with the payload already
        written and checked; fd is the open descriptor of a file written as its rcv/
        entry, -1 for a tmp file (closed); the caller closes them after. Under the
        origin's lock: index the new ones, sync their data and index entries, link them
        into ready, wake their consumers, sync ready. So no message is in the inbox
        before its index entry is durable, and no duplicate is answered before the first
        copy is durable. Sync 1 is fsync of each file and of rcv/ for a few new messages
        (a syncfs would flush every other writer's data too: a worse tail latency), one
        syncfs for a batch; sync 2 fsyncs the ready/ folders touched.

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
        touched: set[str] = set()  # in/<channel>/ready folders
        with self._rcv_lock(origin):
            try:
                new = self._index(origin, items, rcv, results)
                if new:  # sync 1: their data and their index entries, before any name
                    many = len(new) > SYNC_EACH_MAX
                    opened = [] if many else [os.open(f, os.O_RDONLY) for f, _, _, fd in new if fd < 0]
                    try:
                        self.sync(fds=opened + [fd for _, _, _, fd in new if fd >= 0], dirs=[rcv], many=many)
                    finally:
                        for fd in opened:
                            os.close(fd)
                for f, cdir, name, fd in new:
                    if fd >= 0:  # written as its index entry, which stays
                        os.link(f, f"{cdir}/ready/{name}")
                    else:
                        _move(f, f"{cdir}/ready/{name}")
                    touched.add(f"{cdir}/ready")
            finally:
                for ready in touched:  # before sync 2: see above
                    self.wake(f"recv-{ready.rsplit('/', 2)[1]}-")
                # sync 2, even after a failure midway: whatever is in ready/ must be
                # durable before the lock lets a resend see it and answer "duplicate"
                if touched:
                    self.sync(dirs=touched)
        return results

    def _index(
        self, origin: str, items: list[tuple[str, m.Header, int]], rcv: str, results: list[str]
    ) -> list[tuple[str, str, str, int]]:
        """Make the rcv/ entry of each new message; return (file, channel dir, name, fd) of those."""
        new: list[tuple[str, str, str, int]] = []
        made: set[str] = set()
        for tmp, hdr, fd in items:
            # Inbox names sort by the origin's creation time, not by arrival here, so
            # the order is the same whichever of several concurrent batches lands first.
            name = m.in_name(hdr.priority, hdr.created, origin, hdr.ident)
            prefix = name.split(",", 1)[0]
            if fd >= 0:  # written as its own rcv/ entry (receive_file): is the entry still it?
                # Its only name until this store links it into ready/ is the entry; a resend
                # that took the entry over unlinked it. So one link left means still ours.
                if os.fstat(fd).st_nlink != 1:
                    # A resend found the entry unstored and took it over, so this file
                    # has no name left. That resend's store ran under this lock first.
                    if self.find_in(origin, hdr.ident, prefix=prefix) is None:
                        raise OSError(errno.EAGAIN, "another upload of this id failed midway")
                    results.append("duplicate")
                    continue
            else:
                # The index entry is the duplicate check: one link(2) that fails if the id
                # was received before, in any channel and state (no stat of every state).
                # dropr-put's own ids carry their creation time, so their entry is a hard
                # link of the message (no inode to allocate); other ids need a symlink
                # that says where the message went.
                link = f"{rcv}/{hdr.ident}"
                target = "" if m.generated_time(hdr.ident) == hdr.created else f"{hdr.channel}/{prefix}"
                try:
                    _index(tmp, link, target)
                except FileExistsError:
                    # indexed earlier in this request (not yet in ready), or received before
                    if hdr.ident in made or self.find_in(origin, hdr.ident, prefix=prefix) is not None:
                        os.unlink(tmp)
                        results.append("duplicate")
                        continue
                    # a leftover of a crash before the link into ready, or an upload of
                    # this id written as its entry that is still unstored: take it over
                    os.unlink(link)
                    _index(tmp, link, target)
            made.add(hdr.ident)
            new.append((tmp, self.channel_dir(hdr.channel), name, fd))
            results.append("stored")
        return new

    def origins(self) -> list[str]:
        """Return the nodes this spool has received messages from."""
        return _sorted_names(self.path("rcv"))

    def in_names(self, channel: str, state: str, *, strays: list[str] | None = None) -> list[str]:
        """Return the sorted message names in one inbox state of a channel; other files
        there are moved to corrupt/, or listed in strays and left, as out_names does."""
        folder = self.path("in", channel, state)
        names, bad = _message_names(folder, "in")
        if bad:
            self._strays(folder, bad, strays)
        return names

    def channels(self) -> list[str]:
        """Return the names of all inbox channels."""
        return _sorted_dirs(self.path("in"))

    def in_meta(self, channel: str, origin: str, ident: str) -> dict[str, Any]:
        """Return the attempt record of one inbox message."""
        return _read_json(self.path("in", channel, "meta", f"{origin},{ident}"))

    def _in_return(
        self, channel: str, name: str, src: str, dst: str, *, failed: bool, reason: str, due: float = 0
    ) -> bool:
        """Record an attempt's end and move the message from src to dst; False if it is gone.

        The due time is set before the record is written: a claim already lost, or a
        time the file cannot take, then leaves both as they were.
        """
        _, _, origin, ident = m.parse_in_name(name)
        src_path = self.path("in", channel, src, name)
        dst_path = self.path("in", channel, dst, name)
        if due:
            try:
                os.utime(src_path, (_stamp(due), _stamp(due)))
            except FileNotFoundError:
                return False
        meta_path = self.path("in", channel, "meta", f"{origin},{ident}")
        meta = _read_json(meta_path)
        meta["returns"] = int(meta.get("returns", 0)) + 1
        if failed:
            meta["failures"] = int(meta.get("failures", 0)) + 1
        if reason:
            meta["error"] = reason
        _write_json(meta_path, meta)
        try:
            os.rename(src_path, dst_path)
        except FileNotFoundError:
            return False
        fsync_dir(os.path.dirname(dst_path))
        return True

    def sweep_channel(self, channel: str, max_attempts: int = 0) -> int:
        """Return expired leases to ready and due waiting messages; return how many moved."""
        now = m.now_us() / 1e6
        moved = 0
        for name in self.in_names(channel, "wait"):
            p = self.path("in", channel, "wait", name)
            try:
                if os.stat(p).st_mtime <= now:
                    os.rename(p, self.path("in", channel, "ready", name))
                    moved += 1
            except FileNotFoundError:
                pass
        for name in self.in_names(channel, "claimed"):
            p = self.path("in", channel, "claimed", name)
            try:
                if os.stat(p).st_mtime > now:
                    continue
            except FileNotFoundError:
                continue
            _, _, origin, ident = m.parse_in_name(name)
            meta = self.in_meta(channel, origin, ident)
            dead = max_attempts and int(meta.get("failures", 0)) + 1 >= max_attempts
            if self._in_return(
                channel, name, "claimed", "dead" if dead else "ready", failed=True,
                reason="lease expired" + (" (out of attempts)" if dead else ""),
            ):  # fmt: skip
                moved += 1
        return moved

    def claim(
        self,
        channel: str,
        n: int,
        lease: float,
        *,
        keep: bool = False,
        each: Callable[[Claim], None] | None = None,
    ) -> list[Claim]:
        """Claim up to n ready messages for a lease of `lease` seconds, most urgent first.

        Each call sweeps expired leases and due retries, then lists ready/. With keep
        (a handler loop claiming one at a time from a large inbox) the listing is kept
        between calls and renewed when used up, after SWEEP_EVERY, or by forget_ready:
        an expired lease or a more urgent arrival may then wait up to that long. each,
        if given, is called with every claim as soon as it is made.
        """
        cdir = f"{self.root}/in/{channel}"
        if not os.path.isdir(cdir):
            return []
        now = m.now_us() / 1e6
        listed, names = self._ready.get(channel, (0.0, [])) if keep else (0.0, [])
        ready = f"{cdir}/ready"
        if not names or now - listed > SWEEP_EVERY:
            self.sweep_channel(channel, self.config.max_attempts)
            listed = now
            names, strays = _message_names(ready, "in", n + 256)  # spares for other consumers
            if strays:
                self._strays(ready, strays)
        out: list[Claim] = []
        claimed = f"{cdir}/claimed"
        expiry = _stamp(now + lease)
        names.reverse()  # pop() from the end takes the most urgent first
        while names and len(out) < n:
            name = names.pop()
            src = f"{ready}/{name}"
            dst = f"{claimed}/{name}"
            c = Claim(self, channel, name, expiry)  # before the rename: nothing can fail after it
            try:
                os.utime(src, (now, expiry))
                os.rename(src, dst)
                os.utime(dst, (now, expiry))
            except FileNotFoundError:
                continue  # another consumer won this one
            out.append(c)
            if each is not None:
                each(c)
        if keep:
            names.reverse()
            self._ready[channel] = (listed, names)
        return out

    def forget_ready(self, channel: str) -> None:
        """Drop the kept listing of ready messages (an arrival may be more urgent)."""
        self._ready.pop(channel, None)

    def claimed_index(self) -> dict[str, list[tuple[str, str]]]:
        """Map every claimed id (and origin,id) to its (channel, name)s, in one scan."""
        index: dict[str, list[tuple[str, str]]] = {}
        for ch in self.channels():
            for name in self.in_names(ch, "claimed"):
                try:
                    _, _, origin, ident = m.parse_in_name(name)
                except ValueError:
                    continue
                index.setdefault(ident, []).append((ch, name))
                index.setdefault(f"{origin},{ident}", []).append((ch, name))
        return index

    def finish(self, channel: str, name: str, how: str, *, reason: str = "", delay: float = 0) -> bool:
        """End a claim: how is ack, release, fail or reject; False if the claim was lost."""
        if how == "ack":
            try:
                os.rename(self.path("in", channel, "claimed", name), self.path("in", channel, "done", name))
            except FileNotFoundError:
                return False
            return True
        if how == "reject":
            return self._in_return(channel, name, "claimed", "dead", failed=True, reason=reason or "rejected")
        due = m.now_us() / 1e6 + delay if delay > 0 else 0
        return self._in_return(
            channel, name, "claimed", "wait" if due else "ready",
            failed=how == "fail", reason=reason, due=due,
        )  # fmt: skip

    def in_status(
        self, origin: str, ident: str, prefix: str = "", channels: list[str] | None = None
    ) -> tuple[str, str]:
        """Return the receipt state of a received message: processed, dead, pending, unknown."""
        found = self.find_in(origin, ident, prefix=prefix, channels=channels)
        if found is None:
            return "unknown", ""
        channel, state, name, _ = found
        if state == "done":
            return "processed", ""
        if state == "dead":
            return "dead", str(self.in_meta(channel, origin, ident).get("error", ""))
        return "pending", ""

    # -- wake-ups -----------------------------------------------------------

    def wake(self, prefix: str) -> int:
        """Send a datagram to every waiter whose socket starts with prefix; return how many.

        Wake-ups only save time (waiters look again on their own), so they never fail
        their caller: an unreadable wake/ or no descriptor left wakes nobody.
        """
        wake = self.path("wake")
        try:
            names = [n for n in self._waiting(wake) if n.startswith(prefix)]
            return self._send_wakes(wake, names) if names else 0
        except OSError:
            return 0

    def wake_one(self, name: str) -> int:
        """Wake the waiter bound as name (the sender's SEND_SOCK) without listing wake/;
        return 1 if it was there, else 0. Never fails, as wake()."""
        wake = self.path("wake")
        if not os.path.exists(os.path.join(wake, name)):
            return 0  # nobody waits: no socket to make (a put from cron)
        try:
            return self._send_wakes(wake, [name])
        except OSError:
            return 0

    @staticmethod
    def _send_wakes(wake: str, names: list[str]) -> int:
        s = _wake_socket()
        woken = 0
        for n in names:
            try:
                s.sendto(b"!", os.path.join(wake, n))
                woken += 1
            except BlockingIOError:
                woken += 1  # its queue is full: it has wake-ups pending anyway
            except ConnectionRefusedError:
                _unlink_quiet(os.path.join(wake, n))  # its owner is gone
            except OSError:
                pass  # nobody waits under that name
        return woken

    def _waiting(self, wake: str) -> list[str]:
        """The sockets in wake/, listed again only when the folder has changed.

        A stat instead of a listing on every store (0.06 against 0.11 ms on an idle
        CPU). A folder changed within the last WAKE_SETTLE seconds is not cached: its
        timestamp has a clock tick's granularity, and a socket bound in the same tick
        as the listing would not change it. Past that, any change moves the mtime.
        """
        try:
            st = os.stat(wake)
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns)
        if self._wake_list is not None and self._wake_list[0] == key:
            return self._wake_list[1]
        names = os.listdir(wake)
        settled = m.now_us() * 1000 - st.st_mtime_ns > WAKE_SETTLE * 1e9
        self._wake_list = (key, names) if settled else None
        return names

    def waiter(self, name: str) -> Waiter:
        """Bind a wake-up socket named name in wake/ (e.g. SEND_SOCK)."""
        return Waiter(self.path("wake", name))

    # -- retention ----------------------------------------------------------

    def purge_if_due(self, every: float = PURGE_EVERY) -> int:
        """Purge unless another process of this spool is purging, or did in the last
        ``every`` seconds (the stamp lock/purged); return how many entries went. For the
        daemons: dropr-send, and every dropr-serve worker, so that a node that only
        receives purges too."""
        stamp = self.path("lock", "purged")
        try:
            with _Flock(self.path("lock", "purge.lock"), wait=False):
                if not _due(stamp, every, m.now_us() / 1e6):
                    return 0
                removed = self._purge(None)
                _touch(stamp)
                return removed
        except BlockingIOError:
            return 0  # the other purge does the work

    def purge(self, now: float | None = None) -> int:
        """Remove done, processed and dead entries older than the retention, and old tmp files."""
        with _Flock(self.path("lock", "purge.lock")):
            return self._purge(now)

    def _purge(self, now: float | None) -> int:
        now = now if now is not None else m.now_us() / 1e6
        keep = self.config.retention
        removed = 0
        for name in _sorted_names(self.tmp):
            p = os.path.join(self.tmp, name)
            try:
                st = os.lstat(p)
                if now - st.st_mtime > TMP_MAX_AGE:
                    os.unlink(p)
                    removed += 1
                    if st.st_nlink == 2 and ".rcv," in name:  # only tmp/ and rcv/ held it
                        _, origin, ident = name.split(",", 2)  # see rcv_tmp_name
                        self._drop_entry(origin, self.path("rcv", origin, ident), st.st_ino)
            except FileNotFoundError:
                pass
        removed += self._sweep_rcv(now)
        gone_out: set[str] = set()
        for peer in self.out_peers():
            for state in ("processed", "dead"):
                folder = self.path("out", peer, state)
                for name, _ in self._old(folder, now - keep):
                    if stray_test("out")(name):
                        self._strays(folder, [name])
                        continue
                    ident = m.parse_out_name(name)[2]
                    _unlink_quiet(self.path("out", peer, state, name))
                    _unlink_quiet(self.path("out", peer, "meta", ident))
                    gone_out.add(ident)
                    removed += 1
        for ident in gone_out:
            if not self.find_out(ident):
                _unlink_quiet(self.path("ids", ident))
        for ch in self.channels():
            for state in ("done", "dead"):
                folder = self.path("in", ch, state)
                for name, _ in self._old(folder, now - keep):
                    if stray_test("in")(name):
                        self._strays(folder, [name])
                        continue
                    _, _, origin, ident = m.parse_in_name(name)
                    _unlink_quiet(self.path("in", ch, state, name))
                    _unlink_quiet(self.path("in", ch, "meta", f"{origin},{ident}"))
                    _unlink_quiet(self.path("rcv", origin, ident))
                    removed += 1
        return removed

    def _sweep_rcv(self, now: float) -> int:
        """Remove rcv/ entries that a crash left mid-upload; return how many.

        Such an entry is a file that no inbox state links (one link) and that nobody
        wrote for TMP_MAX_AGE, as the tmp sweep judges tmp/. Looking costs a stat per
        received id, so it runs at most every RCV_SWEEP_EVERY (a stamp in lock/).
        """
        stamp = self.path("lock", "rcv-swept")
        if not _due(stamp, RCV_SWEEP_EVERY, now):
            return 0
        removed = 0
        before = now - TMP_MAX_AGE
        for origin in _sorted_names(self.path("rcv")):
            stale: list[tuple[str, int]] = []
            try:
                with os.scandir(self.path("rcv", origin)) as it:
                    for e in it:
                        if e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            if st.st_nlink == 1 and st.st_mtime < before:
                                stale.append((e.path, st.st_ino))
            except (FileNotFoundError, NotADirectoryError):
                continue
            removed += sum(self._drop_entry(origin, path, ino, before) for path, ino in stale)
        _touch(stamp)
        return removed

    @staticmethod
    def _old(folder: str, before: float) -> Iterator[tuple[str, float]]:
        try:
            with os.scandir(folder) as it:
                for e in it:
                    try:
                        ct = e.stat(follow_symlinks=False).st_ctime
                    except FileNotFoundError:
                        continue
                    if ct < before:
                        yield e.name, ct
        except (FileNotFoundError, NotADirectoryError):
            return


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
        self.expiry = _stamp(m.now_us() / 1e6 + lease)
        try:
            os.utime(self.path, (self.expiry, self.expiry))
            return True
        except FileNotFoundError:
            return False

    def info(self) -> dict[str, Any]:
        """Return the fields dropr-recv prints for this message."""
        meta = self.spool.in_meta(self.channel, self.origin, self.ident)
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


class Waiter:
    """A bound datagram socket that wakes its owner; removed on close."""

    def __init__(self, path: str) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _unlink_quiet(path)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        """Return the socket's descriptor, for select/poll."""
        return self.sock.fileno()

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or timeout; drain pending wake-ups; True if woken."""
        import select

        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        self.drain()
        return True

    def drain(self) -> None:
        """Discard pending wake-ups."""
        try:
            while True:
                self.sock.recv(64)
        except OSError:
            pass

    def close(self) -> None:
        """Unbind and close."""
        _unlink_quiet(self.path)
        self.sock.close()

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PutBatch:
    """Messages written to tmp/ and committed together: one durable commit for many."""

    def __init__(self, spool: Spool, peers: list[Peer], *, channel: str, priority: int, ttl: float) -> None:
        if not peers:
            raise DataError("no destination; give --to PEER")
        self.spool = spool
        self.peers = peers
        self.channel = m.check_name(channel, "a channel")
        self.priority = priority
        self.ttl_us = int(ttl * 1e6)
        self.pending: list[tuple[str, str, str | None, int]] = []  # tmp, name, caller id, fd
        self.ids: list[str] = []  # ids committed, in order, including no-op duplicates
        self._dup: list[str] = []
        try:
            self._dirs = [spool.peer_dir(p) for p in peers]
            if ttl:
                for d in self._dirs:
                    if not os.path.exists(f"{d}/{TTL_MARK}"):
                        os.close(os.open(f"{d}/{TTL_MARK}", os.O_WRONLY | os.O_CREAT, modes[0]))
        except OSError as exc:
            raise from_oserror(exc, f"cannot create the outbox of a peer in {spool.root}") from None

    def _start(self, ident: str | None) -> tuple[str, int, str, int] | None:
        if ident is not None:
            m.check_id(ident)
            if self.spool.find_out(ident):
                self._dup.append(ident)
                return None
            arrival = m.now_us()
        else:
            ident, arrival = self.spool.ids.new()
        tmp = self.spool.tmp_name(ident)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes[0])
        return ident, arrival, tmp, fd

    def _header(self, ident: str, arrival: int, size: int, crc: int) -> bytes:
        deadline = arrival + self.ttl_us if self.ttl_us else 0
        return m.Header(ident, self.channel, self.priority, arrival, deadline, size, crc).pack()

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
                os.close(fd)
                _unlink_quiet(tmp)
                raise
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.EISDIR, errno.EBADF):
                raise NoInputError(f"cannot read input: {exc.strerror}") from None
            raise from_oserror(exc, f"cannot write to spool {self.spool.root}") from None
        if len(self.pending) >= SYNC_EACH_MAX:
            os.close(fd)  # a batch this size is made durable by one syncfs, not per file
            fd = -1
        self.pending.append((tmp, m.out_name(self.priority, arrival, ident), caller, fd))

    def add(self, payload: bytes, ident: str | None = None) -> None:
        """Write one message with an in-memory payload to tmp/."""

        def fill(fd: int, ident: str, arrival: int) -> None:
            write_all(fd, self._header(ident, arrival, len(payload), m.crc32(payload)) + payload)

        self._write(ident, fill)

    def add_stream(self, src: IO[bytes] | int, ident: str | None = None, limit: int = 0) -> None:
        """Write one message streamed from a file or descriptor, in constant memory."""
        fdin = src if isinstance(src, int) else src.fileno()

        def fill(fd: int, ident: str, arrival: int) -> None:
            os.lseek(fd, m.HEADER_SIZE, os.SEEK_SET)
            size = 0
            crc = 0
            while chunk := os.read(fdin, CHUNK):
                size += len(chunk)
                if limit and size > limit:
                    raise DataError(f"message is larger than the limit of {limit} bytes")
                crc = m.crc32(chunk, crc)
                write_all(fd, chunk)
            if os.pwrite(fd, self._header(ident, arrival, size, crc), 0) != m.HEADER_SIZE:
                raise OSError(errno.EIO, "short write of the message header")

        self._write(ident, fill)

    def __len__(self) -> int:
        return len(self.pending)

    def take(self) -> tuple[list[tuple[str, str, str | None, int]], list[str]]:
        """Hand over what is pending, for a commit that runs while new messages are written."""
        taken = self.pending, self._dup
        self.pending, self._dup = [], []
        return taken

    def commit(
        self, taken: tuple[list[tuple[str, str, str | None, int]], list[str]] | None = None
    ) -> list[str]:
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
        many = len(pending) > SYNC_EACH_MAX
        done: list[str] = []
        linked: list[str] = []  # names made by this commit, undone if it fails
        try:
            sp.sync(fds=[p[3] for p in pending if p[3] >= 0], many=many)
            for p in pending:
                if p[3] >= 0:
                    os.close(p[3])
            pending = [(t, n, c, -1) for t, n, c, _ in pending]
            index_dir = False
            for tmp, name, caller, _ in pending:
                if caller is not None:
                    if not sp._claim_id(caller, name.split(",", 1)[0]):
                        _unlink_quiet(tmp)
                        dups.append(caller)
                        continue
                    linked.append(sp.path("ids", caller))
                    index_dir = True
                # link + unlink, not rename: see _move
                for d in self._dirs:
                    dst = os.path.join(d, "queued", name)
                    os.link(tmp, dst)
                    linked.append(dst)
                os.unlink(tmp)
                done.append(name.split(",", 1)[1])
            dirs = [os.path.join(d, "queued") for d in self._dirs]
            if index_dir:
                dirs.append(sp.path("ids"))
            if done:
                sp.wake_one(SEND_SOCK)  # before the fsync of queued/: see this docstring
            sp.sync(dirs=dirs)
        except OSError as exc:
            for p in pending:
                if p[3] >= 0:
                    os.close(p[3])
                _unlink_quiet(p[0])
            for dst in linked:
                _unlink_quiet(dst)
            raise from_oserror(exc, f"cannot commit to spool {sp.root}") from None
        self.ids.extend(done)
        self.ids.extend(dups)
        return done + dups

    def abort(self) -> None:
        """Drop every uncommitted message."""
        for tmp, _, _, fd in self.pending:
            if fd >= 0:
                os.close(fd)
            _unlink_quiet(tmp)
        self.pending = []


class _Flock:
    """An exclusive flock(2) held while in the with block, by one thread of one process.

    Each use opens the lock file afresh, so threads of one process exclude each other
    too. The store lock is taken per request: filelock costs 80-380 µs per use here
    (its path canonicalisation and registries), this about 10 µs.
    """

    __slots__ = ("path", "fd", "wait")

    def __init__(self, path: str, *, wait: bool = True) -> None:
        self.path = path
        self.fd = -1
        self.wait = wait  # False: BlockingIOError if another holds it

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, modes[0])
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the last descriptor releases the lock


def _index(tmp: str, link: str, target: str) -> None:
    """Create a received id's rcv/ entry: a symlink to target, or a hard link of tmp."""
    if target:
        os.symlink(target, link)
    else:
        os.link(tmp, link)


def _move(src: str, dst: str) -> None:
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
        os.link(src, dst)
    except FileExistsError:
        if not os.path.samefile(src, dst):
            raise
    os.unlink(src)


def _stamp(t: float) -> float:
    """Return a lease end or due time as a file can take it: at most MAX_STAMP."""
    return t if t < MAX_STAMP else MAX_STAMP  # not min(): a NaN becomes MAX_STAMP too


def _due(stamp: str, every: float, now: float) -> bool:
    """Whether the task a stamp file times is due: its mtime says when it last ran."""
    try:
        return now - os.stat(stamp).st_mtime >= every
    except FileNotFoundError:
        return True


def _touch(stamp: str) -> None:
    """Record in a stamp file's mtime that its task ran now."""
    os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, modes[0]))
    os.utime(stamp)


_wake_sock: tuple[int, Any] | None = None  # (pid, socket): see _wake_socket


def _wake_socket() -> Any:
    """This process's socket for sending wake-ups, made once (a socket per wake-up cost
    0.1 ms on an idle CPU, on the path from a store to its consumer). From _socket: the
    socket module's import (enum and more) took 6 ms, a fifth of a dropr-put's start."""
    global _wake_sock
    if _wake_sock is None or _wake_sock[0] != os.getpid():  # not the one of a parent
        import _socket

        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        s.setblocking(False)
        _wake_sock = (os.getpid(), s)
    return _wake_sock[1]


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _safe_hostname() -> str:
    host = os.uname().nodename.split(".")[0] or "localhost"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in host)[: m.MAX_NAME].lstrip("-.")


def free_bytes(path: str) -> int:
    """Return the bytes available to unprivileged writers on path's filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


__all__ = ["Spool", "PutBatch", "Claim", "Waiter", "TempFailError", "OUT_STATES", "IN_STATES"]
