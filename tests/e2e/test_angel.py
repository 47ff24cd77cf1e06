"""dropr-angel as installed, supervising real child processes.

Every wait polls with a deadline; no test sleeps a fixed time. Only processes
these tests started are signalled, by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import BIN, lines, wait_until

ANGEL = str(BIN / "dropr-angel")
PY = sys.executable


def child(body: str) -> list[str]:
    """A python child; `marker` is the file named by argv[1]."""
    prelude = "import os, signal, sys, time\nmarker = sys.argv[1]\n"
    prelude += "def note(s):\n    with open(marker, 'a') as f: f.write(s + '\\n')\n"
    return [PY, "-c", prelude + body]


class Angel:
    def __init__(self, tmp: Path, args: list[str], cmd: list[str], name: str = "angel") -> None:
        self.err_path = tmp / f"{name}.err"
        self.err_file = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [ANGEL, *args, "--", *cmd],
            stdout=subprocess.PIPE,
            stderr=self.err_file,
            stdin=subprocess.DEVNULL,
        )

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)


Start = Callable[..., Angel]


@pytest.fixture
def angels(tmp_path: Path) -> Iterator[Start]:
    started: list[Angel] = []

    def start(args: list[str], cmd: list[str], name: str = "angel") -> Angel:
        a = Angel(tmp_path, args, cmd, name)
        started.append(a)
        return a

    yield start
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()  # the child gets SIGTERM from PR_SET_PDEATHSIG
            a.proc.wait()
        a.err_file.close()
        if a.proc.stdout:
            a.proc.stdout.close()


def test_restarts_a_crashing_child_with_growing_backoff(tmp_path: Path, angels: Start) -> None:
    marker = tmp_path / "starts"
    a = angels([], child("note(repr(time.time()))\nsys.exit(1)") + [str(marker)])
    # the third exit, not just the third start: TERM must find the angel waiting
    wait_until(lambda: "restart_in=4.0s" in a.err, what="three exits")
    t = [float(x) for x in lines(marker)]
    assert len(t) == 3
    assert t[1] - t[0] >= 0.9  # first delay: 1s
    assert t[2] - t[1] >= 1.9  # then doubled: 2s
    a.signal(signal.SIGTERM)
    assert a.wait() == 1  # stopped in the backoff: the last child's status
    assert "exited pid=" in a.err and "status=1" in a.err
    assert "restart_in=1.0s" in a.err and "restart_in=2.0s" in a.err


@pytest.mark.parametrize("code", [64, 78])
def test_no_restart_after_usage_or_config_exit(tmp_path: Path, angels: Start, code: int) -> None:
    marker = tmp_path / "starts"
    a = angels([], child(f"note('run')\nsys.exit({code})") + [str(marker)])
    assert a.wait() == code
    assert lines(marker) == ["run"]
    assert f"giving up reason={'usage' if code == 64 else 'config'} status={code}" in a.err


def test_term_is_forwarded_and_the_angel_exits_with_the_child(tmp_path: Path, angels: Start) -> None:
    marker = tmp_path / "events"
    body = """
def on_term(s, f):
    note('term')
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, lambda s, f: note('hup'))
note('ready')
while True:
    time.sleep(0.05)
