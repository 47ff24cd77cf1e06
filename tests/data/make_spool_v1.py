"""Make tests/data/spool-v1/ and tests/data/spool-v1.json: a small spool in every state.

The upgrade fixture of tests/e2e/test_upgrade.py. It was made by the code at commit
0c07279 (protocol: the wire's routes, headers and answer words as names in one module,
just before the spool became a package in issue #14) and must NOT be remade by later
code: it is the on-disk format that every later version has to read. Make a new
fixture (spool-v2, ...) next to it when the format changes, and keep this one.

To rerun it (only to repair the fixture): this script, run by the Python of a venv that
has that commit installed, uses that venv's commands (next to sys.executable):

    mkdir /tmp/v1 && git archive 0c07279 | tar -x -C /tmp/v1
    make -C /tmp/v1 .venv/.installed
    /tmp/v1/.venv/bin/python tests/data/make_spool_v1.py tests/data    # from this checkout

The ids and times change with every run; the states, payloads and shape do not.

Everything is made by the installed commands, through real transitions: spool "a"
(node a) puts to peers b (a real dropr-serve on 127.0.0.1 port 0, with a 1 KiB message
limit) and c (nothing listens: every try fails); b consumes and acks or rejects, and a's
next pass polls the receipts. Node w sends to a's own dropr-serve to fill a's inbox;
a's consumer then claims, acks, rejects and releases. Only spool "a" is kept.

Git keeps neither hard links, empty folders, sockets nor time stamps, so the manifest
spool-v1.json holds what the copy needs to be faithful (see restore_spool in
tests/helpers.py): "dirs" every folder (empty ones included), "links" the groups of
paths that are one file (a multicast's outbox entries; an inbox file and its rcv/ entry),
"mtimes" every file's and symlink's mtime in ns (claimed leases and wait due times are
set far in the future, FAR, so they never expire in the test), and "expect": every
message's id, payload and state per outbox peer and inbox channel, read from the
folders (not from the code). Wake-up sockets are left out: they belong to processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FAR = 4102444800  # 2100-01-01: lease end of the claimed message, due time of the wait one
DOWN = "http://127.0.0.1:9/"  # the discard port: nothing listens, every try fails
NAME = "spool-v1"


def run(spool: Path, node: str, cmd: str, *args: str, input: bytes = b"", ok: tuple[int, ...] = (0,)) -> str:
    """Run an installed command for a node; return its stdout, fail on an unexpected status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
    env.update(DROPR_SPOOL=str(spool), DROPR_NODE=node)
    p = subprocess.run([str(BIN / cmd), *args], input=input, capture_output=True, env=env, timeout=120)
    if p.returncode not in ok:
        raise SystemExit(f"{cmd} {args} exited {p.returncode}: {p.stderr.decode()}")
    sys.stderr.write(p.stderr.decode())
    return p.stdout.decode().strip()


