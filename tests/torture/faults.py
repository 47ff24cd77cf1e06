"""The fault injectors, each a thread drawing from its own seeded random stream.

kills:   SIGKILL of a random dropr process: a daemon's main process (serve, send, recv
         --exec), a gunicorn worker, a handler, or a short-lived put, recv or ack
net:     a link cut (ip link down, up again later), or loss, delay or reordering on it
         (net.Mesh.impair: nftables and tc, as this kernel has no netem)
disk:    a spool filesystem filled to ENOSPC, freed a few seconds later
clock:   a sender's wall clock stepped +1 h or -1 h (libfaketime), back later
Each event is counted when it is applied. ``calm`` undoes whatever is still applied.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .disk import Disk
from .load import Running
from .net import Mesh
from .procs import Daemon, children, parent

KILL_KINDS = {"serve": 1, "worker": 2, "send": 2, "recv": 1, "handler": 2, "put": 2, "recv-pipe": 1, "ack": 1}


class Injector(threading.Thread):
    def __init__(
        self, name: str, every: float, seed: int, stop: threading.Event, act: Callable[[random.Random], None]
    ) -> None:
        super().__init__(name=f"fault-{name}", daemon=True)
        self.every, self.stop, self.act = every, stop, act
        self.rnd = random.Random(f"{seed}-{name}")
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        due = time.monotonic()
        while True:
            # the next one is due `every` (on average) after the last was due, not after it
            # ended: a kill that waited for its command keeps the rate
            due += self.every * self.rnd.uniform(0.5, 1.5)
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.act(self.rnd)
            except Exception as exc:  # an injector that fails is reported, not fatal
                self.errors[f"{type(exc).__name__}: {exc}"[:200]] += 1


class Faults:
    def __init__(
        self,
        mesh: Mesh,
        disks: dict[str, Disk],
        clocks: dict[str, Path],
        daemons: list[Daemon],
        running: Running,
    ) -> None:
        self.mesh, self.disks, self.clocks, self.daemons, self.running = mesh, disks, clocks, daemons, running
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.busy: set[str] = set()  # links, disks and clocks with a fault on now
        self.timers: list[threading.Timer] = []
        self.undo: dict[str, Callable[[], None]] = {}
        self.last_kill = ""
        self.log: TextIO | None = None  # a timeline of the faults, for a look afterwards

    def count(self, what: str, detail: str = "") -> None:
        with self.lock:
            self.counts[what] += 1
            if self.log is not None:
                self.log.write(f"{time.time():.3f} {what} {detail}\n")
                self.log.flush()

    # -- kills ------------------------------------------------------------------------------

    def kill(self, rnd: random.Random) -> None:
        kinds = list(KILL_KINDS)
        for _ in range(5):
            kind = rnd.choices(kinds, [KILL_KINDS[k] for k in kinds])[0]
            for _ in range(10):  # a short-lived command (put, ack, a handler) may come soon
                if self._kill(kind, rnd):
                    self.count(f"kill_{kind}", self.last_kill)
                    return
                time.sleep(0.02)

    def _kill(self, kind: str, rnd: random.Random) -> bool:
        if kind in ("put", "recv-pipe", "ack"):
            got = self.running.pick(kind, rnd)
            if got is None:
                return False
            self.last_kill = f"{got[0]} pid {got[1]}"
            return self.running.kill(got[1])
        main = {"worker": "serve", "handler": "recv"}.get(kind, kind)
        ds = [d for d in self.daemons if d.kind == main and d.pid() is not None]
        if not ds:
            return False
        d = rnd.choice(ds)
        pid = d.pid()
        if pid is None:
            return False
        if kind in ("worker", "handler"):
            kids = sorted(children(pid))
            if not kids:
                return False
            kid = rnd.choice(kids)
            self.last_kill = f"{d.node} pid {kid}"
            return parent(kid) == pid and d.kill(kid)
        self.last_kill = f"{d.node} pid {pid}"
        return d.kill(pid)

    # -- the network -------------------------------------------------------------------------

    def net(self, rnd: random.Random) -> None:
        free = [p for p in self.mesh.pairs if "-".join(p) not in self.busy]
        if not free:
            return
        x, y = rnd.choice(free)
        key = f"{x}-{y}"
        kind = rnd.choice(["cut", "loss", "delay", "reorder", "mixed"])
        if kind == "cut":
            self.mesh.link(x, y, False)
            what = "down"
            undo: Callable[[], None] = lambda: self.mesh.link(x, y, True)  # noqa: E731
        else:
            level = rnd.randrange(64, 2048) if kind == "delay" else rnd.randrange(5, 40)
            what = self.mesh.impair(x, y, kind, level)
            undo = lambda: self.mesh.restore(x, y)  # noqa: E731
        self.count(f"net_{kind}", f"{key} {what}")
        self._later(key, rnd.uniform(1, 8) if kind == "cut" else rnd.uniform(3, 15), undo)

    # -- disks and clocks ------------------------------------------------------------------------

    def disk(self, rnd: random.Random) -> None:
        free = [n for n in sorted(self.disks) if f"disk-{n}" not in self.busy]
        if not free:
            return
        n = rnd.choice(free)
        self.disks[n].fill()
        self.count("disk_full", n)
        self._later(f"disk-{n}", rnd.uniform(2, 8), self.disks[n].free)

    def clock(self, rnd: random.Random) -> None:
        free = [n for n in sorted(self.clocks) if f"clock-{n}" not in self.busy]
        if not free:
            return
        n = rnd.choice(free)
        step = rnd.choice(["+1h", "-1h"])
        self.clocks[n].write_text(step + "\n")
        self.count(f"clock_{step}", n)
        self._later(f"clock-{n}", rnd.uniform(5, 30), lambda: self.clocks[n].write_text("+0\n"))

    # -- undoing ---------------------------------------------------------------------------------

    def _later(self, key: str, secs: float, undo: Callable[[], None]) -> None:
        with self.lock:
            self.busy.add(key)
            self.undo[key] = undo

        def fire() -> None:
            with self.lock:
                fn = self.undo.pop(key, None)
            if fn is not None:
                fn()
            with self.lock:
                self.busy.discard(key)

        t = threading.Timer(secs, fire)
        t.daemon = True
        self.timers.append(t)
        t.start()

    def calm(self) -> None:
        """Undo every fault still on (links healed, qdiscs off, disks freed, clocks back)."""
        for t in self.timers:
            t.cancel()
        with self.lock:
            undo, self.undo = dict(self.undo), {}
            self.busy.clear()
        for fn in undo.values():
            fn()
        for x, y in self.mesh.pairs:
            self.mesh.link(x, y, True)
            self.mesh.restore(x, y)
        for d in self.disks.values():
            d.free()
        for c in self.clocks.values():
            c.write_text("+0\n")
