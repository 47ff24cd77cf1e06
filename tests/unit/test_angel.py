"""dropr.angel: backoff arithmetic, /proc reading, and supervise() over real children.

supervise() runs in this process (it installs signal handlers in the main thread
and restores them). Waits poll with a deadline; signals go only to this process
or to children the tests started, by pid.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dropr import angel
from dropr.angel import Backoff, Options, exit_status, fmt_size, parse_backoff, supervise
from dropr.errors import EX_TEMPFAIL, CantCreateError, DroprError, UsageError
from filelock import FileLock
from helpers import lines, poll, wait_until

PY = sys.executable


def sh(script: str, marker: Path) -> list[str]:
    """A shell child; $M is the marker file."""
    return ["sh", "-c", script, "child", str(marker)]


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.messages)


@pytest.fixture
def events() -> Iterator[Events]:
    """Collect dropr.angel's log lines, whatever other tests did to the 'dropr' logger."""
    logger = logging.getLogger("dropr.angel")
    h = Events()
    old = logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    yield h
    logger.removeHandler(h)
    logger.setLevel(old)


def signal_self_when(pred: Callable[[], bool], signum: int) -> threading.Thread:
    """Send signum to this process once pred holds (supervise is then listening)."""

    def run() -> None:
        if poll(pred):
            os.kill(os.getpid(), signum)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# --- pure parts ---------------------------------------------------------------


def test_backoff_doubles_up_to_max() -> None:
    b = Backoff(1.0, 60.0)
    assert [b.next_delay(0.1) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_resets_after_a_stable_run() -> None:
    b = Backoff(1.0, 60.0)
    assert b.next_delay(0.0) == 1  # first quick exit: MIN
    assert b.stable_after() == 10  # 10 x the delay before this run
    assert b.next_delay(9.9) == 2
    assert b.stable_after() == 20
    assert b.next_delay(20.0) == 1  # stable: back to MIN
    for _ in range(8):
        b.next_delay(0.0)
    assert b.stable_after() == 60  # capped: a minute is always stable
    assert b.next_delay(60.0) == 1


def test_backoff_survives_endless_failures() -> None:
    b = Backoff(0.5, 3.0)
    for _ in range(10_000):
        delay = b.next_delay(0.0)
    assert delay == 3.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1s..60s", (1.0, 60.0)),
        ("500ms..2m", (0.5, 120.0)),
        ("5s", (5.0, 5.0)),
        ("2..2", (2.0, 2.0)),
    ],
)
def test_parse_backoff(text: str, want: tuple[float, float]) -> None:
    assert parse_backoff(text) == want


@pytest.mark.parametrize("text", ["", "..", "5s..1s", "0..1s", "1s..", "soon..later"])
def test_parse_backoff_rejects(text: str) -> None:
    with pytest.raises(DroprError):
        parse_backoff(text)


@pytest.mark.parametrize(
    "kw",
    [
        {"backoff_min": 2.0, "backoff_max": 1.0},
        {"backoff_min": 0.0},
        {"max_restarts": 3},
        {"per": 60.0},
        {"max_restarts": -1, "per": 60.0},
        {"max_restarts": 1, "per": 0.0},
        {"max_rss": 0},
    ],
)
def test_options_reject_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(UsageError) as e:
        Options(**kw)  # type: ignore[arg-type]
    assert e.value.code == 64


def test_exit_status_is_what_a_shell_reports() -> None:
    assert exit_status(0) == 0
    assert exit_status(78) == 78
    assert exit_status(-signal.SIGTERM) == 143
    assert exit_status(-signal.SIGKILL) == 137


def test_fmt_size() -> None:
    assert fmt_size(512) == "512B"
    assert fmt_size(100 << 20) == "100.0MiB"
    assert fmt_size(3 << 30) == "3.0GiB"


def test_process_rss_of_a_missing_process_is_0() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert angel.process_rss(pid_max + 1) == 0
    assert angel.process_rss(os.getpid()) > 1 << 20


