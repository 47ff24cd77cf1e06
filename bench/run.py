#!/usr/bin/env python3
"""dropr benchmarks (not tests): ``make bench`` or ``bench/run.py [SECTION...]``.

Every section runs in one scratch directory on one real disk, so figures that are
compared (bulk put against the raw limit) are measured on the same disk in the
same run.  ``bench/run.py --list`` names the sections; see bench/README.md for
what each measures and how to add one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    SECTIONS,
    Ctx,
    build_queued,
    drop_caches,
    fsync_dir,
    header,
    make_work,
    regular_install,
    rm_rf,
    run_sections,
    section,
    settle,
    summary,
    sync_fs,
    work_parent,
)

URL = "http://127.0.0.1:9/"  # the discard port: nothing is ever delivered
KIB = b"x" * 1024


def _names(n: int, tag: str = "") -> list[str]:
    """Return n distinct names as long as outbox names (39 characters)."""
    base = time.time_ns() // 1000
    return [f"5{base + i:013x},{base + i:013x}{i:011x}{tag}" for i in range(n)]


def _prepare_spool(root: Path) -> Path:
    """Create a spool with the outbox folder of URL; return the queued folder."""
    from dropr.config import Peer, url_peer_name
    from dropr.spool import Spool

    sp = Spool(str(root))
    return Path(sp.peer_dir(Peer(url_peer_name(URL), URL))) / "queued"


# -- (a) the raw limit ----------------------------------------------------------

RAW_LABELS = {
    "group": "raw, one sync at the end (group commit)",
    "twophase": "raw, sync after writes + after renames (info)",
    "fsync": "raw, fsync per file + dir fsync",
}


def raw_run(ctx: Ctx, mode: str, n: int) -> float:
    """Create + write 1 KiB + rename n files in a fresh directory; return files/s.

    Nothing is deleted afterwards (see harness.fs_notes): the trees go at the end.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    d = ctx.fresh(f"raw-{mode}")
    tmp, dst = d / "tmp", d / "dst"
    tmp.mkdir()
    dst.mkdir()
    names = _names(n)
    sync_fs(d)
    t0 = time.perf_counter()
    if mode == "fsync":
        for name in names:
            t = f"{tmp}/{name}"
            fd = os.open(t, flags, 0o644)
            os.write(fd, KIB)
            os.fsync(fd)
            os.close(fd)
            os.rename(t, f"{dst}/{name}")
        fsync_dir(dst)
        fsync_dir(tmp)
    elif mode == "twophase":
        for name in names:
            fd = os.open(f"{tmp}/{name}", flags, 0o644)
            os.write(fd, KIB)
            os.close(fd)
        sync_fs(d)
        for name in names:
            os.rename(f"{tmp}/{name}", f"{dst}/{name}")
        sync_fs(d)
    else:
        for name in names:
            t = f"{tmp}/{name}"
            fd = os.open(t, flags, 0o644)
            os.write(fd, KIB)
            os.close(fd)
            os.rename(t, f"{dst}/{name}")
        sync_fs(d)
    el = time.perf_counter() - t0
    got = len(os.listdir(dst))
    if got != n:
        raise RuntimeError(f"raw {mode}: {got} files, wanted {n}")
    return n / el


@section("raw", "(a) raw limit: create + write 1 KiB + rename, tight Python loop")
def raw(ctx: Ctx) -> None:
    n = ctx.n(20_000)
    print(f"  {n:,} files of 1 KiB: open(O_CREAT|O_EXCL) in tmp/, write, close, rename into dst/")
    print("  group: one syncfs at the end | two-phase: syncfs after the writes and after the")
    print("  renames (the put protocol: data before names) | fsync: fsync per file, then both dirs")
    print("  each run starts with a probe of the cost of creating a file, and waits while it is high")
    for r in range(ctx.repeat):
        print(f"  run {r + 1}/{ctx.repeat}")
        settle(ctx)
        for mode in ("group", "twophase", "fsync"):
            ctx.figure(f"raw.{mode}", RAW_LABELS[mode], raw_run(ctx, mode, n), "files/s")


# -- (b) bulk put -------------------------------------------------------------------


