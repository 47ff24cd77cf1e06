"""The benchmark harness: a registry of sections, figures with targets, disk helpers.

A section is a function decorated with ``@section(name, title)``; sections run in
the order they were registered.  A section records figures with ``ctx.figure``;
every call adds one sample, so a section run ``--repeat`` times reports the median
and the spread of its samples.  A figure with a target gets PASS or MISS in the
final summary; a figure without one is information.

Nothing here imports dropr: the harness measures the installed commands as
subprocesses, and sections import the library only to build fixtures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# -- registry -------------------------------------------------------------------


@dataclass
class Section:
    name: str
    title: str
    fn: Callable[[Ctx], None]
    needs: tuple[str, ...] = ()  # figures from other sections this one compares against
    slow: bool = False


SECTIONS: list[Section] = []


def section(
    name: str, title: str, *, needs: tuple[str, ...] = (), slow: bool = False
) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    """Register a benchmark section; sections run in registration order."""

    def deco(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        if any(s.name == name for s in SECTIONS):
            raise ValueError(f"duplicate bench section {name!r}")
        SECTIONS.append(Section(name, title, fn, needs, slow))
        return fn

    return deco


# -- figures --------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    ">": lambda v, t: v > t,
}


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    target: tuple[str, float] | None = None  # (op, value), e.g. (">=", 0.6)
    percent: bool = False  # show value (and target) as a percentage
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def fmt(self, v: float | None) -> str:
        if v is None:
            return "-"
        if self.percent:
            return f"{v * 100:.0f}%"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"

    def spread(self) -> str:
        if len(self.samples) < 2:
            return ""
        return f"{self.fmt(min(self.samples))} .. {self.fmt(max(self.samples))}"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        op, t = self.target
        shown = f"{t * 100:.0f}%" if self.percent else f"{t:g}"
        return f"{op.replace('>=', '≥').replace('<=', '≤')} {shown}"

    def verdict(self) -> str:
        if self.target is None:
            return "info"
        v = self.value
        if v is None:
            return "n/a"
        return "PASS" if _OPS[self.target[0]](v, self.target[1]) else "MISS"


# -- context --------------------------------------------------------------------


class Ctx:
    """What a section gets: a scratch directory on the measured disk, the commands, figures."""

    def __init__(self, work: Path, repeat: int, scale: float, drop_caches: bool) -> None:
        self.work = work
        self.repeat = repeat
        self.scale = scale
        self.drop_caches = drop_caches
        self.figures: dict[str, Figure] = {}
        self.errors: list[str] = []
        self.bindir = _find_bindir()
        self._seq = 0
        self._at_end: list[tuple[str, Path]] = []
        self.keep = False  # keep the scratch directory: remove_at_end does nothing

    # commands and interpreter

    def cmd(self, name: str) -> str:
        """Return the absolute path of an installed console script."""
        p = self.bindir / name
        if not p.exists():
            found = shutil.which(name)
            if not found:
                raise FileNotFoundError(f"{name} is not installed (make bench installs it)")
            return found
        return str(p)

    def interpreter(self, script: str) -> str:
        """Return the interpreter a console script runs with (its #! line)."""
        with open(script, "rb") as f:
            first = f.readline().decode().strip()
        if first.startswith("#!"):
            parts = first[2:].split()
            if parts and os.path.basename(parts[0]) != "env":
                return parts[0]
        return sys.executable

    def env(self) -> dict[str, str]:
        """Return an environment for commands, free of dropr and completion settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DROPR_") and not k.endswith("_COMPLETE") and k not in _ENV_DROP
        }
        env["PATH"] = f"{self.bindir}{os.pathsep}{env.get('PATH', '')}"
        return env

    # scratch space

    def fresh(self, tag: str) -> Path:
        """Return a new empty directory in the work area."""
        self._seq += 1
        d = self.work / f"{self._seq:03d}-{tag}"
        d.mkdir()
        return d

    def remove_at_end(self, label: str, path: Path) -> None:
        """Remove a tree after every section ran, timed: deleting between runs would skew
        the next ones (see ``fs_notes``)."""
        self._at_end.append((label, path))

    def cleanup(self) -> None:
        """Remove the trees handed to remove_at_end, timing and printing each."""
        if self.keep:
            return
        for label, path in self._at_end:
            el = rm_rf(path)
            t0 = time.perf_counter()
            sync_fs(path.parent)
            fl = time.perf_counter() - t0
            print(f"  cleanup: rm -rf {label}: {el:.1f} s, then syncfs {fl:.1f} s", flush=True)
            f = self.figures.get(f"rm.{label}")
            if f is None:
                f = self.figures[f"rm.{label}"] = Figure(f"rm.{label}", f"rm -rf {label} (info)", "s")
            f.samples.append(el)
        self._at_end.clear()

    def n(self, count: int) -> int:
        """Scale a message count by --scale (at least 1)."""
        return max(1, int(count * self.scale))

    # figures

    def figure(
        self,
        key: str,
        label: str,
        value: float,
        unit: str = "",
        *,
        target: tuple[str, float] | None = None,
        percent: bool = False,
        note: str = "",
    ) -> Figure:
        """Add one sample to a figure (created on first use) and print it."""
        f = self.figures.get(key)
        if f is None:
            f = self.figures[key] = Figure(key, label, unit, target, percent, note=note)
        f.samples.append(value)
        shown = f.fmt(value) + (f" {unit}" if unit and not percent else "")
        print(f"    {label}: {shown}", flush=True)
        return f

    def value(self, key: str) -> float | None:
        """Return the median of a figure, or None if it was not measured."""
        f = self.figures.get(key)
        return f.value if f else None


# Without bytecode caching every run compiles dropr from source (~10 ms more per
# put); no real install runs like that (pip compiles at install time).
_ENV_DROP = {"PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"}


def _find_bindir() -> Path:
    here = Path(sys.executable).parent
    if (here / "dropr-put").exists():
        return here
    venv = REPO / ".venv" / "bin"
    if (venv / "dropr-put").exists():
        return venv
    found = shutil.which("dropr-put")
    return Path(found).parent if found else here


# -- the disk -------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def sync_fs(path: Path | str) -> str:
    """Flush the filesystem holding path: syncfs(2) through ctypes, else os.sync; say which."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return "os.sync() (sync(2), every filesystem)"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)
    return "syncfs(2) of that filesystem, via ctypes"


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so the names in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches(path: Path | str) -> bool:
    """Flush and drop the page, dentry and inode caches (root only); True if done."""
    sync_fs(path)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def mount_of(path: Path | str) -> dict[str, str]:
    """Return device, fstype, mount point and options of the filesystem holding path."""
    st = os.stat(path)
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best: dict[str, str] = {"dev": want, "source": "?", "fstype": "?", "mount": "?", "opts": ""}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a = left.split()
                b = right.split()
                if a[2] != want or len(b) < 2:
                    continue
                # several mounts may share a device (bind mounts): keep the deepest prefix
                mnt = a[4]
                inside = str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt
                if inside and (best["mount"] == "?" or len(mnt) > len(best["mount"])):
                    best = {"dev": want, "source": b[1], "fstype": b[0], "mount": mnt, "opts": a[5]}
    except OSError:
        pass
    return best


def fs_notes(path: Path | str) -> list[str]:
    """Return what about this filesystem makes figures hard to compare, if anything."""
    mi = mount_of(path)
    notes = []
    if mi["fstype"] == "ext4":
        dev = os.path.basename(os.path.realpath(mi["source"]))
        try:
            with open(f"/sys/fs/ext4/{dev}/journal_task") as f:
                nojournal = f.read().strip() == "<none>"
        except OSError:
            nojournal = False
        if nojournal:
            notes.append(
                "ext4 WITHOUT a journal: creating a file skips every inode freed in the last "
                "60-360 s (recently_deleted() in fs/ext4/ialloc.c), so file creation slows "
                "down after any mass deletion on this filesystem, other processes' included; "
                "this bench deletes nothing until the end, but concurrent work still adds noise"
            )
    return notes


PROBE_FILES = 1000
SETTLED_US = 100.0  # healthy here: 25-75 µs per file; after a mass deletion: 300-1000


def create_probe(ctx: Ctx) -> float:
    """Return the µs one open(O_CREAT) + write 1 KiB + close costs on the disk right now."""
    d = ctx.fresh("probe")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    block = b"p" * 1024
    t0 = time.perf_counter()
    for i in range(PROBE_FILES):
        fd = os.open(f"{d}/{i}", flags, 0o644)
        os.write(fd, block)
        os.close(fd)
    return (time.perf_counter() - t0) / PROBE_FILES * 1e6


def settle(ctx: Ctx, max_wait: float = 60.0) -> float:
    """Wait (up to max_wait s) until creating a file is cheap again; record the last probe.

    On ext4 without a journal a mass deletion slows every file creation for 60-360 s
    (see fs_notes); measuring then would say more about that than about dropr. Other
    processes deleting files all the time keep it high: then we measure anyway.
    """
    sync_fs(ctx.work)
    t0 = time.monotonic()
    us = create_probe(ctx)
    while us > SETTLED_US and time.monotonic() - t0 < max_wait:
        print(f"    disk busy: {us:.0f} µs per file created (> {SETTLED_US:.0f}); waiting 10 s")
        time.sleep(10)
        sync_fs(ctx.work)
        us = create_probe(ctx)
    ctx.figure("fs.probe", "fs probe: create+write+close, no sync (info)", us, "µs/file")
    return us


def load_text() -> str:
    """Return the load averages, for judging how busy the machine was."""
    try:
        a, b, c = os.getloadavg()
        return f"load {a:.2f} {b:.2f} {c:.2f}"
    except OSError:
        return "load ?"


def work_parent(explicit: str | None) -> Path:
    """Pick where the scratch directory goes: on a real disk, the repo's one if possible."""
    if explicit:
        return Path(explicit)
    repo_dev = os.stat(REPO).st_dev
    for cand in (Path("/var/tmp"),):
        try:
            if os.stat(cand).st_dev == repo_dev and os.access(cand, os.W_OK):
                return cand
        except OSError:
            pass
    d = REPO / ".bench-tmp"
    d.mkdir(exist_ok=True)
    return d


def make_work(parent: Path) -> Path:
    """Create the scratch directory under parent."""
    return Path(tempfile.mkdtemp(prefix="dropr-bench.", dir=parent))


def rm_rf(path: Path | str) -> float:
    """Remove a tree with rm -rf (much faster than shutil for big trees); return seconds."""
    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)
    return time.perf_counter() - t0


