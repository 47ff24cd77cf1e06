"""Benchmark section for relays (#15): a -> b -> c against a -> b, in the same run.

Registered into the harness by ``run.py`` importing this module. Both runs time the same
thing: from the start of ``dropr-send --once`` at A until the last of the messages is
ready in the destination's inbox (C, through B's running dropr-send daemon; or B).

Three nodes on one machine are not three hosts: a relay run does twice the storing of a
direct one (at B and at C) on the same CPUs, so unconstrained it measures CPU contention,
not the pipeline. Each node therefore gets the CPU of a host of its own, the same in both
runs: a cgroup (v1 cpu controller, /sys/fs/cgroup/cpu) per node, with a CFS quota of a
third of the machine's CPUs each (three nodes fit at once). Without that controller (or
root), the runs are unconstrained and the section says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from delivery import Server, _env, _put_lines
from harness import Ctx, section, sync_fs

LIMIT = 1.3  # a -> b -> c takes at most this many times a -> b: the hops pipeline


def _ready(spool: Path) -> int:
    try:
        return len(os.listdir(spool / "in" / "default" / "ready"))
    except FileNotFoundError:
        return 0


CPU_CGROUPS = "/sys/fs/cgroup/cpu"  # cgroup v1's cpu controller
ACCT_CGROUPS = "/sys/fs/cgroup/cpuacct"  # and its accounting controller: CPU used per node


class Hosts:
    """A cgroup per node limiting its processes to a third of the machine's CPUs."""

    def __init__(self) -> None:
        self.dirs: dict[str, str] = {}
        self.acct: dict[str, str] = {}  # node -> its cpuacct cgroup (none: not shown)
        quota = int(100_000 * (os.cpu_count() or 1) / 3)
        try:
            for node in "abc":
                d = f"{CPU_CGROUPS}/dropr-bench-relay-{os.getpid()}-{node}"
                os.mkdir(d)
                self.dirs[node] = d
                Path(d, "cpu.cfs_period_us").write_text("100000")
                Path(d, "cpu.cfs_quota_us").write_text(str(quota))
            self.note = f"each node limited to {quota / 1000:.0f} ms of CPU per 100 ms (a cgroup per node)"
            for node in "abc":
                d = f"{ACCT_CGROUPS}/dropr-bench-relay-{os.getpid()}-{node}"
                os.mkdir(d)
                self.acct[node] = d
        except OSError as exc:
            self.close()
            self.note = f"UNCONSTRAINED: no cpu cgroup ({exc.strerror}): the relay run competes for CPU"

    def enter(self, node: str) -> Callable[[], None] | None:
        """Return a preexec_fn that puts the new process into node's cgroup (None: no cgroups)."""
        d = self.dirs.get(node)
        if d is None:
            return None
        dirs = [d, *([self.acct[node]] if node in self.acct else [])]

        def join() -> None:
            for cg in dirs:
                with open(f"{cg}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        return join

    def usage(self) -> dict[str, float]:
        """Return the CPU seconds each node's processes have used so far (cpuacct)."""
        return {n: int(Path(d, "cpuacct.usage").read_text()) / 1e9 for n, d in self.acct.items()}

    def close(self) -> None:
        """Remove the cgroups (their processes are gone by then)."""
        for d in [*self.dirs.values(), *self.acct.values()]:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)  # a process of the node is still exiting
        self.dirs = {}
        self.acct = {}


HOSTS: Hosts | None = None


def _start(ctx: Ctx, node: str, *args: str) -> subprocess.Popen[bytes]:
    """Start a dropr command of node in the node's cgroup."""
    join = HOSTS.enter(node) if HOSTS else None
    return subprocess.Popen(args, env=_env(ctx, node), preexec_fn=join)


def _server(ctx: Ctx, spool: Path, node: str) -> Server:
    """Start node's dropr-serve in the node's cgroup (its workers are forked inside)."""
    return Server(ctx, spool, node=node, preexec=HOSTS.enter(node) if HOSTS else None)


