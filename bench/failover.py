"""Benchmark section for peer groups (#15): a failover group's first member dies mid-stream.

Registered into the harness by ``run.py`` importing this module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from delivery import Server, _env, _tree
from harness import Ctx, section

PUT_GAP = 0.002  # the stream: one message put every 2 ms


@section(
    "failover",
    "(#15) failover group, first member killed -9 mid-stream: kill to first message stored at the second",
)
def failover(ctx: Ctx) -> None:
    for r in range(ctx.repeat):
        root = ctx.fresh("failover")
        print(f"  run {r + 1}/{ctx.repeat}")
        _failover_run(ctx, root)
        ctx.remove_at_end(f"failover-{r}", root)


def _failover_run(ctx: Ctx, root: Path) -> None:
    from dropr.config import Config
    from dropr.spool import Spool, wake

    m1, m2 = Server(ctx, root / "M1", "m1"), Server(ctx, root / "M2", "m2")
    a_spool = root / "A"
    a_spool.mkdir()
    (a_spool / "dropr.toml").write_text(f'node = "a"\n[peers.g]\nurls = ["{m1.url}", "{m2.url}"]\n')
    sender = subprocess.Popen([ctx.cmd("dropr-send"), "--spool", str(a_spool), "-q"], env=_env(ctx, "a"))
    os.environ.pop("DROPR_NODE", None)
    cfg = Config({"node": "a", "peers": {"g": {"urls": [m1.url, m2.url]}}})
    a = Spool(str(a_spool), cfg)
    limit = cfg.backoff_min + 1.0
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            batch = a.batch([cfg.peers["g"]])
            batch.add(b"x" * 100)
            batch.commit()
            time.sleep(PUT_GAP)

    putter = threading.Thread(target=stream, name="bench-failover-put")
    b = Spool(str(root / "M2"), Config())
    b.channel_dir("default")
    try:
        putter.start()
        ready1 = root / "M1" / "in" / "default" / "ready"
        deadline = time.monotonic() + 30
        while _count(ready1) < 200:  # mid-stream: the first member is taking messages
            if time.monotonic() > deadline:
                raise RuntimeError("failover: the first member stored nothing in 30 s")
            time.sleep(0.01)
        with b.wakeups.waiter(wake.recv_sock("default", "bench")) as w:
            w.drain()
            if _count(root / "M2" / "in" / "default" / "ready"):
                ctx.errors.append("failover: the second member stored a message before the kill")
            for pid in _tree(m1.proc.pid):
                os.kill(pid, signal.SIGKILL)
            t0 = time.perf_counter()
            got = w.wait(30)
            el = time.perf_counter() - t0
        m1.proc.wait(10)
        if not got:
            ctx.errors.append("failover: nothing stored at the second member within 30 s")
            return
        from dropr.config import member_name

        pinned = _count(a_spool / "out" / member_name("g", m1.url) / "queued")
        print(f"  kill -9 of m1 after {_count(ready1)} stored there; first at m2 {el * 1000:.0f} ms later;"
              f" {pinned} pinned at m1 (in flight: retried there, or after failover_after)")  # fmt: skip
        ctx.figure("failover.time", f"kill to first stored at member 2 (limit {limit:g} s)", el, "s",
                   target=("<=", limit))  # fmt: skip
        ctx.figure("failover.ratio", "  as a share of send.backoff_min + 1 s", el / limit, percent=True,
                   target=("<=", 1.0))  # fmt: skip
    finally:
        stop.set()
        if putter.is_alive():
            putter.join(10)
        sender.send_signal(signal.SIGTERM)
        sender.wait(30)
        m1.stop()
        m2.stop()


def _count(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0
