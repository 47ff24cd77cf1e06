"""Benchmark section for limits.quota (#17): a put into a spool of a million live messages
against a put into an empty spool with the same config, in the same run.

Registered into the harness by ``run.py`` importing this module. The million messages
are built straight into the layout by ls-million's builder (harness.build_queued), and the
running total is initialised as the repair does it (``Usage.rebuild``, a full count
under the exclusive lock), timed: that is what a crash costs a spool this size. Then
single ``dropr-put`` calls into each spool, interleaved call by call so that drift of
the machine hits both alike.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Ctx, build_queued, section, sync_fs

LIMIT = 1.2  # a put into a million live messages costs at most this many times one into none
CONFIG = '[limits]\nquota = "1TiB"\n'  # far above what is put: every put is let in


def _run_helpers() -> tuple[Callable[[Path], Path], Callable[..., Any], str]:
    """put-single's helpers, from run.py: the entry point, which
    imports this module last (so they are in __main__, not in a module named run)."""
    main: Any = sys.modules.get("__main__")
    if not hasattr(main, "_prepare_spool"):
        import run as main  # type: ignore[no-redef]
    return main._prepare_spool, main._time_calls, main.URL


def _build(ctx: Ctx, spool: Path, n: int) -> float:
    """Fill spool's outbox with n messages straight in the layout; return the seconds."""
    prepare, _, _ = _run_helpers()
    queued = prepare(spool)
    t0 = time.perf_counter()
    made = build_queued(queued, n, b"0123456789abcdef")
    sync_fs(spool)
    if made != n:
        raise RuntimeError(f"built {made} messages, wanted {n}")
    return time.perf_counter() - t0


def _rebuild(spool: Path) -> tuple[float, int]:
    """Initialise the running total as the repair does; return the seconds and the total."""
    from dropr.config import load
    from dropr.spool import Spool
    from dropr.spool.usage import Usage

    t0 = time.perf_counter()
    rec = Usage(Spool(str(spool), load(str(spool)))).rebuild()
    return time.perf_counter() - t0, rec.total


def _scan(spool: Path) -> float:
    """Time what every put with a quota did before (#17): report.spool_bytes."""
    from dropr.config import load
    from dropr.report import spool_bytes
    from dropr.spool import Spool

    t0 = time.perf_counter()
    spool_bytes(Spool(str(spool), load(str(spool))))
    return time.perf_counter() - t0


def _record(spool: Path) -> tuple[int, int, int]:
    from dropr.config import load
    from dropr.spool import Spool
    from dropr.spool.usage import Usage

    rec = Usage(Spool(str(spool), load(str(spool)))).read()
    if rec is None:
        raise RuntimeError(f"no usage record in {spool}")
    return rec.total, rec.opens, rec.closes


@section("quota", "(#17) single dropr-put with limits.quota: 1,000,000 live messages against none",
         slow=True)  # fmt: skip
def quota(ctx: Ctx) -> None:
    n = ctx.n(1_000_000)
    calls = ctx.n(200)
    st = os.statvfs(ctx.work)
    need = n * 4096 + (1 << 30)
    if st.f_bavail * st.f_frsize < need or st.f_favail < n + 10_000:
        raise RuntimeError(f"not enough room for {n:,} files: need ~{need / 2**30:.1f} GiB and {n:,} inodes")
    prepare, time_calls, url = _run_helpers()
    root = ctx.fresh("quota")
    full, empty = root / "full", root / "empty"
    print(f"  building {n:,} queued messages straight in the layout (ls-million's builder)")
    built = _build(ctx, full, n)
    prepare(empty)
    for sp in (full, empty):
        (sp / "dropr.toml").write_text(CONFIG)
    ctx.remove_at_end(f"{n:,}-message quota spool", root)
    rebuilt, total = _rebuild(full)
    _rebuild(empty)
    scan = _scan(full)
    print(f"  built in {built:.1f} s; the total counted whole (the repair) in {rebuilt:.2f} s: {total:,} B")
    print(f"  what each put with a quota paid before (report.spool_bytes): {scan:.2f} s")
    ctx.figure("quota.rebuild", f"usage rebuild (repair) at {n:,} msgs (info)", rebuilt, "s")
    ctx.figure("quota.scan", f"the old per-put scan at {n:,} msgs (info)", scan, "s")
    stdin = ctx.work / "quota-x.txt"
    stdin.write_bytes(b"x\n")
    put = ctx.cmd("dropr-put")
    argvs = [[put, "--spool", str(sp), "--to", url] for sp in (full, empty)]
    print(f"  {calls} x `dropr-put --spool SPOOL --to {url}` into each, interleaved call by call;")
    print(f"  both spools: {CONFIG.strip()!r}")
    env = ctx.env()
    q = statistics.quantiles
    for r in range(ctx.repeat):
        time_calls(argvs, stdin, env, 3)  # warm caches and .pyc files
        full_ms, empty_ms = time_calls(argvs, stdin, env, calls)
        fm, em = statistics.median(full_ms), statistics.median(empty_ms)
        for what, ms in ((f"{n:,} live", full_ms), ("empty", empty_ms)):
            d = q(ms, n=10)
            mid = statistics.median(ms)
            print(f"  run {r + 1}: {what:15} p10/p50/p90 {d[0]:.1f}/{mid:.1f}/{d[-1]:.1f} ms")
        ctx.figure("quota.put.full", f"single put, quota, {n:,} live (info)", fm, "ms")
        ctx.figure("quota.put.empty", "single put, quota, empty spool (info)", em, "ms")
        ctx.figure("quota.ratio", f"put with quota: {n:,} live / empty", fm / em, "x", target=("<=", LIMIT))
    after, opens, closes = _record(full)
    puts = ctx.repeat * (calls + 3)
    grown = puts * stdin.stat().st_size  # each put's payload is stdin's bytes
    if opens != closes or after != total + grown:
        raise RuntimeError(f"the total went {total} -> {after} over {puts} puts (windows {opens}/{closes})")
    print(f"  the total after {puts} puts: {after:,} B (+{grown}), every window closed")
