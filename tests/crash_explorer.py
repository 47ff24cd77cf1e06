"""Power loss: the on-disk states a crash can leave, built from recorded spool operations.

A scenario runs real library calls (a put, a store, a claim, ...) against a spool in a
scratch "world" folder through a recording FS (dropr.spool._trace.TracingFS), after a
snapshot of the world. It notes what it promised its caller (an id printed, "stored"
answered) and after how many operations. From the recording and a crash point k (the
first k operations ran), ``states`` builds the trees a power loss could leave, under
this persistence model (the one dropr.7 GUARANTEES names):

- file data and a file's times are durable once an fsync or fdatasync of that file, or
  a syncfs of its filesystem, follows the write; before that, any of: none of the
  unsynced writes, all of them, the file cut at any length in between, or all of them
  with one 4 KiB page of them zeros. No order of data writes within a file is assumed
  (ext4's delayed allocation writes pages back in any order; XFS and data=writeback
  may make a new size durable before the data, leaving zeros);
- a name (create, mkdir, link, symlink, unlink, rename) is durable once an fsync of its
  folder (both folders, for a rename between two) or a syncfs follows; before that it
  may or may not have reached the disk, independently of every other unsynced name,
  except that a name never outlives its folder and a rename is all or nothing;
- fsync of a file makes no name durable, fsync of a folder no file data (POSIX
  promises no more, though ext4's journal often does).

Each state is made a real tree (``materialise``); ``check`` runs what the commands run
at start-up (open the spool, purge with the tmp and rcv sweeps, claim everything ready,
list every outbox queue), completes any outbox move a crash cut in two as the next send
pass would, resends every upload as a sender that got no answer would, and returns the
violations: a promised id missing or damaged, a partial file visible, an inbox holding
a message twice or without its rcv/ entry, an outbox message in no or two states.

Run it long: python tests/crash_explorer.py --states 30000 (make torture).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropr import message as m
from dropr.config import Peer
from dropr.spool import DIRECT_MIN, IN_STATES, OUT_STATES, TMP_MAX_AGE, Spool
from dropr.spool._fs import FS
from dropr.spool._trace import Event, TracingFS

PAGE = 4096
KNOWN: dict[str, str] = {}  # scenario -> a violation its states show, found and not yet fixed
# (CLAIM_NOT_SYNCED was one: a claim's rename never synced, fixed in Leases.claim, #16)


A = Peer("a", "http://127.0.0.1:9/a/")
B = Peer("b", "http://127.0.0.1:9/b/")
MOVES = {("queued", "sent"), ("sent", "processed"), ("queued", "dead"), ("sent", "dead")}

Entry = tuple[str, Any]  # ("dir", None) | ("file", inode number) | ("sym", target)


# -- recording ---------------------------------------------------------------------


@dataclass
class Promise:
    """What a scenario told its caller, after `at` operations: an id is safe."""

    at: int
    box: str  # "out": put for peers; "in": stored from origin
    ident: str
    payload: bytes
    where: tuple[str, ...]  # out: the peers; in: (origin,)


@dataclass
class Upload:
    """A message a scenario received, as a sender that got no answer would send it again."""

    origin: str
    hdr: m.Header
    payload: bytes


@dataclass
class Recording:
    """One scenario's run: the world before it, its operations, its promises."""

    name: str
    world: str
    root: str
    snap: dict[str, Entry]
    data: dict[int, bytes]
    mtimes: dict[int, float]
    events: list[Event]
    promises: list[Promise] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)


class Run:
    """A scenario being recorded: set a spool up, snapshot, then record library calls."""

    def __init__(self, name: str, world: Path) -> None:
        self.name = name
        self.world = world
        self.root = world / "var" / "spool" / "dropr"
        (world / "var").mkdir(parents=True, exist_ok=True)
        self.fs: TracingFS | None = None
        self.promises: list[Promise] = []
        self.uploads: list[Upload] = []
        self.snap: tuple[dict[str, Entry], dict[int, bytes], dict[int, float]] | None = None

    def plain(self) -> Spool:
        """The spool without recording (setup)."""
        return Spool(str(self.root))

    def record(self) -> Spool:
        """Snapshot the world; return the spool opened with a recording FS."""
        self.snap = read_tree(str(self.world))
        self.fs = TracingFS()
        return Spool(str(self.root), fs=self.fs)

    @property
    def at(self) -> int:
        return len(self.fs.events) if self.fs is not None else 0

    def promise(self, box: str, ident: str, payload: bytes, *where: str) -> None:
        """Note a promise made now (at 0 during setup: the snapshot holds it durably)."""
        self.promises.append(Promise(self.at, box, ident, payload, where))

    def done(self) -> Recording:
        assert self.snap is not None and self.fs is not None
        snap, data, mtimes = self.snap
        return Recording(self.name, str(self.world), str(self.root), snap, data, mtimes,
                         list(self.fs.events), self.promises, self.uploads)  # fmt: skip


