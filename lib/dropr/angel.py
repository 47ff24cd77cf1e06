"""Supervise one child: restart it when it dies, forward signals, one instance per lock.

The model is daemontools' supervise and runit's runsv, run in the foreground:

- The child runs in its own process group, so a terminal's ^C reaches only the
  angel, which forwards it once. TERM, INT and HUP are forwarded to the child's
  pid; TERM and INT also stop the angel: it waits up to ``grace`` seconds, then
  SIGKILLs the child's whole group so no grandchild outlives it.
- A child that exits (0 included) or dies from a signal is restarted after a
  backoff delay, exponential from ``backoff_min`` to ``backoff_max``. A run that
  lasted ``min(10 x the delay before it, 60 s)`` counts as stable and resets the
  delay. Starts are never less than ``MIN_INTERVAL`` apart, whatever the backoff.
- Exit 64 (usage) and 78 (config) are permanent: restarting cannot help, so the
  angel stops and exits with the same code [dt supervise exit 100; s6 finish 125].
- ``max_restarts`` within ``per`` seconds: more restarts than that and the angel
  gives up with exit 75 (temporary failure): whoever started it, cron for one,
  may try again later.
- ``max_rss``: the summed VmRSS of the child's process group is polled from
  /proc every ``rss_interval``; past the limit the child is stopped like on TERM
  and restarted.
- On Linux the child gets PR_SET_PDEATHSIG=SIGTERM, so a ``kill -9`` of the angel
  does not leave an orphan running beside the next angel that cron starts.

Events go to the ``dropr.angel`` logger, one key=value line each.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import FrameType

from .config import parse_duration
from .errors import EX_CONFIG, EX_TEMPFAIL, EX_USAGE, CantCreateError, UsageError
from .retry import DOUBLINGS, backoff

log = logging.getLogger(__name__)

#: Least time between two starts of the child, whatever the backoff says.
MIN_INTERVAL = 1.0
#: A run this long is always stable, however long the delay before it was.
STABLE_MAX = 60.0
#: Exit codes after which a restart cannot help.
PERMANENT = {EX_USAGE: "usage", EX_CONFIG: "config"}
#: Signals forwarded to the child; the ones in STOP also stop the angel.
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1


class Options:
    """How to supervise: backoff, restart limits, memory limit, lock and pidfile.

    spool and config, when given, are passed on to the child as DROPR_SPOOL and
    DROPR_CONFIG (dropr-angel's --spool and --config).
    """

    __slots__ = (
        "backoff_min",
        "backoff_max",
        "max_restarts",
        "per",
        "max_rss",
        "lock",
        "pidfile",
        "grace",
        "rss_interval",
        "spool",
        "config",
    )

    def __init__(
        self,
        *,
        backoff_min: float = 1.0,
        backoff_max: float = 60.0,
        max_restarts: int | None = None,
        per: float | None = None,
        max_rss: int | None = None,
        lock: str | None = None,
        pidfile: str | None = None,
        grace: float = 10.0,
        rss_interval: float = 1.0,
        spool: str | None = None,
        config: str | None = None,
    ) -> None:
        if not 0 < backoff_min <= backoff_max:
            raise UsageError(f"bad --backoff {backoff_min:g}s..{backoff_max:g}s: need 0 < MIN <= MAX")
        if (max_restarts is None) != (per is None):
            raise UsageError("--max-restarts and --per go together")
        if max_restarts is not None and max_restarts < 0:
            raise UsageError(f"bad --max-restarts {max_restarts}: must not be negative")
        if per is not None and per <= 0:
            raise UsageError(f"bad --per {per:g}s: must be more than 0")
        if max_rss is not None and max_rss <= 0:
            raise UsageError(f"bad --max-rss {max_rss}: must be more than 0")
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.max_restarts = max_restarts
        self.per = per
        self.max_rss = max_rss
        self.lock = lock
        self.pidfile = pidfile
        self.grace = grace
        self.rss_interval = rss_interval
        self.spool = spool
        self.config = config


def parse_backoff(text: str) -> tuple[float, float]:
    """Return (min, max) seconds for 'MIN..MAX', e.g. '1s..60s'; a single value is both."""
    lo, sep, hi = text.partition("..")
    a = parse_duration(lo)
    b = parse_duration(hi) if sep else a
    if not 0 < a <= b:
        raise UsageError(f"bad backoff {text!r}: write it like 1s..60s, with 0 < MIN <= MAX")
    return a, b


class Backoff:
    """Exponential restart delay that resets after a stable run."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo = lo
        self.hi = hi
        self.failures = 0
        self.last = lo  # the delay that preceded the current run

    def stable_after(self) -> float:
        """Return how long the current run must last to count as stable."""
        return min(10 * self.last, STABLE_MAX)

    def next_delay(self, ran: float) -> float:
        """Return the delay before the next start, given how long the child ran."""
        if ran >= self.stable_after():
            self.failures = 0
        self.failures = min(self.failures + 1, DOUBLINGS)
        self.last = backoff(self.failures - 1, self.lo, self.hi)
        return self.last


def exit_status(returncode: int) -> int:
    """Return a Popen returncode as a shell reports it: the code, or 128 + signal."""
    return 128 - returncode if returncode < 0 else returncode


def process_rss(pid: int) -> int:
    """Return the VmRSS of one process in bytes (0 if gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def group_rss(pgid: int) -> int:
    """Return the summed VmRSS in bytes of every process in group pgid."""
    total = 0
    try:
        names = os.listdir("/proc")
    except OSError:
        return process_rss(pgid)
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            if int(stat[stat.rfind(b")") + 2 :].split()[2]) != pgid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        total += process_rss(int(name))
    return total


def fmt_size(n: int) -> str:
    """Format a byte count for a log line: 512B, 12.0KiB, 210.3MiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"  # pragma: no cover


def _sig(signum: int) -> str:
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


def _pdeathsig() -> Callable[[], None] | None:
    """Return a pre-exec hook that TERMs the child when the angel dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        # runs in the forked child before exec: no logging, no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the angel died before prctl took effect
            os._exit(EX_TEMPFAIL)

    return hook


@contextmanager
def _lock(path: str | None) -> Iterator[bool]:
    """Hold the lock file while the block runs; yield False if another angel holds it."""
    if path is None:
        yield True
        return
    from filelock import FileLock, Timeout

    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        got = False
    except OSError as exc:
        why = exc.strerror or str(exc)
        parent = os.path.dirname(os.path.abspath(path))
        if isinstance(exc, FileExistsError) and not os.path.isdir(parent):
            why = f"{parent} is not a directory"  # filelock's makedirs said only "File exists"
        raise CantCreateError(f"cannot take lock {path}: {why}; check the directory") from None
    else:
        got = True
    if not got:
        log.debug("locked lock=%s", path)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def _pidfile(path: str | None) -> Iterator[None]:
    """Write our pid to path (.new, then rename) for the block; remove it after."""
    if path is None:
        yield
        return
    me = f"{os.getpid()}\n"
    tmp = path + ".new"
    try:
        with open(tmp, "w") as f:
            f.write(me)
        os.replace(tmp, path)
    except OSError as exc:
        raise CantCreateError(
            f"cannot write pidfile {path}: {exc.strerror or exc}; check the directory"
        ) from None
    try:
        yield
    finally:
        try:
            with open(path) as f:
                ours = f.read() == me
            if ours:  # never remove a pidfile another process has written since
                os.unlink(path)
        except OSError:
            pass


class _Supervisor:
    """The state of one supervision: the child, the clock, the signals seen."""

    def __init__(self, cmd: Sequence[str], opts: Options, wake: int) -> None:
        self.cmd = list(cmd)
        self.opts = opts
        self.wake = wake
        self.backoff = Backoff(opts.backoff_min, opts.backoff_max)
        self.restarts: collections.deque[float] = collections.deque()
        self.child: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.next_start = 0.0
        self.next_rss = float("inf")
        self.kill_at = float("inf")
        self.stopping = False
        self.status = 0
        self.preexec = _pdeathsig()

    # --- the loop ---------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped or given up; return the angel's exit code."""
        self.start(first=True)
        while True:
            now = time.monotonic()
            for signum in self.wait(self.deadline(now) - now):
                self.on_signal(signum)
            now = time.monotonic()
            if self.child is not None and self.child.poll() is not None:
                code = self.on_exit(now)
                if code is not None:
                    return code
            if self.child is None:
                if self.stopping:
                    log.info("stopped status=%d", self.status)
                    return self.status
                if now >= self.next_start:
                    self.start()
                continue
            if now >= self.kill_at:
                log.info("killing pgid=%d reason=grace grace=%.1fs", self.child.pid, self.opts.grace)
                self.signal_group(signal.SIGKILL)
                self.kill_at = float("inf")
            if now >= self.next_rss:
                self.check_rss(now)

    def deadline(self, now: float) -> float:
        """Return when the loop must look again even if no signal comes."""
        if self.child is None:
            return self.next_start
        # a SIGCHLD wakes us when the child exits; the cap is only a safety net
        return min(self.kill_at, self.next_rss, now + 5.0)

    def wait(self, timeout: float) -> list[int]:
        """Sleep until a signal arrives or timeout passes; return the signals seen."""
        if timeout > 0:
            with suppress(InterruptedError):  # PEP 475 retries; belt and braces
                select.select([self.wake], [], [], timeout)
        seen: list[int] = []
        while True:
            try:
                data = os.read(self.wake, 256)
            except BlockingIOError:
                return seen
            if not data:  # pragma: no cover
                return seen
            seen.extend(data)

    # --- events -----------------------------------------------------------

    def start(self, first: bool = False) -> None:
        """Start the child; a failed exec counts as a crash, except the first time."""
        self.started = time.monotonic()
        try:
            self.child = subprocess.Popen(self.cmd, process_group=0, preexec_fn=self.preexec, close_fds=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if first:
                raise UsageError(f"cannot run {self.cmd[0]}: {why}; check the command after --") from None
            self.status = 126 if isinstance(exc, PermissionError) else 127
            what = f"status={self.status} error={shlex.quote(why)}"
            delay = self.schedule(self.started, 0.0)
            if delay is None:
                log.warning("exec-failed %s cmd=%s", what, shlex.join(self.cmd))
                raise _GiveUp() from None
            log.warning("exec-failed %s restart_in=%.1fs cmd=%s", what, delay, shlex.join(self.cmd))
            return
        self.kill_at = float("inf")
        self.next_rss = self.started + self.opts.rss_interval if self.opts.max_rss else float("inf")
        log.info("started pid=%d cmd=%s", self.child.pid, shlex.join(self.cmd))

    def on_exit(self, now: float) -> int | None:
        """Handle the child's exit; return the angel's exit code if it should end."""
        assert self.child is not None and self.child.returncode is not None
        pid, rc = self.child.pid, self.child.returncode
        self.child = None
        self.kill_at = self.next_rss = float("inf")
        self.status = exit_status(rc)
        ran = now - self.started
        what = f"pid={pid} status={self.status}"
        if rc < 0:
            what += f" signal={_sig(-rc)}"
        what += f" ran={ran:.1f}s"
        if self.stopping:
            log.info("exited %s", what)
            return None
        if self.status in PERMANENT:
            log.info("exited %s", what)
            log.warning("giving up reason=%s status=%d", PERMANENT[self.status], self.status)
            return self.status
        delay = self.schedule(now, ran)
        if delay is None:
            log.info("exited %s", what)
            return self.give_up()
        log.info("exited %s restart_in=%.1fs", what, delay)
        return None

    def schedule(self, now: float, ran: float) -> float | None:
        """Set when to start again; None if that would be one restart too many."""
        o = self.opts
        if o.max_restarts is not None and o.per is not None:
            while self.restarts and self.restarts[0] <= now - o.per:
                self.restarts.popleft()
            if len(self.restarts) >= o.max_restarts:
                return None
            self.restarts.append(now)
        delay = self.backoff.next_delay(ran)
        self.next_start = max(now + delay, self.started + MIN_INTERVAL)
        return self.next_start - now

    def give_up(self) -> int:
        """Log why the angel stops restarting and return its exit code."""
        log.warning(
            "giving up reason=restarts max_restarts=%d per=%.1fs status=%d",
            self.opts.max_restarts or 0,
            self.opts.per or 0.0,
            self.status,
        )
        return EX_TEMPFAIL

    def on_signal(self, signum: int) -> None:
        """Forward TERM/INT/HUP to the child; TERM and INT also stop the angel."""
        if signum not in FORWARD:
            return  # SIGCHLD: only a wake-up
        pid = self.child.pid if self.child is not None else None
        if signum in STOP and self.stopping and pid is not None:
            # asked twice: do not wait out the grace period
            log.info("killing pgid=%d reason=signal signal=%s", pid, _sig(signum))
            self.signal_group(signal.SIGKILL)
            return
        if signum in STOP:
            self.stopping = True
            if pid is None:
                return
            log.info("stopping pid=%d signal=%s grace=%.1fs", pid, _sig(signum), self.opts.grace)
            self.kill_at = time.monotonic() + self.opts.grace
        elif pid is None:
            log.info("ignored signal=%s reason=no-child", _sig(signum))
            return
        else:
            log.info("forwarded signal=%s pid=%d", _sig(signum), pid)
        self.signal_child(signum)

    def check_rss(self, now: float) -> None:
        """Stop a child whose process group has grown past max_rss; it is then restarted."""
        assert self.child is not None and self.opts.max_rss is not None
        self.next_rss = now + self.opts.rss_interval
        rss = group_rss(self.child.pid)
        if rss <= self.opts.max_rss or self.kill_at != float("inf"):
            return
        log.warning(
            "restarting pid=%d reason=rss rss=%s max_rss=%s",
            self.child.pid,
            fmt_size(rss),
            fmt_size(self.opts.max_rss),
        )
        self.kill_at = now + self.opts.grace
        self.signal_child(signal.SIGTERM)

    # --- signalling -------------------------------------------------------

    def signal_child(self, signum: int) -> None:
        """Send signum to the child, and CONT so a stopped child can act on it."""
        if self.child is None:
            return
        for s in (signum, signal.SIGCONT) if signum in STOP else (signum,):
            with suppress(ProcessLookupError):
                os.kill(self.child.pid, s)

    def signal_group(self, signum: int) -> None:
        """Send signum to the child's whole process group."""
        if self.child is None:
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signum)

    def cleanup(self) -> None:
        """Kill and reap a child left behind by an unexpected error."""
        if self.child is not None and self.child.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.child.wait()


class _GiveUp(Exception):
    """Raised from start() when too many exec failures exhaust --max-restarts."""


def _noop(signum: int, frame: FrameType | None) -> None:
    """Let the signal through to the wake-up pipe; the loop acts on it."""


@contextmanager
def _signals() -> Iterator[int]:
    """Route TERM, INT, HUP and CHLD to a pipe the loop selects on; yield its read end."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    old = {s: signal.signal(s, _noop) for s in (*FORWARD, signal.SIGCHLD)}
    try:
        yield r
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(r)
        os.close(w)


def supervise(cmd: Sequence[str], opts: Options | None = None) -> int:
    """Run cmd under supervision until stopped or given up; return the exit code.

    Call it from the main thread (it installs signal handlers). With ``opts.lock``
    held by another angel it returns 0 at once, without starting anything.
    """
    opts = opts or Options()
    if not cmd:
        raise UsageError("no command to supervise; put it after --")
    if opts.max_rss is not None and not os.path.exists(f"/proc/{os.getpid()}/status"):
        raise UsageError("--max-rss needs /proc/PID/status (Linux); drop the option")
    for name, value in (("DROPR_SPOOL", opts.spool), ("DROPR_CONFIG", opts.config)):
        if value:
            os.environ[name] = value
    with _lock(opts.lock) as mine:
        if not mine:
            return 0
        # handlers before the pidfile: once it exists, TERM is handled, not fatal
        with _signals() as wake, _pidfile(opts.pidfile):
            sup = _Supervisor(cmd, opts, wake)
            try:
                return sup.run()
            except _GiveUp:
                return sup.give_up()
            finally:
                sup.cleanup()


__all__ = [
    "Backoff",
    "MIN_INTERVAL",
    "Options",
    "exit_status",
    "group_rss",
    "parse_backoff",
    "process_rss",
    "supervise",
]