@section("put-bulk", "(b) dropr-put --lines: 20,000 messages of 1 KiB from a file", needs=("raw",))
def put_bulk(ctx: Ctx) -> None:
    n = ctx.n(20_000)
    put = ctx.cmd("dropr-put")
    src = ctx.work / "lines.txt"
    with open(src, "wb") as f:
        for i in range(n):
            f.write(f"{i:08d}".encode() + b"y" * 1015 + b"\n")  # 1023 chars + newline
    sync_fs(ctx.work)
    cmd = [put, "--spool", "SPOOL", "--lines", "--to", URL]
    print(f"  {' '.join(cmd)} < lines.txt ({n:,} lines of 1023 chars + newline)")
    print("  into an existing spool (folders made beforehand); wall time of the whole command.")
    print("  Ratio: to the median of section raw, and to a raw group-commit run of the same")
    print("  size made right before or after it (order alternates), which cancels the drift")
    print("  of this disk and is the one to trust when the two disagree")
    for r in range(ctx.repeat):
        print(f"  run {r + 1}/{ctx.repeat}")
        settle(ctx)
        root = ctx.fresh("put-bulk")
        queued = _prepare_spool(root / "spool")
        cmd[2] = str(root / "spool")
        ref = raw_run(ctx, "group", n) if r % 2 == 0 else 0.0
        sync_fs(root)
        with open(src, "rb") as stdin:
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdin=stdin, capture_output=True, env=ctx.env(), timeout=900)
            el = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"dropr-put exited {p.returncode}: {p.stderr.decode()[-500:]}")
        ids = p.stdout.split()
        files = len(os.listdir(queued))
        if len(ids) != n or files != n:
            raise RuntimeError(f"dropr-put printed {len(ids)} ids, {files} queued; wanted {n}")
        if not ref:
            ref = raw_run(ctx, "group", n)
        rate = n / el
        print(f"    ({el:.2f} s; paired raw group commit {ref:,.0f} files/s)")
        ctx.figure("put.bulk", "dropr-put --lines", rate, "msgs/s")
        group = ctx.value("raw.group")  # the median of section raw, run before this one
        if group:
            ctx.figure(
                "put.bulk.ratio",
                "bulk put / raw group commit (section raw)",
                rate / group,
                target=(">=", 0.60),
                percent=True,
            )
        ctx.figure("put.bulk.paired", "bulk put / paired raw run", rate / ref,
                   target=(">=", 0.60), percent=True)  # fmt: skip
    if shutil.which("strace"):
        _strace_counts(ctx, cmd, src, n)


def _strace_counts(ctx: Ctx, cmd: list[str], src: Path, n: int) -> None:
    """Count the put's sync calls in one extra, untimed run: how many commits it made.

    ``--seccomp-bpf`` stops the put only at the traced calls, so its pace (and so the
    number of messages per 50 ms commit window) stays close to an untraced run.
    """
    root = ctx.fresh("put-bulk-strace")
    _prepare_spool(root / "spool")
    out = root / "strace.txt"
    argv = ["strace", "-f", "--seccomp-bpf", "-c", "-o", str(out), "-e",
            "trace=syncfs,sync,fsync,fdatasync"]  # fmt: skip
    with open(src, "rb") as stdin:
        t0 = time.perf_counter()
        p = subprocess.run([*argv, *cmd[:2], str(root / "spool"), *cmd[3:]], stdin=stdin,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ctx.env())  # fmt: skip
        el = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        print(f"  (strace run failed: {p.stderr.decode()[-200:].strip()})")
        return
    calls = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1].isidentifier() and f[-1] != "total" and f[3].isdigit():
            calls[f[-1]] = (int(f[3]), float(f[1]))
    shown = ", ".join(f"{k} {c:,} calls, {t:.2f} s" for k, (c, t) in sorted(calls.items()))
    print(f"  one more put under strace -c --seccomp-bpf ({el:.2f} s): {shown or 'no sync calls'}")
    syncs = calls.get("syncfs", (0, 0.0))[0]
    if syncs:
        print(f"  -> about {syncs // 2} commits of ~{n / max(1, syncs // 2):,.0f} messages, two "
              "syncfs each (data, then names); raw group commit makes one")  # fmt: skip