def read_tree(world: str) -> tuple[dict[str, Entry], dict[int, bytes], dict[int, float]]:
    """Return the entries, file contents and mtimes of a folder tree (sockets skipped)."""
    entries: dict[str, Entry] = {world: ("dir", None)}
    data: dict[int, bytes] = {}
    mtimes: dict[int, float] = {}
    inos: dict[int, int] = {}
    for top, dirs, files in os.walk(world):
        for d in dirs:
            p = os.path.join(top, d)
            entries[p] = ("sym", os.readlink(p)) if os.path.islink(p) else ("dir", None)
        for f in files:
            p = os.path.join(top, f)
            st = os.lstat(p)
            if os.path.islink(p):
                entries[p] = ("sym", os.readlink(p))
            elif os.path.isfile(p):
                ino = inos.setdefault(st.st_ino, -1 - len(inos))  # snapshot inodes: negative
                data[ino] = Path(p).read_bytes()
                mtimes[ino] = st.st_mtime
                entries[p] = ("file", ino)
    return entries, data, mtimes


def put(run: Run, sp: Spool, payloads: list[bytes], peers: list[Peer], ident: str | None = None) -> list[str]:
    """Put payloads in one batch; promise each id once the commit returned."""
    batch = sp.batch(peers)
    for p in payloads:
        batch.add(p, ident)
    ids = batch.commit()
    for i, p in zip(ids, payloads, strict=True):
        run.promise("out", i, p, *(peer.name for peer in peers))
    return ids


def store(run: Run, sp: Spool, payloads: list[bytes], *, origin: str = "web1", channel: str = "default",
          ident: str | None = None) -> list[str]:  # fmt: skip
    """Receive payloads as dropr-serve does and store them; promise each one answered stored."""
    items = []
    for p in payloads:
        i, created = sp.ids.new()
        hdr = m.Header(ident or i, channel, 5, created, 0, len(p), m.crc32(p))
        items.append(_part(sp, origin, hdr, p))
        run.uploads.append(Upload(origin, hdr, p))
    try:
        answers = sp.store(origin, [(path, hdr, fd) for path, hdr, fd in items])
    finally:
        for _, _, fd in items:
            if fd >= 0:
                os.close(fd)
    for (_, hdr, _), p, answer in zip(items, payloads, answers, strict=True):
        if answer in ("stored", "duplicate"):
            run.promise("in", hdr.ident, p, origin)
    return answers


def _part(sp: Spool, origin: str, hdr: m.Header, payload: bytes) -> tuple[str, m.Header, int]:
    part = sp.open_part(origin, hdr)
    for i in range(0, len(payload), 1 << 20):
        part.write(payload[i : i + (1 << 20)])
    part.close()
    return part.path, hdr, part.fd if part.entry else -1


# -- scenarios ------------------------------------------------------------------------


def sc_first_put(run: Run) -> None:
    """The first put of a new spool, whose folder and parent do not exist yet."""
    put(run, run.record(), [b"first"], [A])


def sc_put(run: Run) -> None:
    run.plain().batch([A])
    put(run, run.record(), [b"one message"], [A])


def sc_bulk_put(run: Run) -> None:
    """More than SYNC_EACH_MAX messages: one syncfs (group commit)."""
    run.plain().batch([A])
    put(run, run.record(), [b"bulk %d" % i * 50 for i in range(6)], [A])


def sc_multicast_put(run: Run) -> None:
    put(run, run.record(), [b"to both", b"and again"], [A, B])


def sc_bulk_multicast_put(run: Run) -> None:
    """A batch of a dozen for two peers: many names unsynced at once before the fsyncs."""
    run.plain().batch([A, B])
    put(run, run.record(), [b"many %d" % i for i in range(12)], [A, B])


def sc_put_chosen_id(run: Run) -> None:
    run.plain().batch([A])
    put(run, run.record(), [b"chosen"], [A], ident="order-42")


def sc_store(run: Run) -> None:
    sp = run.plain()
    store(run, sp, [b"warm"])  # rcv/web1 and in/default exist
    sp = run.record()
    store(run, sp, [b"small one", b"small two"])
    store(run, sp, [b"chosen id"], ident="job-7")


def sc_store_new_channel(run: Run) -> None:
    """The first store of a spool: rcv/<origin> and the channel's folders are made."""
    run.plain()
    store(run, run.record(), [b"first in"], channel="jobs")


def sc_store_batch(run: Run) -> None:
    sp = run.plain()
    store(run, sp, [b"warm"])
    store(run, run.record(), [b"batch %d" % i for i in range(6)])


