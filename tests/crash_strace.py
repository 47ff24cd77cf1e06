"""The real binaries too: a `strace -f -y -xx` log of a dropr command, read as the
recording FS's events, so the crash-state explorer replays what the binary did.

Only the calls that change a file or a folder under the world folder count, as
they do at the seam (opens that create, writes, syncs, names, times); reads do not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from crash_explorer import Promise, Recording, read_tree
from dropr.spool._fs import SUM_XATTR
from dropr.spool._trace import Event

STRACE = ["strace", "-f", "-y", "-xx", "-s", str(1 << 24), "-qq"]
FD_TABLE = 1 << 20  # an event's fd: FD_TABLE * its descriptor table (a pid) + the descriptor
_END = re.compile(r"(.*)\)\s+= (-?\d+)(<[^>]*>)?")
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_TOKEN = re.compile(
    r'"(?:\\x[0-9a-f]{2})*"|\w+<(?:\\x[0-9a-f]{2})*>(?:\(deleted\))?|\[[^\]]*\]|\{[^}]*\}|[^,\s][^,]*'
)


def have_strace() -> bool:
    """Whether strace is installed and may trace here (ptrace allowed)."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run([*STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0


def _hex(token: str) -> str:
    """Decode a -xx string "\\x41..." or annotation NAME<\\x41...>."""
    token = token.removesuffix("(deleted)")
    body = token[token.index("<") + 1 : -1] if token.endswith(">") else token.strip('"')
    return bytes.fromhex(body.replace("\\x", "")).decode("utf-8", "surrogateescape")


def _hexbytes(token: str) -> bytes:
    return bytes.fromhex(token.strip('"').replace("\\x", ""))


def calls(log: str) -> list[tuple[int, str, list[str], int, str]]:
    """Return (descriptor table, syscall, argument tokens, result, result's path) of each
    finished call, in the order strace saw them finish. A descriptor table is named by the
    first process that had it: a thread (clone with CLONE_FILES) shares its creator's."""
    pending: dict[str, str] = {}
    out = []
    parent: dict[int, int] = {}  # a thread -> the process whose descriptors it shares
    for raw in Path(log).read_text().splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, text = m.groups()
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[: -len("<unfinished ...>")].rstrip()
            continue
        if text.startswith("<..."):
            text = pending.pop(pid, "") + text.split("resumed>", 1)[1]
        rm = _END.match(text)  # (strace pads the " = " of a short or resumed call with spaces)
        if rm is None or "(" not in rm.group(1) or int(rm.group(2)) < 0:
            continue
        name, _, args = rm.group(1).partition("(")
        ret = int(rm.group(2))
        if name in ("clone", "clone3") and "CLONE_FILES" in args:
            parent[ret] = int(pid)
        out.append(
            (int(pid), name, _TOKEN.findall(args), ret, _hex("x" + rm.group(3)) if rm.group(3) else "")
        )

    def table(pid: int) -> int:
        while pid in parent:  # (a thread's first calls may come before its clone returns)
            pid = parent[pid]
        return pid

    return [(table(pid), name, args, ret, path) for pid, name, args, ret, path in out]


def events(log: str, world: str, said: list[tuple[int, bytes]] | None = None) -> list[Event]:
    """The events of a strace log that change something under world, in order. A
    descriptor is told apart by its table (FD_TABLE * table + fd), as two processes'
    are not the same file. said: gets (how many events came before, bytes) of each
    write to a socket (what a server answered, and when)."""
    evs: list[Event] = []
    dirfds: set[int] = set()
    offsets: dict[int, int] = {}
    inside = world.rstrip("/") + "/"

    def path(dirtok: str, tok: str) -> str:
        p = _hex(tok)
        return p if p.startswith("/") else os.path.join(_hex(dirtok), p)

    for tab, name, a, ret, _ in calls(log):
        now = time.time()
        if name in ("openat", "open"):
            p = path(a[0], a[1]) if name == "openat" else _hex(a[0])
            flags = a[2] if name == "openat" else a[1]
            if not p.startswith(inside):
                continue
            fd = FD_TABLE * tab + ret
            offsets[fd] = 0
            if "O_DIRECTORY" in flags:
                dirfds.add(fd)
            elif "O_CREAT" in flags:
                f = (os.O_EXCL if "O_EXCL" in flags else 0) | (os.O_TRUNC if "O_TRUNC" in flags else 0)
                evs.append(Event("create", (p,), fd=fd, flags=f, at=now))
            else:
                evs.append(Event("open_sync", (p,), fd=fd, at=now))
            continue
        if not a:
            continue
        if name == "close":
            dirfds.discard(FD_TABLE * tab + int(a[0].split("<", 1)[0]))
            continue
        if name in ("write", "pwrite64", "lseek", "fsync", "fdatasync", "syncfs", "fsetxattr", "sendto"):
            fd, p = FD_TABLE * tab + int(a[0].split("<", 1)[0]), _hex(a[0]) if "<" in a[0] else ""
            if name in ("write", "sendto") and said is not None and p.startswith("socket:"):
                said.append((len(evs), _hexbytes(a[1])[:ret]))
            if p.startswith(inside):
                _fd_event(evs, name, a, ret, fd, p, offsets, fd in dirfds, now)
            continue
        ev = _name_event(name, a, path, now)
        if ev is not None and all(q.startswith(inside) for q in ev.paths[-1:]):
            evs.append(ev)
    return evs


