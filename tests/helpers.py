"""Plain helpers shared by the test files and the conftest.py fixtures: `from helpers import ...`.

tests/ is on sys.path through `pythonpath` in pyproject.toml. Fixtures stay in the
conftest.py files; never `from conftest import ...`: with one conftest per folder,
that name means whichever conftest pytest imported last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# -- installed commands ------------------------------------------------------------------

BIN = Path(sys.executable).parent
NOWHERE = "http://127.0.0.1:9/"  # loopback discard port: nothing listens, puts never connect


def command_path(name: str) -> str:
    """Return the installed console script `name` of the venv running the tests."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}; run pip install -e .")
    return str(path)


def clean_env(spool: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """Return os.environ without DROPR_* settings or completion triggers, plus a spool and extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_") and not k.endswith("_COMPLETE")}
    if spool is not None:
        env["DROPR_SPOOL"] = str(spool)
    env.update(extra)
    return env


def run_cmd(
    name: str,
    *args: str,
    input: bytes | str | None = b"",
    env: Mapping[str, str] | None = None,
    spool: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run an installed dropr command to completion; stdout and stderr are captured bytes.

    `spool` becomes DROPR_SPOOL; `env` adds to (does not replace) a clean environment.
    """
    full_env = clean_env(spool, **(dict(env) if env else {}))
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(
        [command_path(name), *args],
        input=data,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def one_error_line(stderr: bytes | str, prog: str) -> str:
    """Assert stderr is exactly one `prog: error: ...` line and no traceback; return it."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    assert "Traceback" not in text, text
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {text!r}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def expect_error(res: subprocess.CompletedProcess[bytes], code: int, prog: str) -> str:
    """Assert a failure with code, nothing on stdout and one error line; return the line."""
    assert res.returncode == code, (res.returncode, res.stderr.decode(errors="replace"))
    assert res.stdout == b"", res.stdout
    return one_error_line(res.stderr, prog)


# -- what the commands print --------------------------------------------------------------

# options every dropr command has, as its --help shows them
COMMON_OPTIONS = ["--spool", "--config", "-v, --verbose", "-q, --quiet", "--version", "-h, --help"]
# the keys of dropr-ls --json: summary rows, and records of messages (-l or an id)
ROW_FIELDS = ["box", "name", "state", "count", "bytes", "oldest"]
MSG_FIELDS = [
    "id",
    "box",
    "name",
    "state",
    "priority",
    "size",
    "attempts",
    "created",
    "path",
    "error",
]
# the keys of a claimed message: dropr-recv --format json, Claim.info()
CLAIM_FIELDS = {"id", "channel", "origin", "priority", "created", "size", "attempt", "path"}


# -- waiting -------------------------------------------------------------------------------


def poll(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Call cond until it returns a truthy value or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def wait_until(
    cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02
) -> Any:
    """Poll cond until it returns a truthy value (returned); fail at the deadline."""
    v = poll(cond, timeout, interval)
    if not v:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return v


# -- files, ports, processes ---------------------------------------------------------------


def lines(path: Path) -> list[str]:
    """Return the lines of a file, none if it does not exist (yet)."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def listdir(path: Path) -> list[str]:
    """Return the names in a directory, none if it does not exist (yet)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def receive(sp: Any, origin: str, hdr: Any, payload: bytes) -> tuple[str, Any, int]:
    """Write a payload into spool sp as dropr-serve does; return the item for Spool.store.

    The descriptor of a file written as its rcv/ entry stays open, as the server keeps
    it until the store (the caller closes it after); a tmp file's is closed (-1)."""
    path, fd, entry = sp.receive_file(origin, hdr)
    os.write(fd, payload)
    if entry:
        return path, hdr, fd
    os.close(fd)
    return path, hdr, -1


def fill_inbox(spool: Path, payloads: list[bytes], *, origin: str = "web1", channel: str = "default",
               priority: int = 5) -> list[str]:  # fmt: skip
    """Store payloads in a spool's inbox as received from origin; return their ids."""
    from dropr import message as m
    from dropr.spool import Spool

    sp = Spool(str(spool))
    items = []
    for p in payloads:
        ident, created = sp.ids.new()
        hdr = m.Header(ident, channel, priority, created, 0, len(p), m.crc32(p))
        items.append(receive(sp, origin, hdr, p))
    try:
        assert sp.store(origin, items) == ["stored"] * len(items)
    finally:
        for _, _, fd in items:
            if fd >= 0:
                os.close(fd)
    return [h.ident for _, h, _ in items]


def inbox_states(spool: Path, channel: str = "default") -> dict[str, str]:
    """Map id -> inbox state of a channel, from the folders."""
    states = {}
    for st in ("ready", "wait", "claimed", "done", "dead"):
        d = spool / "in" / channel / st
        for name in d.iterdir() if d.is_dir() else []:
            states[name.name.rsplit(",", 1)[1]] = st
    return states


class Called:
    """What a command's console entry point returned and printed, run in this process."""

    def __init__(self, rc: int, out: bytes, err: bytes) -> None:
        self.rc = rc
        self.out = out
        self.err = err.decode(errors="replace")


def call_main(main: Callable[[list[str] | None], int], args: list[str], stdin: bytes = b"") -> Called:
    """Run a command's console entry point with stdin; return exit status, stdout, stderr."""
    from click.testing import CliRunner

    with CliRunner().isolation(input=stdin) as (out, err, _):
        rc = main(args)
        sys.stdout.flush()  # what process exit would do
        sys.stderr.flush()
    return Called(rc, out.getvalue(), err.getvalue())


def unstored(spool: Path) -> list[str]:
    """The files of uploads a receiver has not stored: tmp/ files, and rcv/ entries that
    no inbox state links (a generated id's payload is written straight into its entry)."""
    out = [f"tmp/{n}" for n in listdir(spool / "tmp")]
    for origin in listdir(spool / "rcv"):
        for e in os.scandir(spool / "rcv" / origin):
            try:
                if e.is_file(follow_symlinks=False) and e.stat().st_nlink == 1:
                    out.append(f"rcv/{origin}/{e.name}")
            except FileNotFoundError:
                pass  # stored and purged, or dropped, while we looked
    return out


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Return the pids whose parent is pid (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may contain spaces and parentheses: the ppid follows the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def kill_server_tree(master: int) -> list[int]:
    """SIGKILL a dropr-serve master and its workers at once; return their pids. The master
    is stopped first: right after it starts it may still be forking workers, and one forked
    after the listing would live on, holding the listening port."""
    os.kill(master, signal.SIGSTOP)
    pids = [master, *children(master)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def alive(pid: int) -> bool:
    """Tell whether pid exists and is not a zombie (a zombie holds no sockets or files)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def vm_hwm(pid: int) -> int | None:
    """Return the peak resident set size of pid in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- a small file system -------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with options (e.g. "size=4m") at mnt, or skip; unmount it afterwards."""
    mnt.mkdir(exist_ok=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs {options} (needs root): {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)  # a process that held a file there is still exiting
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def make_ca(d: Path) -> tuple[Path, Path, Path]:
    """Make (in a new folder d) a private CA and a server certificate for 127.0.0.1;
    return ca, cert, key. Skips the test where the openssl command is missing."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is not installed")
    d.mkdir()

    def ssl(*args: str) -> None:
        p = subprocess.run(["openssl", *args], capture_output=True, cwd=d, timeout=60)
        assert p.returncode == 0, p.stderr.decode()

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dropr test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    ssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ssl(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")),
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "srv.pem",
    )
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


def serve_url(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """Wait until a dropr-serve started with --listen ...:0 logs its URL in log; return it."""

    def url() -> str | None:
        for line in log.read_text().splitlines():
            if "listening" in line and "url=" in line:
                return line.split("url=")[1].split()[0]
        if proc.poll() is not None:
            raise AssertionError(f"dropr-serve died: {log.read_text()}")
        return None

    return str(wait_until(url, timeout, "dropr-serve to listen"))


# -- nodes: a spool and the dropr processes of one host (the e2e `nodes` fixture) ------------


class Node:
    """One host: a spool directory, an optional config, and the processes it runs."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.spool = root / name
        self.spool.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, DROPR_SPOOL=str(self.spool), DROPR_NODE=name)
        self.env.pop("DROPR_CONFIG", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.serve_log: Path = root / f"{name}-serve.log"
        self.send_log: Path = root / f"{name}-send.log"  # the dropr-send daemons' stderr

    def config(self, text: str) -> None:
        """Write SPOOL/dropr.toml."""
        (self.spool / "dropr.toml").write_text(f'node = "{self.name}"\n' + text)

    def run(self, name: str, *args: str, input: bytes | str | None = None, check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run a dropr command for this node and wait for it."""
        data = input.encode() if isinstance(input, str) else input
        p = subprocess.run([command_path(name), *args], input=data, capture_output=True, env=self.env,
                           timeout=timeout)  # fmt: skip
        if check and p.returncode != 0:
            raise AssertionError(f"{name} {args} exited {p.returncode}: {p.stderr.decode()}")
        return p

    def put(self, payload: bytes | str, *args: str) -> str:
        """Put one message; return its id."""
        p = self.run("dropr-put", *args, input=payload, check=True)
        return p.stdout.decode().strip()

    def start(self, name: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running dropr command for this node."""
        p = subprocess.Popen([command_path(name), *args], env=self.env, **kw)
        self.procs.append(p)
        return p

    def serve(self, *args: str, listen: str = "127.0.0.1:0") -> str:
        """Start dropr-serve on a free loopback port; return its URL."""
        with open(self.serve_log, "wb") as log:
            self.serve_proc = self.start("dropr-serve", "--listen", listen, *args, stderr=log)
        self.url = serve_url(self.serve_proc, self.serve_log, 20)
        return self.url

    def send_once(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one dropr-send --once pass for this node (check: fail unless it exits 0)."""
        return self.run("dropr-send", "--once", *args, check=check, timeout=timeout)

    def start_sender(self, *args: str, wait: bool = True, timeout: float = 30) -> subprocess.Popen[bytes]:
        """Start the dropr-send daemon, its stderr appended to self.send_log; with wait, return
        once it listens for wake-ups (it holds the spool's send lock by then)."""
        with open(self.send_log, "ab") as log:
            p = self.start("dropr-send", *args, stderr=log)
        sock = self.spool / "wake" / "send.sock"

        def up() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"dropr-send died: {self.send_log.read_text()}")
            return sock.exists()

        if wait:
            wait_until(up, timeout, "dropr-send to listen for wake-ups")
        return p

    def stop_serve(self, sig: int = signal.SIGTERM) -> None:
        """Stop this node's dropr-serve (TERM: graceful; KILL: crash)."""
        if self.serve_proc is not None:
            self.serve_proc.send_signal(sig)
            self.serve_proc.wait(30)
            self.serve_proc = None

    def ls(self, *args: str) -> list[dict[str, Any]]:
        """Return dropr-ls --json -l records (or summary rows without -l)."""
        p = self.run("dropr-ls", "--json", *args, check=True)
        return [json.loads(line) for line in p.stdout.decode().splitlines() if line]

    def states(self, box: str) -> dict[str, str]:
        """Map id -> state for every message in a box (one destination/channel)."""
        return {r["id"]: r["state"] for r in self.ls("-l", f"--{box}")}

    def stop_all(self) -> None:
        """End every process this node started, by PID."""
        for p in self.procs:
            stop(p, 15)


def out_states(node: Node, peer: str) -> dict[str, str]:
    """Map id -> state of every entry of one outbox folder of a node, read from the folders."""
    found = {}
    for state in ("queued", "sent", "processed", "dead"):
        for name in listdir(node.spool / "out" / peer / state):
            found[name.split(",", 1)[1]] = state
    return found


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """End a process this test started, by its PID: TERM, then KILL if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Nodes = Callable[[str], Node]  # the `nodes` fixture: nodes("a") makes node a


class Pair:
    """Node a delivers to node b, which serves at url; consumers run at b (the `pair` fixture)."""

    def __init__(self, a: Node, b: Node, url: str) -> None:
        self.a = a
        self.b = b
        self.url = url

    def put_lines(self, n: int, *args: str) -> list[str]:
        """Put n one-line messages at a for b with one dropr-put --lines; return their ids."""
        data = "".join(f"message {i}\n" for i in range(n))
        p = self.a.run("dropr-put", "--lines", "--to", self.url, *args, input=data, check=True)
        ids = p.stdout.decode().split()
        assert len(ids) == n
        return ids

    def send(self) -> subprocess.CompletedProcess[bytes]:
        """Run one dropr-send --once pass at a."""
        return self.a.send_once()

    def deliver(self, payloads: list[bytes], *args: str) -> list[str]:
        """Put each payload at a for b, send them; return their ids (in put order)."""
        ids = [self.a.put(p, "--to", self.url, *args) for p in payloads]
        self._sent()
        return ids

    def deliver_lines(self, n: int, *args: str) -> list[str]:
        """Put n one-line messages with one dropr-put --lines, send them; return the ids."""
        ids = self.put_lines(n, *args)
        self._sent()
        return ids

    def _sent(self) -> None:
        p = self.send()
        assert p.returncode == 0, p.stderr.decode()

    def peer_dir(self) -> Path:
        """Return a's outbox folder for b."""
        [peer] = [d for d in (self.a.spool / "out").iterdir() if d.is_dir()]
        return peer


# -- the upgrade fixtures in tests/data ------------------------------------------------------

DATA = Path(__file__).parent / "data"


def restore_spool(name: str, dest: Path) -> dict[str, Any]:
    """Copy the fixture spool tests/data/<name>/ to dest as it was made; return its manifest.

    Git keeps no empty folders, hard links or time stamps: the manifest <name>.json
    (written by tests/data/make_<name>.py) lists the folders, the groups of paths that
    were one file (linked again here) and every file's and symlink's mtime."""
    manifest: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    shutil.copytree(DATA / name, dest, symlinks=True)
    for d in manifest["dirs"]:
        (dest / d).mkdir(parents=True, exist_ok=True)
    for first, *others in manifest["links"]:
        for other in others:
            os.unlink(dest / other)
            os.link(dest / first, dest / other)
    # spool-v1's code made its files and folders with the umask's modes (022 here), not
    # its own; a checkout's may differ
    for top, _dirs, files in os.walk(dest):
        os.chmod(top, 0o755)
        for f in files:
            if not os.path.islink(os.path.join(top, f)):
                os.chmod(os.path.join(top, f), 0o644)
    for rel, ns in manifest["mtimes"].items():
        os.utime(dest / rel, ns=(ns, ns), follow_symlinks=False)
    return manifest