def sc_store_mixed_batch(run: Run) -> None:
    """A dozen received in one request: two channels, generated and chosen ids."""
    sp = run.plain()
    store(run, sp, [b"warm"])
    sp = run.record()
    items, payloads = [], []
    for i in range(12):
        gen, created = sp.ids.new()
        p = b"mixed %d" % i
        hdr = m.Header(
            gen if i % 3 else f"job-{i}", ("default", "jobs")[i % 2], 5, created, 0, len(p), m.crc32(p)
        )
        items.append(_part(sp, "web2", hdr, p))
        payloads.append(p)
        run.uploads.append(Upload("web2", hdr, p))
    try:
        answers = sp.store("web2", items)
    finally:
        for _, _, fd in items:
            if fd >= 0:
                os.close(fd)
    for (_, hdr, _), p, answer in zip(items, payloads, answers, strict=True):
        assert answer == "stored", answer
        run.promise("in", hdr.ident, p, "web2")


def sc_store_big(run: Run) -> None:
    """A DirectWriter-sized message (DIRECT_MIN): a tmp file, moved into ready."""
    sp = run.plain()
    store(run, sp, [b"warm"])
    big = random.Random(7).randbytes(DIRECT_MIN + 1000)
    store(run, run.record(), [big])


def sc_duplicate_store(run: Run) -> None:
    sp = run.plain()
    ident, created = sp.ids.new()
    hdr = m.Header(ident, "default", 5, created, 0, 4, m.crc32(b"once"))
    _store_hdr(run, sp, hdr, b"once")
    _store_hdr(run, run.record(), hdr, b"once")


def _store_hdr(run: Run, sp: Spool, hdr: m.Header, payload: bytes) -> None:
    item = _part(sp, "web1", hdr, payload)
    run.uploads.append(Upload("web1", hdr, payload))
    try:
        [answer] = sp.store("web1", [item])
    finally:
        if item[2] >= 0:
            os.close(item[2])
    assert answer in ("stored", "duplicate"), answer
    run.promise("in", hdr.ident, payload, "web1")


def _inbox(run: Run, n: int, *, claim: bool = True, lease: float = 60) -> Spool:
    sp = run.plain()
    store(run, sp, [b"inbox %d" % i for i in range(n)])
    if claim:
        sp.claim("default", n, lease)
    return sp


def _claimed(sp: Spool) -> list[str]:
    return sp.in_names("default", "claimed")


def sc_claim(run: Run) -> None:
    _inbox(run, 2, claim=False)
    run.record().claim("default", 2, 60)


def sc_claim_ack(run: Run) -> None:
    """A claim and its ack, neither synced (dropr-recv, then dropr-ack)."""
    _inbox(run, 1, claim=False)
    sp = run.record()
    [c] = sp.claim("default", 1, 60)
    sp.leases.ack("default", c.name)


def sc_ack(run: Run) -> None:
    sp = _inbox(run, 2)
    sp = run.record()
    for name in _claimed(sp):
        sp.leases.ack("default", name)


def sc_release(run: Run) -> None:
    sp = _inbox(run, 2)
    first, second = _claimed(sp)
    sp = run.record()
    sp.leases.release("default", first)
    sp.leases.release("default", second, delay=30)


def sc_reject(run: Run) -> None:
    sp = _inbox(run, 1)
    [name] = _claimed(sp)
    run.record().leases.reject("default", name, "bad")


def sc_lease_expiry(run: Run) -> None:
    sp = _inbox(run, 2)
    for name in _claimed(sp):
        past = time.time() - 10
        os.utime(sp.path("in", "default", "claimed", name), (past, past))
    run.record().leases.sweep_channel("default")


def _outbox(run: Run, n: int) -> tuple[Spool, list[str]]:
    sp = run.plain()
    put(run, sp, [b"out %d" % i for i in range(n)], [A])
    return sp, sp.out_names("a", "queued")


def sc_sender(run: Run) -> None:
    """The sender's transitions: sent, processed, dead."""
    _, (n1, n2, n3) = _outbox(run, 3)
    sp = run.record()
    sp.mark_sent("a", [n1, n2])
    sp.mark_processed("a", [n1])
    sp.kill("a", [n3], "refused by peer")


def sc_receipts(run: Run) -> None:
    """Receipts: processed, dead at the peer, and a lost receipt noted."""
    sp, (n1, n2, n3) = _outbox(run, 3)
    sp.mark_sent("a", [n1, n2, n3])
    sp = run.record()
    sp.mark_processed("a", [n1])
    sp.kill("a", [n2], "dead at peer", state="sent")
    sp.out_note("a", m.split_out_name(n3)[1], unknown_at=m.now_us())


def sc_purge(run: Run) -> None:
    """Purge of finished entries and of crash leftovers in tmp/ and rcv/."""
    sp, (n1, n2) = _outbox(run, 2)
    sp.mark_sent("a", [n1])
    sp.mark_processed("a", [n1])
    store(run, sp, [b"done one", b"ready one"])
    [c] = sp.claim("default", 1, 60)
    sp.leases.ack("default", c.name)
    old = time.time() - TMP_MAX_AGE - 10
    for name in ("1.1.leftover", "1.2.rcv,web1,gone"):
        Path(sp.tmp, name).write_bytes(b"debris")
        os.utime(Path(sp.tmp, name), (old, old))
    run.promises = [p for p in run.promises if p.payload not in (b"out 0", b"done one")]
    run.record().purge(now=time.time() + 8 * 86400)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    f.__name__[3:]: f
    for f in (
        sc_first_put,
        sc_put,
        sc_bulk_put,
        sc_multicast_put,
        sc_bulk_multicast_put,
        sc_put_chosen_id,
        sc_store,
        sc_store_new_channel,
        sc_store_batch,
        sc_store_mixed_batch,
        sc_store_big,
        sc_duplicate_store,
        sc_claim,
        sc_claim_ack,
        sc_ack,
        sc_release,
        sc_reject,
        sc_lease_expiry,
        sc_sender,
        sc_receipts,
        sc_purge,
    )  # fmt: skip
}