def _timed_send(ctx: Ctx, a: Path, dest: Path, n: int) -> float:
    """Run dropr-send --once at A; return the seconds until n messages are ready at dest
    (and keep the CPU seconds each node used meanwhile in CPU_USED)."""
    before = HOSTS.usage() if HOSTS else {}
    t0 = time.perf_counter()
    p = _start(ctx, "a", ctx.cmd("dropr-send"), "--spool", str(a), "--once", "-q")
    deadline = time.monotonic() + 600
    while _ready(dest) < n:
        if time.monotonic() > deadline or (p.poll() or 0) != 0:
            p.kill()
            p.wait()
            why = f"dropr-send exited {p.returncode}: only {_ready(dest)} of {n} messages arrived"
            raise RuntimeError(why)
        time.sleep(0.01)
    el = time.perf_counter() - t0
    after = HOSTS.usage() if HOSTS else {}
    CPU_USED.clear()
    CPU_USED.update({node: after[node] - before[node] for node in after})
    p.wait(600)
    return el


CPU_USED: dict[str, float] = {}  # node -> CPU seconds used during the last _timed_send


def _direct(ctx: Ctx, root: Path, n: int) -> float:
    """a -> b: the reference."""
    srv = _server(ctx, root / "B", "b")
    try:
        _put_lines(ctx, root / "A", srv.url, n)
        sync_fs(root)
        return _timed_send(ctx, root / "A", root / "B", n)
    finally:
        srv.stop()


def _chain(ctx: Ctx, root: Path, n: int) -> float:
    """a -> b -> c: B relays with its dropr-send daemon already running."""
    a, b = root / "A", root / "B"
    dest = _server(ctx, root / "C", "c")
    b.mkdir(parents=True)
    (b / "dropr.toml").write_text(f'node = "b"\n[serve]\nrelay = ["a"]\n[peers.c]\nurl = "{dest.url}"\n')
    relay = _server(ctx, b, "b")
    sender = _start(ctx, "b", ctx.cmd("dropr-send"), "--spool", str(b), "-q")
    try:
        a.mkdir(parents=True)
        (a / "dropr.toml").write_text(f'node = "a"\n[peers.b]\nurl = "{relay.url}"\n[peers.c]\nvia = "b"\n')
        _put_lines(ctx, a, "c", n)
        deadline = time.monotonic() + 30
        while not (b / "wake" / "send.sock").exists():  # B's sender waits for work
            if time.monotonic() > deadline or sender.poll() is not None:
                raise RuntimeError("the relay's dropr-send did not start")
            time.sleep(0.01)
        sync_fs(root)
        return _timed_send(ctx, a, root / "C", n)
    finally:
        sender.send_signal(signal.SIGTERM)
        sender.wait(30)
        relay.stop()
        dest.stop()


@section("relay", "(#15) 10,000 × 1 KiB a->b->c through a relay, against a->b in the same run")
def relay(ctx: Ctx) -> None:
    n = ctx.n(10_000)
    print(f"  from dropr-send --once at a until all {n:,} are ready at the destination;")
    print("  a->b->c: b's dropr-send daemon passes each batch on as it arrives")
    global HOSTS
    HOSTS = Hosts()
    print(f"  {HOSTS.note}")
    try:
        for r in range(ctx.repeat):
            _relay_run(ctx, r, n)
    finally:
        HOSTS.close()
        HOSTS = None


def _cpu_note() -> str:
    """Return the CPU seconds each node used in the last timed send ("" without cpuacct)."""
    return ", ".join(f"{node} {s:.2f}" for node, s in sorted(CPU_USED.items()) if s > 0.005)


def _relay_run(ctx: Ctx, r: int, n: int) -> None:
    root = ctx.fresh("relay-direct")
    direct = _direct(ctx, root, n)
    used_direct = _cpu_note()
    ctx.remove_at_end(f"relay-direct-{r}", root)
    root = ctx.fresh("relay-chain")
    chained = _chain(ctx, root, n)
    ctx.remove_at_end(f"relay-chain-{r}", root)
    print(f"  run {r + 1}: a->b {direct:.2f} s, a->b->c {chained:.2f} s")
    if used_direct:
        print(f"    CPU seconds used meanwhile: a->b {used_direct}; a->b->c {_cpu_note()}")
    ctx.figure("relay.direct", "a->b, 1 KiB messages (info)", direct, "s")
    ctx.figure("relay.chain", "a->b->c through a relay (info)", chained, "s")
    ctx.figure("relay.ratio", "a->b->c time / a->b time", chained / direct, target=("<=", LIMIT))