# -- (c) one put per process -----------------------------------------------------------


def _time_calls(
    argvs: list[list[str]], stdin: Path, env: dict[str, str], calls: int, cpu: list[list[float]] | None = None
) -> list[list[float]]:
    """Time calls of each argv, interleaved; return per-argv lists of milliseconds (and
    append each call's CPU milliseconds, user + system from wait4, to cpu's lists)."""
    out: list[list[float]] = [[] for _ in argvs]
    for _ in range(calls):
        for k, argv in enumerate(argvs):
            with open(stdin, "rb") as f:
                t0 = time.perf_counter()
                p = subprocess.Popen(argv, stdin=f, stdout=subprocess.DEVNULL, env=env)
                _, status, usage = os.wait4(p.pid, 0)
                el = time.perf_counter() - t0
            rc = os.waitstatus_to_exitcode(status)
            if rc != 0:
                raise RuntimeError(f"{' '.join(argv)} exited {rc}")
            out[k].append(el * 1000)
            if cpu is not None:
                cpu[k].append((usage.ru_utime + usage.ru_stime) * 1000)
    return out


def _importtime(argv: list[str], stdin: Path, env: dict[str, str]) -> list[tuple[int, int, str]]:
    """Run argv with -X importtime; return (self µs, cumulative µs, module) per import."""
    with open(stdin, "rb") as f:
        p = subprocess.run(
            argv,
            stdin=f,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            check=True,
        )
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (.*)$", line)
        if m:
            rows.append((int(m[1]), int(m[2]), m[3]))
    return rows


def _regular_install(ctx: Ctx, py: str, put: str) -> tuple[str, str]:
    """Return (python, dropr-put) of a regular install (see harness.regular_install)."""
    bindir = regular_install(ctx)
    return str(bindir / "python"), str(bindir / "dropr-put")


def _importtime_report(
    ctx: Ctx, py: str, put: str, spool: Path, stdin: Path, tag: str, to: str = URL
) -> None:
    """Print where the put's start-up goes, from -X importtime of the real put path."""
    env = ctx.env()
    argv = [py, "-X", "importtime", put, "--spool", str(spool), "--to", to]
    put_rows = _importtime(argv, stdin, env)
    bare_rows = _importtime([py, "-X", "importtime", "-c", "pass"], stdin, env)
    bare = {name.strip() for _, _, name in bare_rows}
    top_put = sum(c for _, c, name in put_rows if not name.startswith(" "))
    top_bare = sum(c for _, c, name in bare_rows if not name.startswith(" "))
    extra = [(s, c, name) for s, c, name in put_rows if name.strip() not in bare]
    editable = sum(c for _, c, name in bare_rows if "__editable__" in name)
    print(f"  -X importtime, {tag}: all imports of dropr-put {top_put / 1000:.1f} ms, of bare "
          f"python {top_bare / 1000:.1f} ms (of which the editable-install hook "
          f"{editable / 1000:.1f} ms); {len(extra)} modules beyond bare python's, "
          f"{sum(s for s, _, _ in extra) / 1000:.1f} ms self time")  # fmt: skip
    print("  top 10 cumulative importers on the put path (µs self | cumulative | module):")
    for s, c, name in sorted(put_rows, key=lambda r: -r[1])[:10]:
        mark = "" if name.strip() in bare else "   (not in bare python)"
        print(f"    {s:>7} | {c:>7} | {name}{mark}")
    print("  imported beyond bare python: " + ", ".join(sorted(name.strip() for _, _, name in extra)))
    ctx.figure(
        f"put.imports.{tag}",
        f"put's imports beyond bare python, self time, {tag} (info)",
        sum(s for s, _, _ in extra) / 1000,
        "ms",
    )


REAL_CONFIG = """\
[peers.db1]
url = "http://127.0.0.1:9/"
token = "s3cr3t-db1-0123456789abcdef"
[peers.db2]
url = "http://127.0.0.1:9/db2/"
token = "s3cr3t-db2-0123456789abcdef"
[peers.mail]
url = "http://127.0.0.1:9/mail/"
token = "s3cr3t-mail-0123456789abcdef"
[serve]
listen = ["127.0.0.1:8443"]
[serve.tokens]
"tok-web2-0123456789abcdef" = "web2"
[limits]
max_message_size = "64MiB"
retention = "3d"
max_attempts = 10
"""  # a deployment's dropr.toml: three peers with tokens, [serve], [limits] (#17)