def record(name: str, world: Path) -> Recording:
    """Run one scenario in world (an empty folder); return its recording."""
    if name.startswith("strace_"):  # the installed commands under strace (crash_strace)
        import crash_strace as cs

        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
        if name == "strace_put":
            return cs.traced_put(world, b"traced payload\n", A.url, env)
        return cs.traced_recv_ack(world, [b"first", b"second"], env)
    run = Run(name, world)
    old = os.environ.get("DROPR_NODE")
    os.environ["DROPR_NODE"] = "here"
    try:
        SCENARIOS[name](run)
    finally:
        if old is None:
            del os.environ["DROPR_NODE"]
        else:
            os.environ["DROPR_NODE"] = old
    return run.done()


# -- the model ------------------------------------------------------------------------


@dataclass
class Op:
    """A recorded operation resolved to inodes: what a crash may or may not keep."""

    i: int  # its index: it ran at crash points k > i
    kind: str  # name (a name op), data, time, fsync, fsync_dir, syncfs
    path: str = ""  # the name made or removed (rename: the new name)
    src: str = ""  # rename: the old name
    entry: Entry | None = None
    ino: int = 0
    dirs: tuple[str, ...] = ()  # a name op: the folders whose fsync makes it durable
    write: tuple[int, bytes] | None = None  # data: (offset, bytes); None: truncate to 0
    mtime: float = 0.0


NAME_OPS = ("create", "mkdir", "link", "symlink", "unlink", "rename")


def resolve(rec: Recording) -> list[Op]:
    """Replay a recording on names alone, binding each operation to its inode."""
    ns = dict(rec.snap)
    fds: dict[int, int] = {}
    nxt = 1
    ops: list[Op] = []
    for i, ev in enumerate(rec.events):
        name, paths = ev.name, ev.paths
        if name == "create":
            [p] = paths
            old = ns.get(p)
            if old is not None and old[0] == "file":
                fds[ev.fd] = old[1]
                if ev.flags & os.O_TRUNC:
                    ops.append(Op(i, "data", ino=old[1], mtime=ev.at))
                continue
            ns[p] = ("file", nxt)
            fds[ev.fd] = nxt
            ops.append(Op(i, "create", p, entry=ns[p], ino=nxt, dirs=(_up(p),)))
            nxt += 1
        elif name == "open_sync":
            if ns.get(paths[0], ("",))[0] == "file":  # (strace: any open for reading)
                fds[ev.fd] = ns[paths[0]][1]
        elif name in ("write", "pwrite") and ev.fd in fds:
            ops.append(Op(i, "data", ino=fds[ev.fd], write=(ev.offset, ev.data), mtime=ev.at))
        elif name in ("fsync", "fdatasync") and ev.fd in fds:
            ops.append(Op(i, "fsync", ino=fds[ev.fd]))
        elif name == "syncfs":
            ops.append(Op(i, "syncfs"))
        elif name == "fsync_dir":
            ops.append(Op(i, "fsync_dir", paths[0]))
        elif name == "mkdir":
            ns[paths[0]] = ("dir", None)
            ops.append(Op(i, "mkdir", paths[0], entry=ns[paths[0]], dirs=(_up(paths[0]),)))
        elif name == "symlink":
            target, p = paths
            ns[p] = ("sym", target)
            ops.append(Op(i, "symlink", p, entry=ns[p], dirs=(_up(p),)))
        elif name == "link":
            src, dst = paths
            ns[dst] = ns[src]
            ops.append(Op(i, "link", dst, entry=ns[dst], dirs=(_up(dst),)))
        elif name == "unlink":
            ops.append(Op(i, "unlink", paths[0], entry=ns.pop(paths[0]), dirs=(_up(paths[0]),)))
        elif name == "rename":
            src, dst = paths
            ns[dst] = ns.pop(src)
            ops.append(Op(i, "rename", dst, src, ns[dst], dirs=tuple({_up(src), _up(dst)})))
        elif name == "utime":
            e = ns[paths[0]]
            mtime = ev.times[1] if ev.times is not None else ev.at
            ops.append(Op(i, "time", paths[0], ino=e[1], mtime=mtime))
        # close and give_to_group change nothing a crash could lose
    return ops


def _up(path: str) -> str:
    return os.path.dirname(path)


