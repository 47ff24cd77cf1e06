"""Benchmark section for the inbox's checksums (#18): what keeping them costs the store, and
how fast dropr-ls --verify reads a spool.

Registered into the harness by ``run.py`` importing this module.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from harness import Ctx, section, settle

PAYLOAD = b"c" * 1024


class _Store:
    """One spool that stores 1 KiB messages as dropr-serve does: each written as its rcv/
    entry, then Spool.store; with or without its checksum kept (set_sum a no-op)."""

    def __init__(self, root: Path, keep: bool) -> None:
        from dropr import message as m
        from dropr.spool import Spool
        from dropr.spool._fs import FS

        class NoSum(FS):
            def set_sum(self, file: int | str, value: bytes) -> None:
                pass

        self.m = m
        self.sp = Spool(str(root), fs=None if keep else NoSum())
        self.sp.channel_dir("default")
        self.crc = m.crc32(PAYLOAD)
        self.spent = 0.0
        self.n = 0

    def batch(self, size: int) -> None:
        """Receive and store one batch; add the time of the store alone to spent."""
        sp, m = self.sp, self.m
        items = []
        for _ in range(size):
            ident, created = sp.ids.new()
            hdr = m.Header(ident, "default", 5, created, 0, len(PAYLOAD), self.crc)
            path, fd, entry = sp.receive_file("web1", hdr)
            os.write(fd, PAYLOAD)
            if not entry:
                os.close(fd)
                fd = -1
            items.append((path, hdr, fd))
        t0 = time.perf_counter()
        sp.store("web1", items)
        self.spent += time.perf_counter() - t0
        self.n += size
        for _, _, fd in items:
            if fd >= 0:
                os.close(fd)

    def per_message(self) -> float:
        return self.spent / self.n * 1e6


def _paired(ctx: Ctx, n: int, batch: int) -> tuple[float, float]:
    """Store n messages in each of two spools, with and without checksums, batch by batch in
    alternating order (so that the drift of a shared disk falls on both); return µs/msg."""
    kept = _Store(ctx.fresh(f"store-{batch}-kept"), True)
    plain = _Store(ctx.fresh(f"store-{batch}-plain"), False)
    for i in range(max(1, n // batch)):
        for s in (kept, plain) if i % 2 == 0 else (plain, kept):
            s.batch(batch)
    return kept.per_message(), plain.per_message()


def _set_sum_alone(ctx: Ctx, n: int) -> float:
    """Return the µs of the added call alone: setxattr on n fresh 1 KiB files, each by its
    open descriptor, as the store does for a file written as its rcv/ entry."""
    from dropr.spool._fs import FS

    d = ctx.fresh("setxattr")
    fds = []
    for i in range(n):
        fd = os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, PAYLOAD)
        fds.append(fd)
    fs = FS()
    t0 = time.perf_counter()
    for fd in fds:
        fs.set_sum(fd, b"k=0123abcd s=1024")
    el = time.perf_counter() - t0
    for fd in fds:
        os.close(fd)
    return el / n * 1e6


@section("store-sum", "(k) the inbox's checksum: Spool.store with and without user.dropr.sum")
def store_sum(ctx: Ctx) -> None:
    print("  messages of 1 KiB stored as dropr-serve stores them (written as their rcv/ entry,")
    print("  then Spool.store), with the checksum kept (one fsetxattr per message) and")
    print("  without (the same code, set_sum a no-op), in two fresh spools, batch by batch in")
    print("  alternating order. Batches of 100 (one syncfs each) and of 1 (fsync per file and")
    print("  folder). The limit is the store without checksums, measured in the same run; the")
    print("  added call is also timed alone, against the same limit.")
    for batch, n in ((100, ctx.n(5_000)), (1, ctx.n(500))):
        for _ in range(ctx.repeat):
            settle(ctx)
            kept, plain = _paired(ctx, n, batch)
            ctx.figure(f"store.sum.{batch}", f"store, batches of {batch}, checksum kept", kept, "µs/msg")
            ctx.figure(f"store.nosum.{batch}", f"store, batches of {batch}, none kept", plain, "µs/msg")
            ctx.figure(f"store.sum.ratio.{batch}", f"with / without, batches of {batch}", kept / plain,
                       target=("<=", 1.05), percent=True)  # fmt: skip
    for _ in range(ctx.repeat):
        alone = _set_sum_alone(ctx, ctx.n(5_000))
        ctx.figure("store.sum.call", "the setxattr alone", alone, "µs/msg")
        plain = ctx.value("store.nosum.100") or 0.0
        if plain:
            ctx.figure("store.sum.call.ratio", "the setxattr / store without, batches of 100",
                       alone / plain, target=("<=", 0.05), percent=True)  # fmt: skip
    _verify_rate(ctx)


def _verify_rate(ctx: Ctx) -> None:
    """Time dropr-ls --verify over an inbox of 1 KiB messages (info)."""
    n = ctx.n(10_000)
    root = ctx.fresh("verify")
    store = _Store(root, True)
    for _ in range(max(1, n // 500)):
        store.batch(500)
    env = ctx.env()
    for _ in range(ctx.repeat):
        t0 = time.perf_counter()
        p = subprocess.run([ctx.cmd("dropr-ls"), "--spool", str(root), "--verify", "--json"],
                           capture_output=True, env=env, timeout=600)  # fmt: skip
        el = time.perf_counter() - t0
        if p.returncode != 0 or f'"ok": {store.n},' not in p.stdout.decode():
            raise RuntimeError(f"dropr-ls --verify: {p.returncode} {p.stdout!r} {p.stderr!r}")
        label = f"dropr-ls --verify, {store.n:,} inbox msgs of 1 KiB (warm cache)"
        ctx.figure("verify.rate", label, store.n / el, "msgs/s")
