"""Benchmark section for fetch (#15): a held peer fetching against a push, in one run.

Registered into the harness by ``run.py`` importing this module. Each run measures both
sides on the same disk one right after the other: the transfer rate of 10,000 x 1 KiB
(push: dropr-send --once at A to B's dropr-serve; fetch: dropr-send --once --fetch hub at
the laptop from the hub's dropr-serve), and the put-to-ready latency (push: A's daemon to
B; fetch: a put at the hub to the laptop's daemon, whose fetch the hub holds open).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from delivery import Server, _env, _put_lines, _run_sampled
from harness import Ctx, section, sync_fs

HOLDER = "[peers.laptop]\nhold = true\n"


def _fetcher(root: Path, url: str) -> Path:
    """Make the laptop's spool, fetching from the hub at url; return it."""
    spool = root / "L"
    spool.mkdir()
    (spool / "dropr.toml").write_text(f'node = "laptop"\n[peers.hub]\nurl = "{url}"\nfetch = true\n')
    return spool


def _holder(ctx: Ctx, root: Path) -> Server:
    (root / "H").mkdir()
    (root / "H" / "dropr.toml").write_text('node = "hub"\n' + HOLDER)
    return Server(ctx, root / "H", node="hub")


def _rate(ctx: Ctx, root: Path, n: int, fetch: bool) -> float:
    """Move n x 1 KiB once, by push or by fetch; return messages per second."""
    srv = _holder(ctx, root) if fetch else Server(ctx, root / "B")
    try:
        if fetch:
            spool = _fetcher(root, srv.url)
            _put_lines(ctx, root / "H", "laptop", n, node="hub")
            argv = [ctx.cmd("dropr-send"), "--spool", str(spool), "--once", "--fetch", "hub", "-q"]
            ready = spool / "in" / "default" / "ready"
        else:
            _put_lines(ctx, root / "A", srv.url, n)
            argv = [ctx.cmd("dropr-send"), "--spool", str(root / "A"), "--once", "-q"]
            ready = root / "B" / "in" / "default" / "ready"
        sync_fs(root)
        el, rc, _ = _run_sampled(argv, _env(ctx, "laptop" if fetch else "a"))
        got = len(os.listdir(ready))
        what = "fetched" if fetch else "pushed"
        print(f"    {what} {n:,} in {el:.2f} s, exit {rc}, {got:,} ready")
        if got != n or rc != 0:
            ctx.errors.append(f"fetch: {what} {got} of {n}, exit {rc}")
        return n / el
    finally:
        srv.stop()


def _latency(ctx: Ctx, root: Path, n: int, fetch: bool) -> float:
    """Put n messages one at a time through the library; return the p50 (ms) of put to
    the wake-up of a consumer at the receiving end, a daemon moving each."""
    from dropr.config import Config, Peer
    from dropr.spool import Spool, wake

    if fetch:
        srv = _holder(ctx, root)
        far = _fetcher(root, srv.url)
        near, peer, mover = root / "H", Peer("laptop", ""), far
        peer.hold = True
    else:
        srv = Server(ctx, root / "B")
        far, near = root / "B", root / "A"
        near.mkdir()
        (near / "node").write_text("a\n")
        peer, mover = Peer("b", srv.url), near
    node = "laptop" if fetch else "a"
    daemon = subprocess.Popen([ctx.cmd("dropr-send"), "--spool", str(mover), "-q"], env=_env(ctx, node))
    try:
        time.sleep(1.0)  # the daemon idles (and, fetching, its fetch is held): no figure
        os.environ.pop("DROPR_NODE", None)
        src, dst = Spool(str(near), Config()), Spool(str(far), Config())
        dst.channel_dir("default")
        lat: list[float] = []
        with dst.wakeups.waiter(wake.recv_sock("default", "bench")) as w:
            for _ in range(n):
                w.drain()
                t0 = time.perf_counter()
                batch = src.batch([peer])
                batch.add(b"x" * 100)
                batch.commit()
                if not w.wait(10):
                    ctx.errors.append("fetch latency: a message did not arrive within 10 s")
                    break
                lat.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.02)
        p50 = statistics.median(lat)
        what = "fetch" if fetch else "push"
        print(f"    {what}: {len(lat)} messages, p50 {p50:.2f} ms, max {max(lat):.2f} ms")
        return p50
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        srv.stop()


@section("fetch", "(#15) fetch against push: 10,000 x 1 KiB rate, and put-to-ready p50 (100 msgs)")
def fetch(ctx: Ctx) -> None:
    n = ctx.n(10_000)
    for r in range(ctx.repeat):
        print(f"  run {r + 1}/{ctx.repeat}")
        push = _rate(ctx, ctx.fresh("fetch-push"), n, fetch=False)
        fetched = _rate(ctx, ctx.fresh("fetch-fetch"), n, fetch=True)
        ctx.figure("fetch.push.rate", "push, 1 KiB msgs/s (send --once) (info)", push, "msgs/s")
        ctx.figure("fetch.rate", "fetch, 1 KiB msgs/s (send --once --fetch) (info)", fetched, "msgs/s")
        ctx.figure(
            "fetch.rate.ratio", "fetch rate / push rate", fetched / push, target=(">=", 0.70), percent=True
        )
        lp = _latency(ctx, ctx.fresh("fetch-lat-push"), ctx.n(100), fetch=False)
        lf = _latency(ctx, ctx.fresh("fetch-lat-fetch"), ctx.n(100), fetch=True)
        ctx.figure("fetch.lat.push", "push, put to ready p50 (info)", lp, "ms")
        ctx.figure("fetch.lat", "fetch, put at holder to ready p50 (info)", lf, "ms")
        ctx.figure("fetch.lat.ratio", "fetch p50 / push p50", lf / lp, "x", target=("<=", 2.0))
