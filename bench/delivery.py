"""Benchmark sections for delivery (#3) and consumption (#4): real dropr-serve and dropr-send.

Registered into the harness by ``run.py`` importing this module; the sections run after
the spool sections so that the transfer rate can be compared with the raw group-commit
rate measured on the same disk in the same run.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import Ctx, proc_status, regular_install, section, stop_proc, sync_fs, wait_url

KIB_LINE = b"z" * 1023 + b"\n"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    """Return pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


class Server:
    """A dropr-serve on 127.0.0.1, port 0, for one spool."""

    def __init__(
        self, ctx: Ctx, spool: Path, node: str = "b", preexec: Callable[[], None] | None = None
    ) -> None:
        self.log = spool.parent / f"{node}-serve.log"
        spool.mkdir(parents=True, exist_ok=True)
        env = dict(ctx.env(), DROPR_NODE=node)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [ctx.cmd("dropr-serve"), "--spool", str(spool), "--listen", "127.0.0.1:0", "-q"],
                stderr=log,
                env=env,
                preexec_fn=preexec,  # relay.py: the node's cgroup
            )
        self.url = wait_url(self.proc, self.log, 30)

    def peak_kib(self) -> int:
        """Return the largest VmHWM of the master and its workers."""
        return max(proc_status(p, "VmHWM:") for p in _tree(self.proc.pid))

    def stop(self) -> None:
        stop_proc(self.proc)


def _env(ctx: Ctx, node: str) -> dict[str, str]:
    return dict(ctx.env(), DROPR_NODE=node)


def _put_lines(ctx: Ctx, spool: Path, url: str, n: int, node: str = "a") -> float:
    """Put n × 1 KiB with one dropr-put --lines; return its CPU seconds (user + system)."""
    data = KIB_LINE * n
    with subprocess.Popen(
        [ctx.cmd("dropr-put"), "--spool", str(spool), "--lines", "--to", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(ctx, node),
    ) as p:
        assert p.stdin is not None and p.stderr is not None
        try:
            p.stdin.write(data)
        finally:
            p.stdin.close()
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"dropr-put failed: {err.decode()}")
    return float(usage.ru_utime + usage.ru_stime)


def _run_sampled(argv: list[str], env: dict[str, str], **kw: object) -> tuple[float, int, int]:
    """Run a command; return (seconds, exit status, peak RSS in KiB): its VmHWM, read every
    5 ms by a thread while it runs (not wait4's ru_maxrss: see harness.proc_status)."""
    done = threading.Event()
    peak = [0]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, **kw)  # type: ignore[call-overload]

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc_status(p.pid, "VmHWM:"))
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status = os.waitpid(p.pid, 0)
    el = time.perf_counter() - t0
    done.set()
    watcher.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return el, p.returncode, peak[0]


@section(
    "transfer",
    "(#3) 10,000 × 1 KiB from spool A to B: dropr-send --once to a running dropr-serve",
    needs=("raw",),
)
def transfer(ctx: Ctx) -> None:
    n = ctx.n(10_000)
    raw = ctx.figures.get("raw.group")
    for r in range(ctx.repeat):
        root = ctx.fresh("transfer")
        srv = Server(ctx, root / "B")
        try:
            _put_lines(ctx, root / "A", srv.url, n)
            sync_fs(root)
            el, rc, rss = _run_sampled(
                [ctx.cmd("dropr-send"), "--spool", str(root / "A"), "--once", "-q"], _env(ctx, "a")
            )
            ready = len(os.listdir(root / "B" / "in" / "default" / "ready"))
            print(f"  run {r + 1}: {n:,} messages in {el:.2f} s, exit {rc}, {ready:,} ready at B")
            if ready != n:
                ctx.errors.append(f"transfer: {ready} of {n} arrived")
            rate = n / el
            ctx.figure(
                "transfer.rate",
                "transfer 1 KiB msgs/s (send --once, durable both sides)",
                rate,
                "msgs/s",
                target=(">=", 8000),
            )
            if raw and raw.value:
                ctx.figure(
                    "transfer.ratio",
                    "transfer / raw group commit",
                    rate / raw.value,
                    percent=True,
                    target=(">=", 0.5),  # #17
                )
        finally:
            srv.stop()
        ctx.remove_at_end(f"transfer-{r}", root)


