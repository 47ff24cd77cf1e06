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
from dropr.spool._trace import Event

STRACE = ["strace", "-f", "-y", "-xx", "-s", str(1 << 24), "-qq"]
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_TOKEN = re.compile(r'"(?:\\x[0-9a-f]{2})*"|\w+<(?:\\x[0-9a-f]{2})*>|\[[^\]]*\]|\{[^}]*\}|[^,\s][^,]*')


def have_strace() -> bool:
    """Whether strace is installed and may trace here (ptrace allowed)."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run([*STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0


def _hex(token: str) -> str:
    """Decode a -xx string "\\x41..." or annotation NAME<\\x41...>."""
    body = token[token.index("<") + 1 : -1] if token.endswith(">") else token.strip('"')
    return bytes.fromhex(body.replace("\\x", "")).decode("utf-8", "surrogateescape")


def _hexbytes(token: str) -> bytes:
    return bytes.fromhex(token.strip('"').replace("\\x", ""))


def calls(log: str) -> list[tuple[str, list[str], int, str]]:
    """Return (syscall, argument tokens, result, result's path) of each finished call."""
    pending: dict[str, str] = {}
    out = []
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
        head, sep, ret = text.rpartition(") = ")
        if not sep or "(" not in head:
            continue
        name, _, args = head.partition("(")
        rm = re.match(r"(-?\d+)(<[^>]*>)?", ret)
        if rm is None or int(rm.group(1)) < 0:
            continue
        out.append(
            (name, _TOKEN.findall(args), int(rm.group(1)), _hex("x" + rm.group(2)) if rm.group(2) else "")
        )
    return out


def events(log: str, world: str) -> list[Event]:
    """The events of a strace log that change something under world, in order."""
    evs: list[Event] = []
    dirfds: set[int] = set()
    offsets: dict[int, int] = {}
    inside = world.rstrip("/") + "/"

    def fd_of(tok: str) -> tuple[int, str]:
        return int(tok.split("<", 1)[0]), _hex(tok)

    def path(dirtok: str, tok: str) -> str:
        p = _hex(tok)
        return p if p.startswith("/") else os.path.join(_hex(dirtok), p)

    for name, a, ret, _ in calls(log):
        now = time.time()
        if name in ("openat", "open"):
            p = path(a[0], a[1]) if name == "openat" else _hex(a[0])
            flags = a[2] if name == "openat" else a[1]
            if not p.startswith(inside):
                continue
            offsets[ret] = 0
            if "O_DIRECTORY" in flags:
                dirfds.add(ret)
            elif "O_CREAT" in flags:
                f = (os.O_EXCL if "O_EXCL" in flags else 0) | (os.O_TRUNC if "O_TRUNC" in flags else 0)
                evs.append(Event("create", (p,), fd=ret, flags=f, at=now))
            else:
                evs.append(Event("open_sync", (p,), fd=ret, at=now))
            continue
        if name == "close" and a:
            fd, _ = fd_of(a[0])
            dirfds.discard(fd)
            continue
        if not a:
            continue
        if name in ("write", "pwrite64", "lseek", "fsync", "fdatasync", "syncfs"):
            fd, p = fd_of(a[0])
            if not p.startswith(inside):
                continue
            if name == "lseek":
                offsets[fd] = ret
            elif name == "write":
                evs.append(
                    Event("write", (), fd=fd, offset=offsets.get(fd, 0), data=_hexbytes(a[1])[:ret], at=now)
                )
                offsets[fd] = offsets.get(fd, 0) + ret
            elif name == "pwrite64":
                evs.append(Event("pwrite", (), fd=fd, offset=int(a[3]), data=_hexbytes(a[1])[:ret], at=now))
            elif name == "syncfs":
                evs.append(Event("syncfs", (p,), at=now))
            elif fd in dirfds:
                evs.append(Event("fsync_dir", (p,), at=now))
            else:
                evs.append(Event(name, (), fd=fd, at=now))
            continue
        ev = _name_event(name, a, path, now)
        if ev is not None and all(q.startswith(inside) for q in ev.paths[-1:]):
            evs.append(ev)
    return evs


def _name_event(name: str, a: list[str], path: object, now: float) -> Event | None:
    """A create, link, unlink, rename, mkdir, symlink or utime call as an event."""
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
