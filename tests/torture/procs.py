"""Daemons restarted as systemd would: each in its own process group (its "cgroup"),
killed whole when its main process dies, started again after RestartSec.

Every exit is counted: one we caused (a SIGKILL from the injector) is a kill; any other
is a death, which a torture run must not see.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RESTART_SEC = 0.5


def children(pid: int) -> list[int]:
    """The pids whose parent is pid (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent(int(entry)) == pid:
            out.append(int(entry))
    return out


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


def tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class Daemon:
    node: str
    kind: str  # serve, send, recv
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed: set[int] = field(default_factory=set)  # pids we sent SIGKILL
    died_at: float = 0.0
    deaths: list[str] = field(default_factory=list)  # exits we did not cause
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.starts += 1

    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def kill(self, pid: int) -> bool:
        """SIGKILL pid (this daemon's main process or one of its children); note it."""
        with self.lock:
            self.killed.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
                return True
            except ProcessLookupError:
                return False

    def tend(self, now: float, stopping: bool = False) -> str | None:
        """If the main process exited: kill its group, note why; restart after RESTART_SEC.
        Return "killed", "died" or None."""
        p = self.proc
        if p is None:
            if not stopping and now >= self.died_at + RESTART_SEC:
                self.start()
            return None
        rc = p.poll()
        if rc is None:
            return None
        with self.lock:
            ours = p.pid in self.killed
        try:
            os.killpg(p.pid, signal.SIGKILL)  # systemd's KillMode=control-group
        except ProcessLookupError:
            pass
        self.proc, self.died_at = None, now
        if ours:
            return "killed"
        self.deaths.append(f"{self.node} {self.kind} exited {rc}:\n{tail(self.log)}")
        return "died"

    def stop(self, timeout: float = 20) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        self.proc = None


class Supervisor:
    """Restart every daemon that exits, in a thread, until stopped."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons
        self.restarts = 0
        self.deaths = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def start(self) -> None:
        for d in self.daemons:
            d.start()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.tend()

    def tend(self) -> None:
        now = time.monotonic()
        for d in self.daemons:
            starts = d.starts
            why = d.tend(now)
            if why == "died":
                self.deaths += 1
            if d.starts > starts and d.starts > 1:
                self.restarts += 1

    def down(self) -> list[str]:
        """The daemons not running now."""
        return [f"{d.node} {d.kind}" for d in self.daemons if d.pid() is None]

    def halt(self) -> None:
        """Restart nothing from now on."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def stop(self) -> None:
        self.halt()
        for d in self.daemons:
            d.stop()
            d.tend(time.monotonic(), stopping=True)