def durable(ops: list[Op], k: int) -> set[int]:
    """Return the indexes (in ops) of the operations that ran before k and are durable at k."""
    out: set[int] = set()
    synced_all = -1  # index of the last syncfs before k
    dir_sync: dict[str, int] = {}  # folder -> index of its last fsync before k
    file_sync: dict[int, int] = {}  # inode -> index of its last fsync before k
    for op in ops:
        if op.i >= k:
            break
        if op.kind == "syncfs":
            synced_all = op.i
        elif op.kind == "fsync_dir":
            dir_sync[op.path] = op.i
        elif op.kind == "fsync":
            file_sync[op.ino] = op.i
    for n, op in enumerate(ops):
        if op.i >= k:
            break
        if op.i < synced_all:
            out.add(n)
        elif op.kind in NAME_OPS:
            if all(dir_sync.get(d, -1) > op.i for d in op.dirs):
                out.add(n)
        elif op.kind in ("data", "time") and file_sync.get(op.ino, -1) > op.i:
            out.add(n)
    return out


@dataclass
class State:
    """One on-disk state a crash can leave: its names, contents and mtimes."""

    entries: dict[str, Entry]
    data: dict[int, bytes]
    mtimes: dict[int, float]
    how: str  # the crash point and the choices, for a report
    k: int = 0  # the crash point: the first k operations ran

    def names_key(self) -> str:
        """A digest that is equal for trees with equal names (contents aside)."""
        return hashlib.sha256(repr(sorted(self.entries.items())).encode()).hexdigest()

    def key(self) -> str:
        """A digest that is equal for equal trees."""
        h = hashlib.sha256()
        for p in sorted(self.entries):
            kind, x = self.entries[p]
            h.update(f"{p}\0{kind}\0".encode())
            if kind == "file":
                h.update(f"{x}\0{round(self.mtimes.get(x, 0), 3)}\0".encode())
                h.update(hashlib.sha256(self.data.get(x, b"")).digest())
            else:
                h.update(f"{x}\0".encode())
        return h.hexdigest()


def build(rec: Recording, ops: list[Op], k: int, keep: set[int], variants: dict[int, str],
          rng: random.Random) -> State:  # fmt: skip
    """Apply to the snapshot the operations before k that are durable or chosen (keep), and
    the data of each inode as its variant says: durable, all, torn or hole."""
    entries = dict(rec.snap)
    data = dict(rec.data)
    mtimes = dict(rec.mtimes)
    dur = durable(ops, k)
    pending: dict[int, list[Op]] = {}
    for n, op in enumerate(ops):
        if op.i >= k:
            break
        if op.kind == "data":
            if n in dur:
                data[op.ino] = _apply(data.get(op.ino, b""), op)
                mtimes[op.ino] = op.mtime
            else:
                pending.setdefault(op.ino, []).append(op)
        elif op.kind == "time":
            if n in dur or n in keep:
                mtimes[op.ino] = op.mtime
        elif op.kind in NAME_OPS and (n in dur or n in keep):
            _name_op(entries, op)
            if op.kind == "create":
                data.setdefault(op.ino, b"")
                mtimes.setdefault(op.ino, op.mtime or time.time())
    for ino, writes in pending.items():
        data[ino], mtimes[ino] = _variant(data.get(ino, b""), mtimes.get(ino, 0.0), writes,
                                           variants.get(ino, "durable"), rng)  # fmt: skip
    choices = ",".join(f"{ops[n].kind}:{_short(rec, ops[n].path)}" for n in sorted(keep))
    shown = ",".join(f"{ino}:{v}" for ino, v in sorted(variants.items()) if ino in pending)
    return State(entries, data, mtimes, f"k={k} kept=[{choices}] data=[{shown}]", k)


def _short(rec: Recording, path: str) -> str:
    return os.path.relpath(path, rec.root) if path else ""


def _name_op(entries: dict[str, Entry], op: Op) -> None:
    """Apply a name operation, if its folder is there (a name never outlives its folder)."""
    if entries.get(_up(op.path), ("",))[0] != "dir":
        return
    if op.kind == "unlink":
        if entries.get(op.path) == op.entry:
            del entries[op.path]
        return
    if op.kind == "rename" and entries.get(op.src) == op.entry:
        del entries[op.src]
    assert op.entry is not None
    entries[op.path] = op.entry


def _apply(content: bytes, op: Op) -> bytes:
    if op.write is None:
        return b""
    off, chunk = op.write
    if len(content) < off:
        content += bytes(off - len(content))
    return content[:off] + chunk + content[off + len(chunk) :]