def serve(spool: Path, node: str, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start dropr-serve on a free loopback port; return it and its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
    env.update(DROPR_SPOOL=str(spool), DROPR_NODE=node)
    with open(log, "wb") as f:
        cmd = [str(BIN / "dropr-serve"), "--listen", "127.0.0.1:0", "--workers", "1", *args]
        p = subprocess.Popen(cmd, env=env, stderr=f)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "listening" in line and "url=" in line:
                return p, line.split("url=")[1].split()[0]
        if p.poll() is not None:
            raise SystemExit(f"dropr-serve died: {log.read_text()}")
        time.sleep(0.05)
    raise SystemExit("dropr-serve did not listen")


def claim(spool: Path, *args: str) -> str:
    """Claim one message of a's inbox; return its id."""
    out = run(spool, "a", "dropr-recv", "--format", "json", *args)
    return str(json.loads(out)["id"])


def make(work: Path) -> Path:
    """Make the spools in work; return spool a."""
    a, b, w = work / "a", work / "b", work / "w"
    for d in (a, b, w):
        d.mkdir()
    pb, url_b = serve(b, "b", work / "b.log", "--max-size", "1KiB")
    pa, url_a = serve(a, "a", work / "a.log")
    try:
        (a / "dropr.toml").write_text(
            f'node = "a"\n\n[peers.b]\nurl = "{url_b}"\n\n[peers.c]\nurl = "{DOWN}"\n\n'
            '[limits]\nmax_attempts = 3\nretention = "3650d"\n'
        )
        (w / "dropr.toml").write_text(f'node = "w"\n\n[peers.a]\nurl = "{url_a}"\n')

        def put(payload: str, *args: str) -> str:
            return run(a, "a", "dropr-put", *args, input=payload.encode())

        def send(*args: str) -> None:
            run(a, "a", "dropr-send", "--once", *args, ok=(0, 75))

        # outbox: dead after max_attempts (3 failed tries at c, then a 4th pass)
        put("out dead attempts", "--to", "c")
        for _ in range(3):
            send("--now")
        put("out processed", "--to", "b")
        put("out dead at peer", "--to", "b", "--priority", "3")
        put("out sent", "--to", "b", "--channel", "jobs", "--priority", "1", "--id", "job-1")
        put("out multicast processed at b, queued at c", "--to", "b", "--to", "c")
        put("out refused " + "x" * 2000, "--to", "b")
        send("--now")  # sent to b, refused by b, attempts dead at c, multicast failed at c (meta)
        got = run(b, "b", "dropr-recv", "--all", "--format", "json")
        for rec in map(json.loads, got.splitlines()):
            if rec["size"] == len(b"out dead at peer"):
                run(b, "b", "dropr-ack", "--reject", "--reason", "no such customer", rec["id"])
            else:
                run(b, "b", "dropr-ack", rec["id"])
        put("out dead ttl", "--to", "c", "--ttl", "1s")
        time.sleep(1.5)
        send("--now")  # receipts: processed, dead at peer; ttl dead at c; multicast at c: 2 tries
        put("out queued chosen", "--to", "b", "--id", "order-7", "--priority", "0")
        put("out queued ttl", "--to", "b", "--ttl", "3650d", "--channel", "jobs")
        put("out queued plain", "--to", "b")
        put("out queued multicast", "--to", "b", "--to", "c", "--priority", "8")

        # inbox: w sends to a's dropr-serve
        def wput(payload: str, *args: str) -> str:
            return run(w, "w", "dropr-put", "--to", "a", *args, input=payload.encode())

        for i in range(6):
            wput(f"in default {i}")
        wput("in chosen", "--id", "w-chosen-1")
        wput("in jobs", "--channel", "jobs", "--priority", "2", "--id", "w-job-1")
        wput("in jobs low", "--channel", "jobs", "--priority", "9")
        run(w, "w", "dropr-send", "--once")
        run(a, "a", "dropr-ack", claim(a))  # done
        run(a, "a", "dropr-ack", "--reject", "--reason", "cannot parse", claim(a))  # dead
        run(a, "a", "dropr-ack", "--release", "--delay", "1h", claim(a))  # wait
        run(a, "a", "dropr-ack", "--release", claim(a))  # ready again, with a meta record
        run(a, "a", "dropr-ack", claim(a, "--channel", "jobs"))  # done in jobs
        claim(a, "--lease", "1h")  # claimed
    finally:
        for p in (pa, pb):
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    for st in ("claimed", "wait"):
        for ch in (a / "in").iterdir():
            for f in (ch / st).iterdir() if (ch / st).is_dir() else []:
                os.utime(f, (FAR, FAR))
    return a


def states(spool: Path) -> dict[str, dict[str, dict[str, dict[str, str]]]]:
    """Read every message's state and payload from the folders: out per peer, in per channel."""
    expect: dict[str, dict[str, dict[str, dict[str, str]]]] = {"out": {}, "in": {}}
    for box, header in (("out", 256), ("in", 0)):
        for dest in sorted(os.listdir(spool / box)):
            msgs = expect[box].setdefault(dest, {})
            for st in sorted(os.listdir(spool / box / dest)):
                d = spool / box / dest / st
                if st == "meta" or not d.is_dir():
                    continue
                for name in sorted(os.listdir(d)):
                    payload = (d / name).read_bytes()[header:].decode()
                    msgs[name.rsplit(",", 1)[1]] = {"state": st, "name": name, "payload": payload}
    return expect


def record(spool: Path) -> dict[str, object]:
    """Return the manifest of a spool: folders, link groups, mtimes, expected states."""
    dirs: list[str] = []
    mtimes: dict[str, int] = {}
    inodes: dict[int, list[str]] = {}
    for top, subdirs, files in os.walk(spool):
        rel_top = os.path.relpath(top, spool)
        if rel_top != ".":
            dirs.append(rel_top)
        for name in files + [s for s in subdirs if os.path.islink(os.path.join(top, s))]:
            path = os.path.join(top, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, spool)
            if not (os.path.islink(path) or os.path.isfile(path)):
                continue  # a socket in wake/
            mtimes[rel] = st.st_mtime_ns
            if os.path.isfile(path) and not os.path.islink(path) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
    links = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    return {"dirs": sorted(dirs), "links": links, "mtimes": dict(sorted(mtimes.items())),
            "expect": states(spool)}  # fmt: skip


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        a = make(Path(tmp))
        manifest = record(a)
        if (dest / NAME).exists():
            shutil.rmtree(dest / NAME)
        shutil.copytree(a, dest / NAME, symlinks=True, ignore=lambda d, names: [
            n for n in names if not (os.path.islink(f"{d}/{n}") or os.path.isfile(f"{d}/{n}")
                                     or os.path.isdir(f"{d}/{n}"))])  # fmt: skip
    (dest / f"{NAME}.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