@section("bigfile", "(#3) one 256 MiB message A to B: MB/s and peak RSS of each side", slow=True)
def bigfile(ctx: Ctx) -> None:
    size = max(1 << 20, int((256 << 20) * ctx.scale))
    for r in range(ctx.repeat):
        root = ctx.fresh("bigfile")
        src = root / "big.bin"
        with open(src, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
        srv = Server(ctx, root / "B")
        try:
            subprocess.run(
                [ctx.cmd("dropr-put"), "--spool", str(root / "A"), "--to", srv.url, "--file", str(src)],
                check=True,
                capture_output=True,
                env=_env(ctx, "a"),
            )
            src.unlink()
            sync_fs(root)
            el, rc, rss = _run_sampled(
                [ctx.cmd("dropr-send"), "--spool", str(root / "A"), "--once", "-q"], _env(ctx, "a")
            )
            srv_kib = srv.peak_kib()
            print(
                f"  run {r + 1}: {size >> 20} MiB in {el:.2f} s, exit {rc}; peak RSS sender "
                f"{rss / 1024:.0f} MiB, server {srv_kib / 1024:.0f} MiB"
            )
            ctx.figure(
                "big.rate",
                "256 MiB message, MB/s (send --once, durable both sides)",
                size / el / 1e6,
                "MB/s",
                target=(">=", 500),
            )
            ctx.figure("big.rss.send", "256 MiB: peak RSS of dropr-send", rss / 1024, "MiB", target=("<", 64))
            ctx.figure(
                "big.rss.serve",
                "256 MiB: peak RSS of a dropr-serve process",
                srv_kib / 1024,
                "MiB",
                target=("<", 64),
            )
        finally:
            srv.stop()
        ctx.remove_at_end(f"bigfile-{r}", root)


@section("latency", "(#3) put to ready at B, daemon idle: p50 and p99 over 100 messages")
def latency(ctx: Ctx) -> None:
    """Put through the library in this process (no interpreter start in the figure), the
    running dropr-send daemon is woken by the put, and the time ends when dropr-serve wakes
    a consumer's socket in B's wake/ folder: the path dropr-recv --wait uses.

    Like every other section, it runs --repeat times (fresh spools and processes each
    time) and reports the median and spread of the runs' p50 and p99: one run of 100
    messages swung by 0.5 ms with the host's disk from one minute to the next."""
    for r in range(ctx.repeat):
        root = ctx.fresh("latency")
        print(f"  run {r + 1}/{ctx.repeat}")
        _latency_run(ctx, root, ctx.n(100))
        ctx.remove_at_end(f"latency-{r}", root)


def _latency_run(ctx: Ctx, root: Path, n: int) -> None:
    from dropr.config import Config, Peer
    from dropr.spool import Spool, wake

    srv = Server(ctx, root / "B")
    a_spool = root / "A"
    a_spool.mkdir()
    (a_spool / "node").write_text("a\n")
    sender = subprocess.Popen([ctx.cmd("dropr-send"), "--spool", str(a_spool), "-q"], env=_env(ctx, "a"))
    try:
        time.sleep(0.5)  # let the daemon reach its idle wait (not part of any figure)
        os.environ.pop("DROPR_NODE", None)
        a = Spool(str(a_spool), Config())
        peer = Peer("b", srv.url)
        b = Spool(str(root / "B"), Config())
        b.channel_dir("default")
        lat: list[float] = []
        puts: list[float] = []
        with b.wakeups.waiter(wake.recv_sock("default", "bench")) as w:
            for _ in range(n):
                w.drain()
                t0 = time.perf_counter()
                batch = a.batch([peer])
                batch.add(b"x" * 100)
                batch.commit()
                puts.append((time.perf_counter() - t0) * 1000)
                if not w.wait(10):
                    ctx.errors.append("latency: a message did not arrive within 10 s")
                    break
                lat.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.02)  # the daemon goes idle again between messages
        lat.sort()
        p50 = statistics.median(lat)
        # nearest rank: the 99th of 100 (this took the 100th, the maximum, before)
        p99 = lat[max(0, math.ceil(len(lat) * 0.99) - 1)]
        print(f"  {len(lat)} messages: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")
        print("  slowest: " + " ".join(f"{x:.1f}" for x in lat[-8:]))
        ctx.figure(
            "lat.put",
            "  of which the put itself (fsync file + dir), p50 (info)",
            statistics.median(puts),
            "ms",
        )
        ctx.figure("lat.p50", "put to ready at B, p50", p50, "ms", target=("<=", 3))
        ctx.figure("lat.p99", "put to ready at B, p99", p99, "ms", target=("<=", 10))
    finally:
        sender.send_signal(signal.SIGTERM)
        sender.wait(30)
        srv.stop()


def _fill_inbox(ctx: Ctx, root: Path, n: int) -> Path:
    """Deliver n × 1 KiB to B (real put, send and serve); return B's spool."""
    srv = Server(ctx, root / "B")
    try:
        _put_lines(ctx, root / "A", srv.url, n)
        subprocess.run(
            [ctx.cmd("dropr-send"), "--spool", str(root / "A"), "--once", "-q"],
            check=True,
            env=_env(ctx, "a"),
        )
    finally:
        srv.stop()
    sync_fs(root)
    return root / "B"