def _variant(
    base: bytes, mtime: float, writes: list[Op], how: str, rng: random.Random
) -> tuple[bytes, float]:
    """The content of a file whose last writes were not synced, as how says."""
    if how == "durable":
        return base, mtime
    full = base
    for op in writes:
        full = _apply(full, op)
    last = writes[-1].mtime
    if how == "all" or len(full) == 0:
        return full, last
    if how == "torn":
        return full[: rng.randrange(0, len(full))], last
    start = rng.randrange(0, max(1, len(full) // PAGE)) * PAGE  # hole: one page of zeros
    end = min(len(full), start + PAGE)
    return full[:start] + bytes(end - start) + full[end:], last


def choices(ops: list[Op], k: int) -> tuple[list[int], list[int]]:
    """Return (what may or may not have reached the disk at k: name and time operations,
    the inodes whose data is not synced)."""
    dur = durable(ops, k)
    loose = [n for n, op in enumerate(ops) if op.i < k and n not in dur and op.kind in (*NAME_OPS, "time")]
    inos = sorted({op.ino for n, op in enumerate(ops) if op.i < k and n not in dur and op.kind == "data"})
    return loose, inos


VARIANTS = ("durable", "all", "torn", "hole")


def states(rec: Recording, budget: int, seed: int = 0, seen: set[str] | None = None) -> Iterator[State]:
    """Yield crash states of a recording not in seen (added to it), up to about budget
    (distinct: in their tree, or in what was promised before the crash):
    every crash point gets a share. A point with few choices gets each combination of
    its names kept or lost and its unsynced files as synced or whole; then (and at a
    point with many choices) a seeded sample, files also torn or holed at random."""
    ops = resolve(rec)
    rng = random.Random(seed)
    seen = set() if seen is None else seen
    points = list(range(len(rec.events) + 1))
    share = max(2, budget // len(points))
    for k in points:
        loose, inos = choices(ops, k)
        made = 0
        due = sum(p.at <= k for p in rec.promises)  # a tree is checked anew once more is promised
        for keep, var in _combinations(loose, inos, share, rng):
            st = build(rec, ops, k, keep, var, rng)
            key = f"{st.key()}:{due}"
            if key in seen:
                continue
            seen.add(key)
            made += 1
            yield st
            if made >= share:
                break


def _combinations(
    loose: list[int], inos: list[int], share: int, rng: random.Random
) -> Iterator[tuple[set[int], dict[int, str]]]:
    """The choices to try at one crash point: all of them if there are at most share
    of them (files synced or whole), then 4 * share seeded draws."""
    if 2 ** (len(loose) + len(inos)) <= share:
        for bits in range(2 ** (len(loose) + len(inos))):
            keep = {n for j, n in enumerate(loose) if bits >> j & 1}
            var = {ino: VARIANTS[bits >> (len(loose) + j) & 1] for j, ino in enumerate(inos)}
            yield keep, var
    else:
        yield set(), dict.fromkeys(inos, "durable")
        yield set(loose), dict.fromkeys(inos, "all")
    for _ in range(4 * share):
        yield {n for n in loose if rng.random() < 0.5}, {ino: rng.choice(VARIANTS) for ino in inos}


def materialise(rec: Recording, st: State, dest: str) -> str:
    """Make a state a real tree at dest (the world's place); return the spool root there."""
    made: dict[int, str] = {}
    for p in sorted(st.entries, key=lambda p: (p.count("/"), p)):
        kind, x = st.entries[p]
        q = dest + p[len(rec.world) :]
        if kind == "dir":
            os.makedirs(q, 0o700, exist_ok=True)
        elif kind == "sym":
            os.symlink(x, q)
        elif x in made:
            os.link(made[x], q)
        else:
            with open(q, "wb") as f:
                f.write(st.data.get(x, b""))
            made[x] = q
    for ino, q in made.items():
        t = st.mtimes.get(ino, time.time())
        os.utime(q, (t, t))
    return dest + rec.root[len(rec.world) :]


# -- recovery and checks ---------------------------------------------------------------


def check(rec: Recording, root: str, k: int) -> list[str]:
    """Recover a crash state at root as the commands do at start-up; return the violations."""
    due = [p for p in rec.promises if p.at <= k]
    if not os.path.isdir(os.path.join(root, "tmp")):
        return [f"spool lost: {p.box} id={p.ident} was promised" for p in due]
    sp = Spool(root, fs=NoSyncFS())  # as dropr-put, dropr-send and dropr-recv open it
    sp.purge(now=time.time() + TMP_MAX_AGE + 3600)  # the tmp and rcv sweeps see every leftover
    bad: list[str] = []
    out = _outbox_places(sp, bad)
    for ch in sp.channels():
        sp.claim(ch, 1 << 20, 60)
    payloads = {(u.origin, u.hdr.ident): u.payload for u in rec.uploads}
    inbox = _inbox_places(sp, payloads, bad)
    for p in due:
        if p.box == "out":
            for peer in p.where:
                _check_out(sp, peer, p, out.get((peer, p.ident), []), bad)
        else:
            got = inbox.get((p.where[0], p.ident), [])
            if len(got) != 1:
                bad.append(f"stored id={p.ident} is in {len(got)} inbox places: {got}")
    _resend(sp, rec, bad)
    return bad


class NoSyncFS(FS):
    """The real FS without its syncs: recovery is checked for what it does, not crashed
    again, and a real fsync per step made a long run wait on the disk."""

    def fsync(self, fd: int) -> None:
        """Do not sync."""

    def fdatasync(self, fd: int) -> None:
        """Do not sync."""

    def syncfs(self, path: str) -> None:
        """Do not sync."""

    def fsync_dir(self, path: str) -> None:
        """Do not sync."""


def _outbox_places(sp: Spool, bad: list[str]) -> dict[tuple[str, str], list[tuple[str, str, int]]]:
    """Map (peer, id) -> [(state, name, inode)]; every file must be a whole message."""
    places: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for peer in sp.out_peers():
        for state in OUT_STATES:
            for name in sp.out_names(peer, state):
                path = sp.path("out", peer, state, name)
                ident = m.split_out_name(name)[1]
                try:
                    hdr = sp.read_header(peer, state, name)
                    with open(path, "rb") as f:
                        f.seek(m.HEADER_SIZE)
                        if m.crc32(f.read()) != hdr.crc:
                            raise ValueError("payload checksum differs from the header's")
                except ValueError as exc:
                    bad.append(f"partial outbox file out/{peer}/{state}/{name}: {exc}")
                places.setdefault((peer, ident), []).append((state, name, os.lstat(path).st_ino))
    return places


def _check_out(sp: Spool, peer: str, p: Promise, got: list[tuple[str, str, int]], bad: list[str]) -> None:
    """A printed id is in one state for peer, or in several, one file, that a crash of a move
    left (a link kept, the unlink of an earlier state lost), which the next send pass
    completes: resent, the peer answers duplicate, or its receipt or refusal again."""
    states = sorted({s for s, _, _ in got}, key=OUT_STATES.index)
    if not states:
        bad.append(f"printed id={p.ident} is lost for peer {peer}")
        return
    name = got[0][1]
    if len({ino for _, _, ino in got}) != 1 or len({n for _, n, _ in got}) != 1:
        bad.append(f"printed id={p.ident} is in {got} for peer {peer}, not one file")
        return
    if ("processed" in states and "dead" in states) or len(states) > 3:
        bad.append(f"printed id={p.ident} is in {states} for peer {peer}")
        return
    last = states[-1]
    while len(states) > 1:
        first = states[0]
        if first == "queued" and last != "dead":
            sp.mark_sent(peer, [name])
        elif first == "sent" and last == "processed":
            sp.mark_processed(peer, [name])
        else:
            sp.kill(peer, [name], "again", state=first)
        states = [s for s in OUT_STATES if os.path.lexists(sp.path("out", peer, s, name))]
    if states != [last]:
        bad.append(f"printed id={p.ident} is in {states} after the next moves, for peer {peer}")
        return
    with open(sp.path("out", peer, last, name), "rb") as f:
        f.seek(m.HEADER_SIZE)
        if f.read() != p.payload:
            bad.append(f"printed id={p.ident} has another payload in out/{peer}/{last}/{name}")


def _inbox_places(
    sp: Spool, payloads: dict[tuple[str, str], bytes], bad: list[str]
) -> dict[tuple[str, str], list[str]]:
    """Map (origin, id) -> its inbox places; each must be whole, once, and indexed."""
    places: dict[tuple[str, str], list[str]] = {}
    for ch in sp.channels():
        for state in IN_STATES:
            for name in sp.in_names(ch, state):
                _, _, origin, ident = m.parse_in_name(name)
                path = sp.path("in", ch, state, name)
                places.setdefault((origin, ident), []).append(f"{ch}/{state}")
                want = payloads.get((origin, ident))
                if want is not None and Path(path).read_bytes() != want:
                    bad.append(f"partial inbox file in/{ch}/{state}/{name}")
                if not os.path.lexists(sp.path("rcv", origin, ident)):
                    bad.append(f"inbox message in/{ch}/{state}/{name} has no rcv/ entry")
    for key, where in places.items():
        if len(where) > 1:
            bad.append(f"inbox holds {key} twice: {where}")
    return places


def _resend(sp: Spool, rec: Recording, bad: list[str]) -> None:
    """Send every upload again, as a sender that heard no answer would: each must end up
    in the inbox exactly once."""
    for u in rec.uploads:
        item = _part(sp, u.origin, u.hdr, u.payload)
        try:
            [answer] = sp.store(u.origin, [item])
        finally:
            if item[2] >= 0:
                os.close(item[2])
        if answer not in ("stored", "duplicate"):
            bad.append(f"resent id={u.hdr.ident} answered {answer}")
    places = _inbox_places(sp, {(u.origin, u.hdr.ident): u.payload for u in rec.uploads}, bad)
    for u in rec.uploads:
        n = len(places.get((u.origin, u.hdr.ident), []))
        if n != 1:
            bad.append(f"resent id={u.hdr.ident} is in the inbox {n} times")


# -- exploring -------------------------------------------------------------------------


@dataclass
class Report:
    """What an exploration checked and found."""

    states: dict[str, int] = field(default_factory=dict)
    layouts: dict[str, set[str]] = field(default_factory=dict)  # distinct in their names alone
    bad: dict[str, int] = field(default_factory=dict)  # scenario -> states with a violation
    violations: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.states.values())


def explore(
    names: list[str],
    budget: int,
    work: Path,
    seed: int = 0,
    stop_after: int = 20,
    target: int = 0,
    trees: Path | None = None,
) -> Report:
    """Record each scenario and check up to budget of its crash states; then, until target
    states in all are checked, more rounds with other seeds, while they find new ones.
    The recordings are made in work, the states' trees in trees (default: work)."""
    report = Report()
    recs = {}
    seen: dict[str, set[str]] = {}
    for name in names:
        world = work / name / "world"
        world.mkdir(parents=True)
        recs[name] = record(name, world)
        seen[name] = set()
        report.states[name] = 0
        report.layouts[name] = set()
        report.bad[name] = 0
    for rnd in range(64):
        before = report.total
        for name in names:
            for st in states(recs[name], budget, seed + rnd, seen[name]):
                report.states[name] += 1
                report.layouts[name].add(f"{st.names_key()}:{sum(p.at <= st.k for p in recs[name].promises)}")
                _check_one(recs[name], st, trees or work, report)
                if sum(n for sc, n in report.bad.items() if sc not in KNOWN) >= stop_after:
                    return report
        if report.total >= target or report.total - before < max(1, target // 1000):
            break
    return report


def _check_one(rec: Recording, st: State, work: Path, report: Report) -> None:
    dest = tempfile.mkdtemp(dir=work)
    try:
        bad = check(rec, materialise(rec, st, dest), st.k)
    except Exception as exc:  # noqa: BLE001 - a crash of recovery is a finding too
        bad = [f"recovery raised {type(exc).__name__}: {exc}"]
    if bad:
        report.bad[rec.name] += 1
        if report.bad[rec.name] <= 3:  # the first few of each scenario, described
            report.violations.append(_describe(rec, st, dest, bad))
            return
    shutil.rmtree(dest)


def _describe(rec: Recording, st: State, dest: str, bad: list[str]) -> str:
    k = st.k
    ops = "\n".join(f"  {i:3} {ev.name} {' '.join(_short(rec, p) for p in ev.paths)}"
                    for i, ev in enumerate(rec.events[:k]))  # fmt: skip
    tree = "\n".join(
        f"  {_short(rec, p)} {e[0]}" for p, e in sorted(st.entries.items()) if p.startswith(rec.root)
    )
    return (
        f"scenario {rec.name}, crash after {k} ops, {st.how}\n"
        + "\n".join(bad)
        + (f"\nops:\n{ops}\ntree (kept at {dest}):\n{tree}")
    )


def main(argv: list[str] | None = None) -> int:
    """Explore every scenario's crash states; print the counts; exit 1 on a violation."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=30000, help="at least this many states in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", action="append", help="only these (default: all)")
    args = ap.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    if not args.scenario:
        import crash_strace

        if crash_strace.have_strace():
            names += ["strace_put", "strace_recv_ack"]
    budget = -(-args.states // len(names))
    start = time.monotonic()
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # trees made and dropped fast
    with (
        tempfile.TemporaryDirectory(prefix="dropr-crash-") as work,
        tempfile.TemporaryDirectory(prefix="dropr-crash-", dir=shm) as trees,
    ):
        report = explore(names, budget, Path(work), args.seed, 50, args.states, Path(trees))
        for v in report.violations:
            print(v, end="\n\n")
    known = sum(n for sc, n in report.bad.items() if sc in KNOWN)
    found = sum(report.bad.values())
    print(f"{'scenario':20} {'states':>6} {'names':>6} {'bad':>5}  (names: distinct in their names alone)")
    for name, n in report.states.items():
        print(f"{name:20} {n:6} {len(report.layouts[name]):6} {report.bad[name]:5}")
    print(f"crash states checked: {report.total} ({sum(map(len, report.layouts.values()))} in names), "
          f"violations: {found} ({known} known, of {', '.join(KNOWN)}), "
          f"seed {args.seed}, {time.monotonic() - start:.0f} s")  # fmt: skip
    return 1 if found > known else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # crash_strace, beside this file
    sys.exit(main())


def state_at(rec: Recording, k: int, keep: Callable[[Op], bool] = lambda op: False) -> State:
    """The state at crash point k with the unsynced operations keep picks, every unsynced
    file's data as last synced (for a regression test of one state)."""
    ops = resolve(rec)
    loose, _ = choices(ops, k)
    return build(rec, ops, k, {n for n in loose if keep(ops[n])}, {}, random.Random(0))


def point(rec: Recording, name: str, path_end: str, nth: int = 0) -> int:
    """The index of the nth operation name on a path ending in path_end (crash before it)."""
    hits = [i for i, ev in enumerate(rec.events) if ev.name == name and ev.paths[-1].endswith(path_end)]
    return hits[nth]
