"""Producers (dropr-put at every node) and the harness's own consumer (dropr-recv | dropr-ack).

Every id a put prints is owed, with its destinations and the MD5 of its payload; a put
that was killed or failed owes what it printed before it ended, nothing more. The node's
`dropr-recv --exec` handler (handler.sh) and this consumer log "ORIGIN ID MD5 WHO" per
message consumed, one write each (O_APPEND), to the node's consumed log.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HANDLER = """#!/bin/sh
# a torture node's dropr-recv --exec handler: log origin, id and the payload's MD5
sum=$(md5sum) || exit 1
echo "$DROPR_ORIGIN $DROPR_ID ${sum%% *} exec" >> "$TORTURE_LOG"
"""


@dataclass(frozen=True)
class Owed:
    origin: str
    ident: str
    to: tuple[str, ...]  # the --to names of the put
    md5: str


class Ledger:
    """What the producers were promised: every printed id, and counts of the puts."""

    def __init__(self, path: Path) -> None:
        self.owed: list[Owed] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.file = open(path, "a")  # noqa: SIM115 (closed by close)

    def record(self, origin: str, to: tuple[str, ...], payloads: list[bytes], out: bytes, rc: int) -> None:
        ids = [line for line in out.decode(errors="replace").split("\n")[:-1] if line]
        with self.lock:
            self.counts["puts"] += 1
            self.counts["puts_failed" if rc else "puts_ok"] += 1
            self.counts[f"put_exit_{rc}"] += 1
            if len(ids) < len(payloads):
                self.counts["puts_partial" if ids else "puts_empty"] += rc != 0
            for ident, payload in zip(ids, payloads, strict=False):
                o = Owed(origin, ident, to, hashlib.md5(payload).hexdigest())
                self.owed.append(o)
                self.file.write(json.dumps([o.origin, o.ident, list(o.to), o.md5]) + "\n")
            self.counts["messages"] += len(ids)
            self.counts["unprinted"] += len(payloads) - len(ids)

    def close(self) -> None:
        self.file.close()


class Running:
    """The short-lived commands running now, by kind, for the kill injector."""

    def __init__(self) -> None:
        self.procs: dict[int, tuple[str, str, subprocess.Popen[bytes]]] = {}
        self.killed: set[int] = set()
        self.lock = threading.Lock()

    def run(
        self, node: str, kind: str, argv: list[str], env: dict[str, str], data: bytes, timeout: float = 300
    ) -> tuple[int, bytes, bytes]:
        p = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        with self.lock:
            self.procs[p.pid] = (node, kind, p)
        try:
            out, err = p.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        with self.lock:
            del self.procs[p.pid]
        return p.returncode, out, err

    def pick(self, kind: str, rnd: random.Random) -> tuple[str, int] | None:
        with self.lock:
            pids = sorted(pid for pid, (_, k, p) in self.procs.items() if k == kind and p.returncode is None)
            if not pids:
                return None
            pid = rnd.choice(pids)
            return self.procs[pid][0], pid

    def kill(self, pid: int) -> bool:
        with self.lock:
            entry = self.procs.get(pid)
            if entry is None or entry[2].poll() is not None:
                return False
            self.killed.add(pid)
            entry[2].kill()
            return True


class Producer(threading.Thread):
    """Put messages at one node at about `rate` a second, to destinations drawn from `kinds`."""

    def __init__(
        self,
        node: str,
        env: dict[str, str],
        put: str,
        kinds: list[tuple[str, ...]],
        groups: set[str],
        rate: float,
        ledger: Ledger,
        running: Running,
        seed: int,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"producer-{node}", daemon=True)
        self.node, self.env, self.put, self.kinds, self.groups = node, env, put, kinds, groups
        self.rate, self.ledger, self.running, self.stop = rate, ledger, running, stop
        self.rnd = random.Random(f"{seed}-put-{node}")
        self.seq = 0
        self.errors: Counter[str] = Counter()

    def one(self, behind: float = 0.0) -> int:
        """Run one put; behind: messages the producer owes its rate (it puts more at once)."""
        r = self.rnd
        to = r.choice(self.kinds)
        argv = [self.put]
        for t in to:
            argv += ["--to", t]
        if any(t in self.groups for t in to):
            argv += ["--key", f"k{r.randrange(32)}"]
        dice = r.random()
        if dice < 0.002:  # now and then one that a DirectWriter writes past the page cache (8 MiB up)
            payloads = [r.randbytes(r.randrange(8 << 20, 10 << 20))]
            data = payloads[0]
        elif dice < 0.012:  # or one larger than the rest, in a part of its own
            payloads = [r.randbytes(r.randrange(20_000, 400_000))]
            data = payloads[0]
        else:
            n = r.randrange(1, 2 * max(1, int(self.rate + behind)))
            payloads = []
            for _ in range(n):
                self.seq += 1
                pad = "x" * r.choice((0, 0, 0, 10, 100, 1000, 3000))
                payloads.append(f"{self.node}.{self.seq}.{r.getrandbits(64):016x}.{pad}".encode())
            argv.append("--lines")
            data = b"".join(p + b"\n" for p in payloads)
        rc, out, err = self.running.run(self.node, "put", argv, self.env, data)
        self.ledger.record(self.node, tuple(to), payloads, out, rc)
        if rc != 0:
            self.errors[err.decode(errors="replace").strip()[-160:] or f"exit {rc}"] += 1
        return len(payloads)

    def run(self) -> None:
        start, made = time.monotonic(), 0
        while not self.stop.is_set():
            made += self.one(min(10 * self.rate, max(0.0, (time.monotonic() - start) * self.rate - made)))
            # catch up after slow puts: the rate holds over the run, not put by put
            self.stop.wait(max(0.0, start + made / self.rate - time.monotonic()))


class PipeConsumer(threading.Thread):
    """dropr-recv -n N --format json, then dropr-ack - of what it logged: the killable ack."""

    def __init__(
        self,
        node: str,
        env: dict[str, str],
        recv: str,
        ack: str,
        log: Path,
        running: Running,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"consumer-{node}", daemon=True)
        self.node, self.env, self.recv, self.ack, self.log = node, env, recv, ack, log
        self.running, self.stop = running, stop
        self.counts: Counter[str] = Counter()

    def one(self) -> bool:
        rc, out, _ = self.running.run(
            self.node,
            "recv-pipe",
            [self.recv, "-n", "200", "--format", "json", "--lease", "15s"],
            self.env,
            b"",
        )
        recs = [json.loads(line) for line in out.decode(errors="replace").split("\n")[:-1] if line]
        if not recs:
            return False
        done, lines = [], []
        for rec in recs:
            try:
                with open(rec["path"], "rb") as f:
                    md5 = hashlib.md5(f.read()).hexdigest()
            except OSError:
                self.counts["unreadable"] += 1
                continue
            lines.append(f"{rec['origin']} {rec['id']} {md5} pipe\n")
            done.append(rec["id"])
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode())
        finally:
            os.close(fd)
        rc, _, _ = self.running.run(
            self.node, "ack", [self.ack, "-"], self.env, "".join(i + "\n" for i in done).encode()
        )
        self.counts[f"ack_exit_{rc}"] += 1
        self.counts["claimed"] += len(recs)
        return True

    def run(self) -> None:
        while not self.stop.is_set():
            busy = self.one()
            self.stop.wait(0.3 if busy else 1.0)