@section("put-single", "(c) one dropr-put per process against bare interpreter start-up")
def put_single(ctx: Ctx) -> None:
    calls = ctx.n(200)
    put = ctx.cmd("dropr-put")
    py = ctx.interpreter(put)
    env = ctx.env()
    stdin = ctx.work / "x.txt"
    stdin.write_bytes(b"x\n")
    reg_py, reg_put = _regular_install(ctx, py, put)
    print(f"  {calls} x `{put} --spool SPOOL --to {URL}` (stdin: a file holding 'x\\n')")
    print(f"  {calls} x `{py} -c pass` (the interpreter of dropr-put's #! line)")
    print("  timing: perf_counter around each subprocess.run (fork+exec+wait), stdout to")
    print("  /dev/null, the two kinds interleaved call by call so drift hits both alike.")
    print(f"  Also (same method): a regular install in {Path(reg_py).parent.parent}")
    print("  with its own bare interpreter, and the put into a spool on tmpfs (no disk wait)")
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    q = statistics.quantiles
    for r in range(ctx.repeat):
        print(f"  run {r + 1}/{ctx.repeat}")
        spool = ctx.fresh("put-single") / "spool"
        _prepare_spool(spool)
        reg_spool = ctx.fresh("put-single-regular") / "spool"
        _prepare_spool(reg_spool)
        argv_put = [put, "--spool", str(spool), "--to", URL]
        argv_py = [py, "-c", "pass"]
        argv_rput = [reg_put, "--spool", str(reg_spool), "--to", URL]
        argv_rpy = [reg_py, "-c", "pass"]
        mem = shm / f"dropr-bench-{os.getpid()}"  # a spool in memory: no fsync wait
        _prepare_spool(mem)
        argv_mem = [put, "--spool", str(mem), "--to", URL]
        cfg_spool = ctx.fresh("put-single-config") / "spool"  # what a deployment pays (#17)
        _prepare_spool(cfg_spool)
        (cfg_spool / "dropr.toml").write_text(REAL_CONFIG)
        argv_cfg = [reg_put, "--spool", str(cfg_spool), "--to", "db1"]
        cfg_mem = shm / f"dropr-bench-config-{os.getpid()}"  # the same in memory: start-up alone
        _prepare_spool(cfg_mem)
        (cfg_mem / "dropr.toml").write_text(REAL_CONFIG)
        argv_cfg_mem = [reg_put, "--spool", str(cfg_mem), "--to", "db1"]
        everything = [argv_put, argv_py, argv_rput, argv_rpy, argv_mem, argv_cfg, argv_cfg_mem]
        cpu: list[list[float]] = [[] for _ in everything]
        try:
            _time_calls(everything, stdin, env, 3)  # warm caches and .pyc files
            timed = _time_calls(everything, stdin, env, calls, cpu)
            put_ms, py_ms, rput_ms, rpy_ms, mem_ms, cfg_ms, cfg_mem_ms = timed
        finally:
            rm_rf(mem)
            rm_rf(cfg_mem)
        for sp in (spool, reg_spool, cfg_spool):
            out = sp / "out" / "db1" if sp is cfg_spool else next((sp / "out").iterdir())
            queued = len(os.listdir(out / "queued"))
            if queued != calls + 3:
                raise RuntimeError(f"{queued} messages queued in {sp}, wanted {calls + 3}")
        for what, ms in (("put", put_ms), ("bare", py_ms), ("regular put", rput_ms),
                         ("regular bare", rpy_ms), ("put on tmpfs", mem_ms),
                         ("config put", cfg_ms), ("config, tmpfs", cfg_mem_ms)):  # fmt: skip
            d = q(ms, n=10)
            print(f"    {what:13} p10/p50/p90 {d[0]:.1f}/{statistics.median(ms):.1f}/{d[-1]:.1f} ms")
        pm, bm = statistics.median(put_ms), statistics.median(py_ms)
        rpm, rbm = statistics.median(rput_ms), statistics.median(rpy_ms)
        ctx.figure("put.single", "single dropr-put, median", pm, "ms")
        ctx.figure("py.bare", "bare python -c pass, median", bm, "ms")
        ctx.figure("put.single.ratio", "single put / bare interpreter", pm / bm, "x",
                   target=("<=", 2.0))  # fmt: skip
        ctx.figure("put.single.regular", "single put, regular install (info)", rpm, "ms")
        ctx.figure("py.bare.regular", "bare python, regular-install venv (info)", rbm, "ms")
        ctx.figure("put.single.regular.ratio", "single put / bare, regular install", rpm / rbm,
                   "x", target=("<=", 2.0))  # fmt: skip
        ctx.figure("put.single.tmpfs", "single put, spool on tmpfs (info)",
                   statistics.median(mem_ms), "ms")  # fmt: skip
        cm = statistics.median(cfg_ms)
        ctx.figure("put.single.config", "single put --to NAME, real config, regular install", cm, "ms")
        ctx.figure("put.single.config.ratio", "put --to NAME with a real config / bare, regular",
                   cm / rbm, "x", target=("<=", 1.5))  # fmt: skip
        ctx.figure("put.single.config.tmpfs.ratio", "the same, spool on tmpfs (no fsync wait) / bare",
                   statistics.median(cfg_mem_ms) / rbm, "x")  # fmt: skip
        ctx.figure("put.single.config.cpu.ratio", "the same, CPU time (user+sys) / bare's (info)",
                   statistics.median(cpu[5]) / statistics.median(cpu[3]), "x")  # fmt: skip
    # where start-up time goes: the real put path, with -X importtime
    spool = ctx.fresh("importtime") / "spool"
    _prepare_spool(spool)
    _importtime_report(ctx, py, put, spool, stdin, "project venv")
    _importtime_report(ctx, reg_py, reg_put, spool, stdin, "regular install")
    _importtime_report(ctx, reg_py, reg_put, cfg_spool, stdin, "regular install, real config", to="db1")