def _fd_event(evs: list[Event], name: str, a: list[str], ret: int, fd: int, p: str, offsets: dict[int, int],
              is_dir: bool, now: float) -> None:  # fmt: skip
    """A call on a descriptor of a file (or folder) under the world, as an event."""
    if name == "lseek":
        offsets[fd] = ret
    elif name == "write":
        evs.append(Event("write", (), fd=fd, offset=offsets.get(fd, 0), data=_hexbytes(a[1])[:ret], at=now))
        offsets[fd] = offsets.get(fd, 0) + ret
    elif name == "pwrite64":
        evs.append(Event("pwrite", (), fd=fd, offset=int(a[3]), data=_hexbytes(a[1])[:ret], at=now))
    elif name == "syncfs":
        evs.append(Event("syncfs", (p,), at=now))
    elif name == "fsetxattr":
        if _hex(a[1]) == SUM_XATTR:
            evs.append(Event("set_sum", (), fd=fd, at=now))
    elif is_dir:
        evs.append(Event("fsync_dir", (p,), at=now))
    elif name != "sendto":
        evs.append(Event(name, (), fd=fd, at=now))


def _name_event(name: str, a: list[str], path: object, now: float) -> Event | None:
    """A create, link, unlink, rename, mkdir, symlink, utime or set_sum (by path) call as an event."""
    p2 = path  # (dirtok, tok) -> absolute path
    assert callable(p2)
    if name == "link":
        return Event("link", (_hex(a[0]), _hex(a[1])), at=now)
    if name == "linkat":
        return Event("link", (p2(a[0], a[1]), p2(a[2], a[3])), at=now)
    if name in ("unlink", "rmdir"):
        return Event("unlink", (_hex(a[0]),), at=now)
    if name == "unlinkat":
        return Event("unlink", (p2(a[0], a[1]),), at=now)
    if name == "rename":
        return Event("rename", (_hex(a[0]), _hex(a[1])), at=now)
    if name in ("renameat", "renameat2"):
        return Event("rename", (p2(a[0], a[1]), p2(a[2], a[3])), at=now)
    if name == "mkdir":
        return Event("mkdir", (_hex(a[0]),), at=now)
    if name == "mkdirat":
        return Event("mkdir", (p2(a[0], a[1]),), at=now)
    if name == "symlink":
        return Event("symlink", (_hex(a[0]), _hex(a[1])), at=now)
    if name == "symlinkat":
        return Event("symlink", (_hex(a[0]), p2(a[1], a[2])), at=now)
    if name == "setxattr" and _hex(a[1]) == SUM_XATTR:
        return Event("set_sum", (_hex(a[0]),), at=now)
    if name == "utimensat" and a[1] != "NULL":
        return Event("utime", (p2(a[0], a[1]),), at=now)
    return None


def run_traced(world: Path, log: str, argv: list[str], stdin: bytes, env: dict[str, str]) -> bytes:
    """Run an installed command under strace on world's spool (node "here"); return its stdout."""
    exe = shutil.which(argv[0])
    assert exe is not None, argv[0]
    root = world / "var" / "spool" / "dropr"
    full = {**env, "DROPR_SPOOL": str(root), "DROPR_NODE": "here"}
    p = subprocess.run(
        [*STRACE, "-o", log, exe, *argv[1:]], input=stdin, capture_output=True, env=full, check=True
    )
    return p.stdout


def traced_put(world: Path, payload: bytes, url: str, env: dict[str, str]) -> Recording:
    """Run the installed dropr-put under strace into world's spool; return its recording,
    with the printed id promised after its last operation."""
    root = world / "var" / "spool" / "dropr"
    (world / "var").mkdir(parents=True, exist_ok=True)
    snap, data, mtimes = read_tree(str(world))
    log = str(world.parent / "put.strace")
    ident = run_traced(world, log, ["dropr-put", "--to", url], payload, env).decode().strip()
    evs = events(log, str(world))
    peer = os.listdir(root / "out")[0]
    promise = Promise(len(evs), "out", ident, payload, (peer,))
    return Recording("strace_put", str(world), str(root), snap, data, mtimes, evs, [promise])


def traced_recv_ack(world: Path, payloads: list[bytes], env: dict[str, str]) -> Recording:
    """Store payloads from origin web1 (not traced), then run dropr-recv --all and dropr-ack
    of the first id under strace; return the recording, every stored id promised."""
    from crash_explorer import Run, store

    run = Run("strace_recv_ack", world)
    old = os.environ.get("DROPR_NODE")
    os.environ["DROPR_NODE"] = "here"
    try:
        store(run, run.plain(), payloads)
    finally:
        if old is None:
            del os.environ["DROPR_NODE"]
        else:
            os.environ["DROPR_NODE"] = old
    snap, data, mtimes = read_tree(str(world))
    evs: list[Event] = []
    out = run_traced(
        world, str(world.parent / "recv.strace"), ["dropr-recv", "--all", "--format", "json"], b"", env
    )
    evs += events(str(world.parent / "recv.strace"), str(world))
    first = json.loads(out.decode().splitlines()[0])["id"]
    run_traced(world, str(world.parent / "ack.strace"), ["dropr-ack", first], b"", env)
    evs += events(str(world.parent / "ack.strace"), str(world))
    return Recording(run.name, str(world), str(run.root), snap, data, mtimes, evs, run.promises, run.uploads)