"""
    a = angels([], child(body) + [str(marker)])
    wait_until(lambda: "ready" in lines(marker), what="the child")
    a.signal(signal.SIGHUP)
    wait_until(lambda: "hup" in lines(marker), what="HUP at the child")
    assert a.proc.poll() is None  # HUP is only forwarded
    a.signal(signal.SIGTERM)
    assert a.wait() == 0  # the child's own status
    assert lines(marker) == ["ready", "hup", "term"]
    assert "forwarded signal=HUP" in a.err and "stopping pid=" in a.err
    assert "stopped status=0" in a.err


def test_a_child_killed_by_int_gives_130(tmp_path: Path, angels: Start) -> None:
    marker = tmp_path / "events"
    a = angels([], child("note('ready')\ntime.sleep(60)") + [str(marker)])
    wait_until(lambda: lines(marker) == ["ready"], what="the child")
    a.signal(signal.SIGINT)
    assert a.wait() == 128 + signal.SIGINT  # python's default INT handler re-raises
    assert "stopping pid=" in a.err and "signal=INT" in a.err


def test_second_angel_with_the_same_lock_exits_0_silently(tmp_path: Path, angels: Start) -> None:
    marker, lock, pidfile = tmp_path / "starts", tmp_path / "angel.lock", tmp_path / "angel.pid"
    cmd = child("note('run')\ntime.sleep(60)") + [str(marker)]
    first = angels(["--lock", str(lock), "--pidfile", str(pidfile)], cmd, "first")
    wait_until(lambda: pidfile.exists() and lines(marker) == ["run"], what="the first angel")
    assert pidfile.read_text() == f"{first.proc.pid}\n"
    second = angels(["--lock", str(lock), "--pidfile", str(pidfile)], cmd, "second")
    assert second.wait(timeout=5) == 0
    assert second.proc.stdout is not None and second.proc.stdout.read() == b""
    assert second.err == ""
    assert lines(marker) == ["run"]  # the second one started nothing
    assert pidfile.read_text() == f"{first.proc.pid}\n"  # nor touched the pidfile
    first.signal(signal.SIGTERM)
    assert first.wait() == 128 + signal.SIGTERM
    assert not pidfile.exists()


def test_max_rss_restarts_a_child_that_grows(tmp_path: Path, angels: Start) -> None:
    marker = tmp_path / "starts"
    body = """
note('run')
if len(open(marker).read().split()) == 1:
    hog = b'x' * (200 << 20)  # written, so resident
    note('allocated')
time.sleep(60)
"""
    a = angels(["--max-rss", "100MiB"], child(body) + [str(marker)])
    # 'allocated' may never be written: the angel can catch the child mid-allocation
    wait_until(lambda: lines(marker).count("run") == 2, what="a restart")
    assert "restarting pid=" in a.err and "reason=rss" in a.err and "max_rss=100.0MiB" in a.err
    a.signal(signal.SIGTERM)
    assert a.wait() == 128 + signal.SIGTERM


def test_gives_up_after_too_many_restarts(tmp_path: Path, angels: Start) -> None:
    marker = tmp_path / "starts"
    args = ["--max-restarts", "2", "--per", "1m", "--backoff", "1s..1s"]
    a = angels(args, child("note('run')\nsys.exit(3)") + [str(marker)])
    assert a.wait(timeout=15) == 75
    assert lines(marker) == ["run"] * 3
    assert "giving up reason=restarts max_restarts=2 per=60.0s status=3" in a.err


@pytest.mark.parametrize(
    "args",
    [
        ["--backoff", "5s..1s", "--", "true"],
        ["--backoff", "soon", "--", "true"],
        ["--max-restarts", "3", "--", "true"],
        ["--per", "1m", "--", "true"],
        ["--", str(Path(__file__).parent / "no-such-command")],
        [],
    ],
)
def test_usage_errors_exit_64(args: list[str]) -> None:
    p = subprocess.run([ANGEL, *args], capture_output=True, timeout=10)
    assert p.returncode == 64
    assert p.stdout == b""
    assert b"dropr-angel: " in p.stderr


def test_pidfile_directory_missing_exits_73(tmp_path: Path) -> None:
    p = subprocess.run(
        [ANGEL, "--pidfile", str(tmp_path / "no" / "pid"), "--", "true"],
        capture_output=True,
        timeout=10,
    )
    assert p.returncode == 73
    assert b"cannot write pidfile" in p.stderr


def test_options_after_cmd_belong_to_cmd() -> None:
    # without --, everything from CMD on is CMD's: --version reaches sh, not the angel
    p = subprocess.run([ANGEL, "sh", "-c", "exit 78", "--version"], capture_output=True, timeout=10)
    assert p.returncode == 78
    assert b"started pid=" in p.stderr


def test_spool_and_config_are_passed_to_the_child(tmp_path: Path) -> None:
    spool, config = tmp_path / "spool", tmp_path / "dropr.toml"
    check = f'[ "$DROPR_SPOOL" = "{spool}" ] && [ "$DROPR_CONFIG" = "{config}" ] && exit 78; exit 64'
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
    p = subprocess.run(
        [ANGEL, "--spool", str(spool), "--config", str(config), "--", "sh", "-c", check],
        capture_output=True,
        timeout=10,
        env=env,
    )
    assert p.returncode == 78, p.stderr