# -- (d) dropr-ls on a million messages ------------------------------------------------------


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    el = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return el, p.stdout


@section("ls-million", "(d) dropr-ls on a spool of 1,000,000 queued messages", slow=True)
def ls_million(ctx: Ctx) -> None:
    n = ctx.n(1_000_000)
    ls = ctx.cmd("dropr-ls")
    env = ctx.env()
    st = os.statvfs(ctx.work)
    need = n * 4096 + (1 << 30)
    if st.f_bavail * st.f_frsize < need or st.f_favail < n + 10_000:
        raise RuntimeError(f"not enough room for {n:,} files: need ~{need / 2**30:.1f} GiB and {n:,} inodes")
    root = ctx.fresh("ls-million")
    spool = root / "spool"
    queued = _prepare_spool(spool)
    workers = max(1, min(4, os.cpu_count() or 1))
    print(
        f"  building {n:,} messages (256-byte header + 16-byte payload) straight into "
        f"out/<peer>/queued/ with {workers} processes"
    )
    base = time.time_ns() // 1000 - n - 10_000_000
    t0 = time.perf_counter()
    made = build_queued(queued, n, b"0123456789abcdef", base)
    el = time.perf_counter() - t0
    t1 = time.perf_counter()
    sync_fs(spool)
    fl = time.perf_counter() - t1
    print(f"  built {made:,} files in {el:.1f} s ({made / el:,.0f} files/s), then syncfs {fl:.1f} s")
    ctx.figure("ls.build", f"build {n:,}-message spool (info)", el + fl, "s")
    ctx.remove_at_end(f"{n:,}-message spool", root)
    for r in range(ctx.repeat):
        el, out = _timed([ls, "--spool", str(spool)], env)
        m = re.search(r"^out\s+\S+\s+queued\s+(\d+)", out, re.M)
        if not m or int(m[1]) != n:
            raise RuntimeError(f"dropr-ls summary does not show {n} queued:\n{out}")
        print(f"  run {r + 1}/{ctx.repeat}: summary {el:.2f} s")
        ctx.figure(
            "ls.summary",
            f"dropr-ls summary, {n:,} msgs (warm cache)",
            el,
            "s",
            target=("<", 5.0),
        )
    print("  " + out.replace("\n", "\n  ").rstrip())
    mid_i = n // 2
    mid = f"{base + mid_i:013x}{mid_i:011x}"
    for _ in range(ctx.repeat):
        el, out = _timed([ls, "--spool", str(spool), mid], env)
        if mid not in out:
            raise RuntimeError(f"dropr-ls {mid} did not show it:\n{out}")
        ctx.figure("ls.one", "dropr-ls ID (info)", el * 1000, "ms")
    for _ in range(ctx.repeat):
        pipe = f"'{ls}' --spool '{spool}' -l | tail -1"
        el, out = _timed(["bash", "-o", "pipefail", "-c", pipe], env)
        if not out.strip():
            raise RuntimeError("dropr-ls -l printed nothing")
        ctx.figure("ls.list", "dropr-ls -l | tail -1 (info)", el, "s")
    print(f"  last line of -l: {out.strip()}")
    if ctx.drop_caches:
        for r in range(ctx.repeat):
            if not drop_caches(spool):
                print("  cannot drop caches (not root?): no cold-cache figure")
                break
            el, _ = _timed([ls, "--spool", str(spool)], env)
            print(f"  run {r + 1}/{ctx.repeat}: summary after dropping caches {el:.2f} s")
            ctx.figure("ls.summary.cold", "dropr-ls summary, cold cache (info)", el, "s")
    print("  (the spool is removed, timed, after all sections: see cleanup)")