# -- running --------------------------------------------------------------------


def header(ctx: Ctx, parent: Path) -> None:
    """Print where and on what the benchmark runs."""
    mi = mount_of(ctx.work)
    rev = "?"
    with contextlib.suppress(OSError):
        rev = (
            subprocess.run(
                ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            or "?"
        )
    st = os.statvfs(ctx.work)
    print("dropr bench")
    print(f"  when       {time.strftime('%Y-%m-%d %H:%M:%S %z')}   repo {REPO} @ {rev}")
    print(
        f"  host       {platform.node()}  {platform.system()} {platform.release()}  "
        f"{os.cpu_count()} CPUs  Python {platform.python_version()}"
    )
    print(f"  commands   {ctx.bindir}")
    print(f"  scratch    {ctx.work}")
    print(
        f"  disk       {mi['source']} ({mi['fstype']}, dev {mi['dev']}) mounted on "
        f"{mi['mount']} [{mi['opts']}]; "
        f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB, {st.f_favail:,} inodes free"
    )
    if mi["fstype"] in ("tmpfs", "ramfs"):
        print(
            "  WARNING    the scratch directory is in memory: sync figures mean nothing; "
            "pass --dir on a real disk"
        )
    for note in fs_notes(ctx.work):
        print(f"  WARNING    {note}")
    if os.stat(ctx.work).st_dev != os.stat(REPO).st_dev:
        print("  note       the scratch directory is not on the repo's filesystem")
    print(f"  sync       {sync_fs(ctx.work)}")
    dropped = sorted(k for k in _ENV_DROP if k in os.environ)
    if dropped:
        print(
            f"  env        unset for the commands: {', '.join(dropped)} (bytecode is cached as in "
            "a real install; __pycache__ may appear in lib/ and cli/)"
        )
    print(f"  busy       {load_text()} (other work on the machine skews figures)")
    print(f"  repeat     {ctx.repeat}x per section (figures are medians; spread is min .. max)")
    if ctx.scale != 1:
        print(f"  SCALE      {ctx.scale}: counts differ from the issue's; targets are indicative only")
    print(flush=True)


SETTLE_FIRST = 360.0  # the kernel skips inodes freed in the last 60 s, 360 s while their table is dirty


def run_sections(ctx: Ctx, names: list[str]) -> None:
    """Run the chosen sections in registry order; a failure is printed and the rest go on.

    Before the first one, wait (up to SETTLE_FIRST) for the disk to get over any mass
    deletion, such as the cleanup of a previous bench run or a test suite: the sections
    themselves delete nothing until the end.
    """
    print("== settle: waiting until creating a file is cheap again", flush=True)
    settle(ctx, max_wait=SETTLE_FIRST)
    print(flush=True)
    for s in SECTIONS:
        if s.name not in names:
            continue
        print(f"== {s.name}: {s.title}   [{load_text()}]", flush=True)
        t0 = time.perf_counter()
        try:
            s.fn(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a section's failure must not stop the others
            msg = f"section {s.name} failed: {type(exc).__name__}: {exc}"
            ctx.errors.append(msg)
            print(f"  ERROR {msg}")
            traceback.print_exc(limit=4, file=sys.stdout)
        print(f"  ({s.name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
    print("== cleanup", flush=True)
    try:
        ctx.cleanup()
    except Exception as exc:
        ctx.errors.append(f"cleanup failed: {exc}")
        print(f"  ERROR cleanup failed: {exc}")
    print()


def summary(ctx: Ctx) -> None:
    """Print every figure with its spread, target and verdict."""
    rows = [["figure", "value", "spread (min .. max)", "n", "target", "verdict"]]
    for f in ctx.figures.values():
        unit = "" if f.percent else f" {f.unit}" if f.unit else ""
        rows.append(
            [
                f.label,
                f.fmt(f.value) + unit,
                f.spread(),
                str(len(f.samples)),
                f.target_text(),
                f.verdict(),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("== summary")
    for i, r in enumerate(rows):
        line = "  ".join(
            c.ljust(w) if j != 1 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        print("  " + line.rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for e in ctx.errors:
        print(f"  ERROR {e}")
    targets = [f for f in ctx.figures.values() if f.target is not None]
    missed = [f.label for f in targets if f.verdict() != "PASS"]
    print(
        f"  targets: {len(targets) - len(missed)} of {len(targets)} met"
        + (f"; missed or not measured: {', '.join(missed)}" if missed else "")
    )


_REGULAR: dict[str, Path] = {}


def regular_install(ctx: Ctx) -> Path:
    """Install dropr as ``pip install .`` would (a copy in site-packages, compiled), in a
    throwaway venv that reuses the project venv's dependencies; return its bin folder,
    with every dropr-* console script of the project venv.

    The project venv is an editable install, whose .pth hook makes *every* interpreter
    start import pathlib, re, importlib.util and more: that inflates start-up figures.
    Made once per run.
    """
    import importlib.util

    if "bin" in _REGULAR:
        return _REGULAR["bin"]
    py = ctx.interpreter(ctx.cmd("dropr-put"))
    d = ctx.fresh("regular-install")
    venv = d / "venv"
    subprocess.run([py, "-m", "venv", "--without-pip", str(venv)], check=True, env=ctx.env())
    (purelib,) = venv.glob("lib/python3*/site-packages")
    for pkg in ("dropr", "dropr_cli"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot find the {pkg} package")
        src = list(spec.submodule_search_locations)[0]
        shutil.copytree(src, purelib / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([py, "-m", "compileall", "-q", str(purelib)], check=True, env=ctx.env())
    deps = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=ctx.env(),
    ).stdout.strip()  # fmt: skip
    # a plain path entry: the editable install's .pth files there are not processed
    (purelib / "zz-dropr-bench-deps.pth").write_text(deps + "\n")
    vpy = str(venv / "bin" / "python")
    for script in sorted(ctx.bindir.glob("dropr-*")):
        lines = script.read_text().splitlines(keepends=True)
        new = venv / "bin" / script.name
        new.write_text(f"#!{vpy}\n" + "".join(lines[1:]))
        new.chmod(0o755)
    where = subprocess.run(
        [vpy, "-c", "import dropr, sys; print(dropr.__file__); print(sys.modules.keys())"],
        capture_output=True, text=True, check=True, env=ctx.env(),
    ).stdout  # fmt: skip
    if not where.startswith(str(purelib)) or "editable" in where:
        raise RuntimeError(f"the regular install imports the wrong dropr: {where[:300]}")
    _REGULAR["bin"] = venv / "bin"
    return venv / "bin"


# -- spools built straight in the layout (ls-million, quota, backlog) ---------------------------


def _fill_queued(queued: str, start: int, stop: int, base: int, payload: bytes) -> int:
    """Write queued outbox files start..stop: a header and payload each, no fsync."""
    from dropr import message as m

    crc = m.crc32(payload)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    dfd = os.open(queued, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(start, stop):
            t = base + i
            ident = f"{t:013x}{i:011x}"  # a valid generated id: its time is its arrival
            data = m.Header(ident, "default", 5, t, 0, len(payload), crc).pack() + payload
            fd = os.open(m.out_name(5, t, ident), flags, 0o644, dir_fd=dfd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return stop - start


def build_queued(queued: Path | str, n: int, payload: bytes, base: int = 0) -> int:
    """Write n messages straight into an outbox's queued/ folder with up to 4 processes and
    return how many were made; nothing is synced (the caller syncs the filesystem once):
    dropr-put --lines would take minutes at the put-bulk rate, and the figure is elsewhere.
    Message i's arrival and id time is base + i µs (default: before any put of this run)."""
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    base = base or time.time_ns() // 1000 - n - 10_000_000
    step = -(-n // workers)
    starts = range(0, n, step)
    with ProcessPoolExecutor(workers) as ex:
        return sum(
            ex.map(
                _fill_queued,
                [str(queued)] * len(starts),
                starts,
                [min(n, s + step) for s in starts],
                [base] * len(starts),
                [payload] * len(starts),
            )
        )


def wait_url(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """Return the url a starting dropr-serve logs (its stderr goes to log) once it listens."""
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"dropr-serve did not start: {log.read_text()[-500:]}")
        for line in log.read_text().splitlines():
            if "url=" in line:
                return line.split("url=")[1].split()[0]
        time.sleep(0.02)


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process the bench started, and wait; SIGKILL it after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_status(pid: int, key: str) -> int:
    """Return a /proc/PID/status field in KiB (VmHWM, VmRSS), 0 if the process is gone.

    A child's peak is its VmHWM, read while it runs, never wait4's ru_maxrss: the kernel
    keeps there the peak of the image exec replaced, and subprocess execs from this very
    process (vfork), so a child reports the bench's own peak when that is larger (a
    dropr-send of 35 MiB read 129 MiB late in a full run, after the million-message sections)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