@section("consume-pipe", "(#4 a) dropr-recv -n 500 --format path | dropr-ack -, 10,000 ready messages")
def consume_pipe(ctx: Ctx) -> None:
    n = ctx.n(10_000)
    for r in range(ctx.repeat):
        root = ctx.fresh("consume-pipe")
        b = _fill_inbox(ctx, root, n)
        env = _env(ctx, "b")
        reg = regular_install(ctx)  # what users run: no editable-install hook at start-up
        loop = (
            f"while {reg / 'dropr-recv'} --spool {b} -n 500 --format path "
            f"| {reg / 'dropr-ack'} --spool {b} -; do :; done"
        )
        t0 = time.perf_counter()
        subprocess.run(["bash", "-o", "pipefail", "-c", loop], env=env, check=False)
        el = time.perf_counter() - t0
        done = len(os.listdir(b / "in" / "default" / "done"))
        print(f"  run {r + 1}: {done:,} of {n:,} acked in {el:.2f} s")
        if done != n:
            ctx.errors.append(f"consume-pipe: {done} of {n} acked")
        ctx.figure("consume.pipe", "recv -n 500 | ack -, msgs/s", n / el, "msgs/s", target=(">=", 8000))
        ctx.remove_at_end(f"consume-pipe-{r}", root)


@section("consume-exec", "(#4 b) dropr-recv --exec true --jobs 2 vs sh -c true × 10,000")
def consume_exec(ctx: Ctx) -> None:
    n = ctx.n(10_000)
    for r in range(ctx.repeat):
        root = ctx.fresh("consume-exec")
        b = _fill_inbox(ctx, root, n)
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(["sh", "-c", "true"], check=False)
        spawn = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            [ctx.cmd("dropr-recv"), "--spool", str(b), "--exec", "true", "--jobs", "2", "--once", "-q"],
            env=_env(ctx, "b"),
            check=False,
        )
        el = time.perf_counter() - t0
        done = len(os.listdir(b / "in" / "default" / "done"))
        print(f"  run {r + 1}: {done:,} handled in {el:.2f} s; {n:,} × sh -c true took {spawn:.2f} s")
        if done != n:
            ctx.errors.append(f"consume-exec: {done} of {n} done")
        ctx.figure("consume.exec", "recv --exec true --jobs 2, msgs/s", n / el, "msgs/s")
        ctx.figure(
            "consume.exec.ratio", "--exec time / sh -c true spawn time", el / spawn, "×", target=("<=", 1.5)
        )
        ctx.remove_at_end(f"consume-exec-{r}", root)


@section(
    "pipeline",
    "(#4, #17) end to end: 10,000 × 1 KiB put at A, sent, consumed and acked at B, receipts at A",
    needs=("raw",),
)
def pipeline(ctx: Ctx) -> None:
    """The consumer at B is one long-running `dropr-recv --follow | dropr-ack -` (the figures
    with a target), and, for comparison, a shell loop of `dropr-recv -n 500 --wait | dropr-ack -`
    that starts two processes per 500 messages (info).

    Two clocks stop: consumed and acked at B (what a broker's end-to-end figure counts), read
    as the mtime of B's done/ folder once every receipt is in (the last ack's rename set it,
    and nothing else writes there: no polling of B at all), and every receipt back at A.
    Each is also a share of the raw group-commit rate of the same run (section raw). The
    CPU each process spent from the first put to the last receipt (/proc/PID/stat; the put's
    from wait4) is printed per message: the per-step cost table."""
    reg = regular_install(ctx)
    recv, ack = reg / "dropr-recv", reg / "dropr-ack"
    kinds = [
        ("follow", "recv --follow | ack -",
         "{recv} --spool {b} --follow -n 500 | {ack} --spool {b} -", True),
        ("loop", "loop of recv -n 500 | ack - (info)",
         "while :; do {recv} --spool {b} -n 500 --wait --timeout 1s | {ack} --spool {b} -; done", False),
    ]  # fmt: skip
    for r in range(ctx.repeat):
        for key, label, shell, targets in kinds:
            _pipeline_run(ctx, r, key, label, shell.format(recv=recv, ack=ack, b="{b}"), targets)


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """Return a process's user + system CPU seconds so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _pipeline_procs(srv: Server, send: int, shell: int) -> dict[str, list[int]]:
    """Name the processes of a pipeline run: the server's workers, the sender, and what
    the consumer's shell runs (dropr-recv, dropr-ack; a loop's come and go, so only the
    shell's own for it)."""
    procs: dict[str, list[int]] = {"serve": _children(srv.proc.pid), "send": [send]}
    for pid in _children(shell):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for word in ("recv", "ack"):
            if any(a.endswith(f"dropr-{word}".encode()) for a in argv[:2]):
                procs.setdefault(word, []).append(pid)
    return procs