# -- later issues' sections: they register on import and run after the ones above ------------

import checksums  # noqa: E402, F401  (#18: the inbox's checksums, dropr-ls --verify)
import delivery  # noqa: E402, F401  (#3, #4: transfer, big file, latency, consume, pipeline)
import failover  # noqa: E402, F401  (#15: a peer group's failover)
import fetching  # noqa: E402, F401  (#15: fetch against push)
import quota  # noqa: E402, F401  (#17: a put with a quota into a million live messages)
import relay  # noqa: E402, F401  (#15: a->b->c against a->b)
import scale  # noqa: E402, F401  (#17: backlog, many peers, fan-in, TLS)
import serve_metrics  # noqa: E402, F401  (#18: what counting for /metrics costs a request)

# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections (all by default) and print the summary."""
    ap = argparse.ArgumentParser(
        prog="bench/run.py",
        description="dropr benchmarks; figures are medians of --repeat runs.",
        epilog="sections, in run order: " + ", ".join(s.name for s in SECTIONS),
    )
    ap.add_argument("sections", nargs="*", metavar="SECTION", help="run only these (default: all)")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--repeat", type=int, default=3, help="runs per section (default 3)")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply message counts (e.g. 0.1 for a quick smoke run)",
    )
    ap.add_argument(
        "--dir",
        help="parent of the scratch directory (default: /var/tmp if it is "
        "on the repo's filesystem, else <repo>/.bench-tmp)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="also time dropr-ls with cold caches (root; drops the whole page cache)",
    )
    a = ap.parse_args(argv)
    if a.list:
        for s in SECTIONS:
            print(f"{s.name:12} {s.title}" + (" [slow]" if s.slow else ""))
        return 0
    known = {s.name for s in SECTIONS}
    unknown = [s for s in a.sections if s not in known]
    if unknown:
        ap.error(f"unknown section {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chosen = set(a.sections or known)
    for s in SECTIONS:  # a comparison needs its reference measured in the same run
        if s.name in chosen:
            chosen.update(s.needs)
    parent = work_parent(a.dir)
    work = make_work(parent)
    ctx = Ctx(work, max(1, a.repeat), a.scale, a.drop_caches)
    ctx.keep = a.keep
    t0 = time.perf_counter()
    try:
        header(ctx, parent)
        run_sections(ctx, [s.name for s in SECTIONS if s.name in chosen])
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        if a.keep:
            print(f"scratch kept: {work}")
        else:
            print(f"removed the scratch directory in {rm_rf(work):.1f} s")
    summary(ctx)
    print(f"  total {time.perf_counter() - t0:.0f} s")
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
