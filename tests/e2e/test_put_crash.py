"""kill -9 of dropr-put --lines at random moments: every id it printed is on disk, intact.

Each round starts a putter fed by a generator of unique lines, waits until it has
printed a random number of ids (zero included: a kill during start-up), and
SIGKILLs it. The n-th id printed belongs to the n-th line written, so each printed
id must be in the outbox with exactly that line as payload. Messages committed but
not yet printed when the kill came may exist too, but never twice and never
damaged, and crash leftovers in tmp/ are never counted as queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr.spool import OUT_STATES, Spool
from helpers import NOWHERE

pytestmark = pytest.mark.slow

ROUNDS = 10


class Putter:
    """One dropr-put --lines process, its generator of lines and a reader of its ids."""

    def __init__(self, cmd: Any, spool: Path, tag: str, rng: random.Random) -> None:
        self.proc = subprocess.Popen(
            [cmd.path("dropr-put"), "--lines", "--to", NOWHERE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=cmd.env(spool),
        )
        self.tag = tag
        self.rng = rng
        self.lines: list[bytes] = []
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self) -> None:
        assert self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        i = 0
        try:
            while not self._stop.is_set():
                burst = []
                for _ in range(self.rng.randint(1, 40)):
                    line = f"{self.tag}-{i}-{os.urandom(self.rng.randint(0, 60)).hex()}".encode()
                    burst.append(line)
                    i += 1
                with self._lock:
                    self.lines.extend(burst)  # recorded before the bytes can reach the putter
                os.write(fd, b"".join(x + b"\n" for x in burst))
                if self.rng.random() < 0.3:
                    self._stop.wait(self.rng.uniform(0, 0.08))  # let some group commits run dry
        except (BrokenPipeError, OSError):
            pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.ids.append(raw.decode().strip())

    def kill_after(self, printed: int, jitter: float, deadline: float) -> None:
        """SIGKILL `jitter` seconds after at least `printed` ids are out (or at the deadline).

        The jitter spreads kills over the whole group-commit cycle (read, write tmp,
        sync, rename, sync, print) instead of right after a print.
        """
        while len(self.ids) < printed and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.001)
        time.sleep(jitter)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._stop.set()
        self.reader.join(timeout=30)  # everything printed before the kill is still in the pipe
        self.writer.join(timeout=30)
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


def read_payload(sp: Spool, peer: str, state: str, name: str) -> bytes:
    hdr = sp.read_header(peer, state, name)  # ValueError if truncated or damaged
    with open(sp.path("out", peer, state, name), "rb") as f:
        f.seek(m.HEADER_SIZE)
        data = f.read()
    assert m.crc32(data) == hdr.crc, f"{name}: checksum mismatch"
    return data


def test_kill_9_put_lines_loses_nothing_printed(cmd: Any, spool_dir: Path) -> None:
    seed = int(os.environ.get("DROPR_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    printed: dict[str, bytes] = {}
    written: set[bytes] = set()
    timings: list[str] = []
    for r in range(ROUNDS):
        p = Putter(cmd, spool_dir, f"s{seed}r{r}", rng)
        target = 0 if r == 0 else rng.choice([1, rng.randint(1, 50), rng.randint(50, 1500)])
        t0 = time.monotonic()
        p.kill_after(target, rng.uniform(0, 0.12), t0 + 10)
        timings.append(f"r{r}: {len(p.ids)} ids in {time.monotonic() - t0:.2f}s")
        assert p.proc.returncode == -signal.SIGKILL, f"round {r}: putter ended on its own"
        assert len(p.ids) <= len(p.lines)
        for ident, line in zip(p.ids, p.lines, strict=False):
            assert ident not in printed, f"seed {seed}: id {ident} printed twice"
            printed[ident] = line
        written.update(p.lines)
    assert len(printed) > 50, f"seed {seed}: too few ids printed to prove anything: {timings}"

    sp = Spool(str(spool_dir), create=False)
    # every printed id is on disk with exactly its line
    for ident, line in printed.items():
        found = sp.find_out(ident)
        assert len(found) == 1, f"seed {seed}: printed id {ident} found {found}"
        peer, state, name = found[0]
        assert state == "queued"
        assert read_payload(sp, peer, state, name) == line, f"seed {seed}: payload of {ident}"

    # every queued message is intact, came from the generator, and exists once
    [peer] = sp.out_peers()
    seen: set[bytes] = set()
    names = sp.out_names(peer, "queued")
    for name in names:
        data = read_payload(sp, peer, "queued", name)
        assert data in written, f"seed {seed}: {name} holds a line never written"
        assert data not in seen, f"seed {seed}: line stored twice: {data!r}"
        seen.add(data)
    for state in OUT_STATES[1:]:
        assert sp.out_names(peer, state) == []

    # dropr-ls counts what is queued, never the tmp leftovers of the killed putters
    res = cmd.run("dropr-ls", "--json", "--out", "--state", "queued", spool=spool_dir)
    assert res.returncode == 0, res.stderr
    [row] = [json.loads(x) for x in res.stdout.decode().splitlines()]
    assert row["count"] == len(names)
    leftovers = os.listdir(sp.tmp)
    assert not any(x in names for x in leftovers)
    # spot-check the details command on a few printed ids
    for ident in rng.sample(sorted(printed), 3):
        res = cmd.run("dropr-ls", "--json", ident, spool=spool_dir)
        [rec] = [json.loads(x) for x in res.stdout.decode().splitlines()]
        assert (rec["id"], rec["state"], rec["size"]) == (ident, "queued", len(printed[ident]))
    # the spool still takes puts after all those crashes
    res = cmd.run("dropr-put", "--to", NOWHERE, input=b"after the storm", spool=spool_dir)
    assert res.returncode == 0, res.stderr