def _pipeline_run(ctx: Ctx, r: int, key: str, label: str, shell: str, targets: bool) -> None:
    n = ctx.n(10_000)
    root = ctx.fresh(f"pipeline-{key}")
    srv = Server(ctx, root / "B")
    a, b = root / "A", root / "B"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([ctx.cmd("dropr-send"), "--spool", str(a), "-q"], env=_env(ctx, "a")))
        consumer = shell.format(b=b)
        procs.append(subprocess.Popen(["bash", "-c", consumer], env=_env(ctx, "b"), start_new_session=True))
        # The clock starts when both daemons wait for work (their wake-up sockets are
        # bound), as services that already run: the figure is the flow, not start-up.
        from dropr.spool import wake

        deadline = time.monotonic() + 30
        while not (
            (a / "wake" / wake.SEND_SOCK).exists()
            and any(x.startswith(wake.recv_prefix("default")) for x in os.listdir(b / "wake"))
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the sender or the consumer did not start")
            time.sleep(0.01)
        # Counting 10,000 names every 50 ms took ~4% of this 2-core machine from the
        # processes measured: count when the sender says receipts came in (the wake-up
        # dropr-put --wait sleeps on), and at least every 0.5 s.
        from dropr.spool import Waiter, wake

        who = _pipeline_procs(srv, procs[0].pid, procs[1].pid)
        cpu0 = {k: sum(_cpu_s(p) for p in pids) for k, pids in who.items()}
        receipts = Waiter(str(a / "wake" / wake.put_sock("bench")))
        wall0 = time.time()
        t0 = time.perf_counter()
        put_cpu = _put_lines(ctx, a, srv.url, n)
        out = root / "A" / "out"

        deadline = time.monotonic() + 300
        got = 0
        try:
            while got < n and time.monotonic() < deadline:
                receipts.wait(0.5)
                got = sum(len(os.listdir(out / p / "processed")) for p in os.listdir(out))
        finally:
            receipts.close()
        el = time.perf_counter() - t0
        cpu = {k: sum(_cpu_s(p) for p in pids) - cpu0[k] for k, pids in who.items()}
        done = b / "in" / "default" / "done"
        acked = len(os.listdir(done))
        at_b = os.stat(done).st_mtime - wall0  # the last ack's rename
        print(
            f"  run {r + 1}, {key}: {acked:,} of {n:,} acked at B in {at_b:.2f} s, "
            f"{got:,} processed receipts at A in {el:.2f} s"
        )
        if got != n or acked != n:
            ctx.errors.append(f"pipeline {key}: {acked} of {n} acked, {got} processed")
        _pipeline_figures(ctx, key, label, n / at_b, n / el, targets)
        if key == "follow":
            _cpu_table(ctx, dict(put=put_cpu, **cpu), n)
    finally:
        for p in procs:
            try:
                in_shell = isinstance(p.args, list) and p.args[0] == "bash"
                os.killpg(p.pid, signal.SIGTERM) if in_shell else p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait(30)
        srv.stop()
    ctx.remove_at_end(f"pipeline-{key}-{r}", root)


def _pipeline_figures(ctx: Ctx, key: str, label: str, at_b: float, at_a: float, targets: bool) -> None:
    """The figures of one pipeline run: consumed at B, receipts at A, and their ratios."""
    raw = ctx.value("raw.group")
    ctx.figure(f"pipeline.{key}.acked", f"consumed and acked at B, {label}, msgs/s", at_b, "msgs/s",
               target=(">=", 9500) if targets else None)  # fmt: skip
    ctx.figure(f"pipeline.{key}", f"end to end with receipts at A, {label}, msgs/s", at_a, "msgs/s",
               target=(">=", 5000) if targets else None)  # fmt: skip
    if not targets:
        return
    if raw:
        ctx.figure(f"pipeline.{key}.acked.raw", "  consumed and acked at B / raw group commit", at_b / raw,
                   percent=True, target=(">=", 0.5))  # fmt: skip
    ctx.figure(f"pipeline.{key}.receipts.acked", "  receipts at A / consumed and acked at B", at_a / at_b,
               percent=True, target=(">=", 0.8))  # fmt: skip


def _cpu_table(ctx: Ctx, cpu: dict[str, float], n: int) -> None:
    """Print the CPU each step spent per message (µs), from the first put to the last receipt."""
    total = sum(cpu.values())
    cells = "  ".join(f"{k} {v / n * 1e6:.0f}" for k, v in cpu.items())
    print(f"    CPU µs per message: {cells}  (total {total / n * 1e6:.0f}; {total:.2f} CPU-s)")
    for k, v in cpu.items():
        ctx.figure(f"pipeline.cpu.{k}", f"  CPU per message, {k} (info)", v / n * 1e6, "µs")
    ctx.figure("pipeline.cpu", "  CPU per message, all processes (info)", total / n * 1e6, "µs")