def test_group_rss_sums_the_whole_process_group(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    hog = f"h = b'x' * (64 << 20)\nopen({str(ready)!r}, 'w').close()\nimport time; time.sleep(60)"
    # sh stays the group leader and parent; the hog is a grandchild of the test
    p = subprocess.Popen(["sh", "-c", f'"{PY}" -c "$1"; :', "sh", hog], process_group=0)
    try:
        wait_until(ready.exists, what="the hog to allocate")
        leader = angel.process_rss(p.pid)
        total = angel.group_rss(p.pid)
        assert leader < 16 << 20
        assert total >= (64 << 20) + leader
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


# --- supervise() with real children -----------------------------------------


def test_restarts_after_a_crash_and_stops_on_config_exit(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "starts"
    script = 'echo run >> "$1"; [ "$(wc -l < "$1")" -ge 2 ] && exit 78; exit 1'
    t0 = time.monotonic()
    assert supervise(sh(script, m)) == 78
    assert time.monotonic() - t0 >= 0.9  # the first backoff delay, 1s
    assert lines(m) == ["run", "run"]
    log = events.text()
    assert "status=1 ran=" in log and "restart_in=1.0s" in log
    assert "giving up reason=config status=78" in log
    assert log.count("started pid=") == 2


def test_no_restart_after_usage_exit(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "starts"
    assert supervise(sh('echo run >> "$1"; exit 64', m)) == 64
    assert lines(m) == ["run"]
    assert "giving up reason=usage status=64" in events.text()


def test_max_restarts_gives_up_with_75(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "starts"
    opts = Options(max_restarts=1, per=60.0, backoff_min=0.1, backoff_max=0.1)
    assert supervise(sh('echo run >> "$1"; exit 0', m), opts) == EX_TEMPFAIL
    assert lines(m) == ["run", "run"]
    assert "giving up reason=restarts max_restarts=1" in events.text()


def test_a_held_lock_returns_0_without_starting(tmp_path: Path) -> None:
    m, lock = tmp_path / "starts", tmp_path / "lock"
    with FileLock(str(lock), timeout=0):
        assert supervise(sh('echo run >> "$1"; exit 78', m), Options(lock=str(lock))) == 0
    assert lines(m) == []
    assert supervise(sh('echo run >> "$1"; exit 78', m), Options(lock=str(lock))) == 78
    assert lines(m) == ["run"]


def test_a_lock_under_a_regular_file_says_so(tmp_path: Path) -> None:
    """filelock's makedirs said only "File exists"."""
    (tmp_path / "plain").write_text("x")
    lock = tmp_path / "plain" / "lock"
    with pytest.raises(CantCreateError, match="plain is not a directory"):
        supervise(sh("exit 0", tmp_path / "m"), Options(lock=str(lock)))


def test_pidfile_holds_our_pid_while_running(tmp_path: Path) -> None:
    m, pidfile = tmp_path / "seen", tmp_path / "angel.pid"
    script = f'cat "{pidfile}" > "$1"; exit 78'
    assert supervise(sh(script, m), Options(pidfile=str(pidfile))) == 78
    assert lines(m) == [str(os.getpid())]
    assert not pidfile.exists()
    assert not Path(f"{pidfile}.new").exists()


def test_pidfile_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CantCreateError):
        supervise(["true"], Options(pidfile=str(tmp_path / "no" / "pid")))


def test_term_ignored_by_the_child_ends_in_kill_after_grace(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "events"
    script = "trap '' TERM; echo ready >> \"$1\"; while :; do sleep 0.05; done"
    signal_self_when(lambda: lines(m) == ["ready"], signal.SIGTERM)
    t0 = time.monotonic()
    assert supervise(sh(script, m), Options(grace=0.3)) == 137
    assert time.monotonic() - t0 < 5
    log = events.text()
    assert "stopping pid=" in log and "killing pgid=" in log and "reason=grace" in log
    assert "stopped status=137" in log


def test_hup_is_forwarded_and_term_stops(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "events"
    script = (
        "trap 'echo hup >> \"$1\"' HUP; trap 'echo term >> \"$1\"; exit 0' TERM; "
        'echo ready >> "$1"; while :; do sleep 0.05; done'
    )
    signal_self_when(lambda: lines(m) == ["ready"], signal.SIGHUP)
    signal_self_when(lambda: lines(m) == ["ready", "hup"], signal.SIGTERM)
    assert supervise(sh(script, m)) == 0
    assert lines(m) == ["ready", "hup", "term"]
    assert "forwarded signal=HUP" in events.text()


def test_max_rss_restarts_a_growing_child(tmp_path: Path, events: Events) -> None:
    m = tmp_path / "starts"
    body = (
        "import sys, time\n"
        "with open(sys.argv[1], 'a') as f: f.write('run\\n')\n"
        "if len(open(sys.argv[1]).readlines()) > 1: sys.exit(78)\n"
        "hog = b'x' * (200 << 20)\n"
        "time.sleep(60)\n"
    )
    opts = Options(max_rss=100 << 20, rss_interval=0.1, grace=5.0)
    assert supervise([PY, "-c", body, str(m)], opts) == 78
    assert lines(m) == ["run", "run"]
    log = events.text()
    assert "restarting pid=" in log and "reason=rss" in log
    assert "status=143 signal=TERM" in log


def test_a_command_that_cannot_run_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        supervise([str(tmp_path / "nothing-here")])
    with pytest.raises(UsageError):
        supervise([])


def test_a_command_that_vanishes_counts_as_a_crash(tmp_path: Path, events: Events) -> None:
    m, script = tmp_path / "starts", tmp_path / "once"
    script.write_text(f'#!/bin/sh\necho run >> "{m}"\nrm "$0"\nexit 1\n')
    script.chmod(0o755)
    opts = Options(max_restarts=1, per=60.0, backoff_min=0.1, backoff_max=0.1)
    assert supervise([str(script)], opts) == EX_TEMPFAIL
    assert lines(m) == ["run"]
    assert "exec-failed status=127" in events.text()


def test_signal_handlers_are_restored(tmp_path: Path) -> None:
    before = {s: signal.getsignal(s) for s in (*angel.FORWARD, signal.SIGCHLD)}
    assert supervise(sh("exit 78", tmp_path / "m")) == 78
    assert {s: signal.getsignal(s) for s in before} == before
