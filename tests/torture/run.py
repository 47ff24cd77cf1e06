"""One torture run: set up, load and break, drain, check, clean up; its counts as a dict."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import topology as topo
from .check import VIOLATIONS, Found, check, scan
from .disk import Disk
from .faults import Faults, Injector
from .load import HANDLER, Ledger, PipeConsumer, Producer, Running
from .net import Mesh
from .procs import Daemon, Supervisor

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
BIN = Path(sys.executable).parent
# per 30 minutes of load: the floors, with some room
PER_30_MIN = {"messages": 130_000, "kills": 1300, "net": 150, "disk": 18, "clock": 12}
FLOORS = {"kills": 10, "net": 4, "disk": 2, "clock": 2}


@dataclass
class Plan:
    seed: int
    seconds: float  # of load and faults
    work: Path
    rate: float = 0.0  # messages a second over all nodes; 0: PER_30_MIN's
    drain: float = 300.0  # at most this long for everything to settle after the faults
    disk_mib: int = 2048
    inodes: int = 600_000

    def every(self, what: str) -> float:
        """Seconds between two events of a kind, for the run to reach its share of PER_30_MIN."""
        n = max(FLOORS[what], PER_30_MIN[what] * self.seconds / 1800)
        return self.seconds / n

    def msg_rate(self) -> float:
        return self.rate or PER_30_MIN["messages"] / 1800


def missing_tools() -> str | None:
    """Why this machine cannot run it, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, loop mounts)"
    for tool in ("ip", "tc", "nft", "mkfs.ext4", "mount", "losetup", "md5sum"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists(FAKETIME):
        return f"needs libfaketime ({FAKETIME}; apt-get install libfaketime)"
    if subprocess.run(["tc", "qdisc", "help"], capture_output=True).returncode not in (0, 255):
        return "needs tc"
    return None


class Run:
    def __init__(self, plan: Plan, say: Any = print) -> None:
        self.plan, self.say = plan, say
        self.work = plan.work
        self.mesh = Mesh(plan.seed)
        self.disks = {
            n: Disk(self.work / f"{n}.img", self.work / f"{n}-fs", plan.disk_mib, plan.inodes)
            for n in self.mesh.names
        }
        self.spools = {n: self.disks[n].mnt / "spool" for n in self.mesh.names}
        self.logs = {n: self.work / f"{n}-consumed.log" for n in self.mesh.names}
        self.clocks = {n: self.work / f"{n}-clock" for n in self.mesh.names}
        self.envs: dict[str, dict[str, str]] = {}
        self.daemons: list[Daemon] = []
        self.stop_load = threading.Event()
        self.stop_faults = threading.Event()
        self.running = Running()
        self.ledger: Ledger | None = None
        self.result: dict[str, Any] = {}
        self.sup: Supervisor | None = None

    # -- setting up --------------------------------------------------------------------------

    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.mesh.up()
        handler = self.work / "handler.sh"
        handler.write_text(HANDLER)
        handler.chmod(0o755)
        self.ledger = Ledger(self.work / "owed.jsonl")
        for n in self.mesh.names:
            self.disks[n].mount()
            self.spools[n].mkdir()
            conf = self.spools[n] / "dropr.toml"
            conf.write_text(topo.config(self.mesh, self.plan.seed, n))
            conf.chmod(0o600)
            self.clocks[n].write_text("+0\n")
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("DROPR_", "FAKETIME", "LD_PRELOAD"))
            }
            env.update(
                DROPR_SPOOL=str(self.spools[n]),
                DROPR_NODE=n,
                TORTURE_LOG=str(self.logs[n]),
                PATH=f"{BIN}:{env.get('PATH', '')}",
            )
            self.envs[n] = env
            faked = dict(
                env,
                LD_PRELOAD=FAKETIME,
                FAKETIME_TIMESTAMP_FILE=str(self.clocks[n]),
                FAKETIME_CACHE_DURATION="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
            )
            ns = self.mesh.exec_argv
            self.daemons += [
                Daemon(
                    n,
                    "serve",
                    ns(n, [str(BIN / "dropr-serve"), "--workers", "2", "--threads", "4"]),
                    env,
                    self.work / f"{n}-serve.log",
                ),
                Daemon(n, "send", ns(n, [str(BIN / "dropr-send")]), faked, self.work / f"{n}-send.log"),
                Daemon(
                    n,
                    "recv",
                    [
                        str(BIN / "dropr-recv"),
                        "--exec",
                        str(handler),
                        "--jobs",
                        "3",
                        "--lease",
                        "15s",
                        "--max-attempts",
                        "0",
                    ],
                    env,
                    self.work / f"{n}-recv.log",
                ),
            ]

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for d in self.daemons:
            if d.kind != "serve":
                continue
            while "listening" not in d.log.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{d.node}'s dropr-serve does not listen:\n{d.log.read_text()}")
                time.sleep(0.1)

    # -- running ---------------------------------------------------------------------------------

    def go(self) -> dict[str, Any]:
        p = self.plan
        assert self.ledger is not None
        self.sup = sup = Supervisor(self.daemons)
        sup.start()
        self.wait_serving()
        rate = p.msg_rate() / len(self.mesh.names)
        producers = [
            Producer(
                n,
                self.envs[n],
                str(BIN / "dropr-put"),
                topo.KINDS[n],
                topo.GROUPS[n],
                rate,
                self.ledger,
                self.running,
                p.seed,
                self.stop_load,
            )
            for n in self.mesh.names
        ]
        consumers = [
            PipeConsumer(
                n,
                self.envs[n],
                str(BIN / "dropr-recv"),
                str(BIN / "dropr-ack"),
                self.logs[n],
                self.running,
                self.stop_load,
            )
            for n in self.mesh.names
        ]
        faults = Faults(self.mesh, self.disks, self.clocks, self.daemons, self.running)
        faults.log = open(self.work / "faults.log", "a")  # noqa: SIM115 (a log for the whole run)
        injectors = [
            Injector(k, p.every(k), p.seed, self.stop_faults, getattr(faults, act))
            for k, act in (("kills", "kill"), ("net", "net"), ("disk", "disk"), ("clock", "clock"))
        ]
        started = time.monotonic()
        for t in [*producers, *consumers, *injectors]:
            t.start()
        try:
            self._load(started, faults, sup)
        finally:
            self.stop_faults.set()
            for t in injectors:
                t.join()
            faults.calm()
            self.stop_load.set()
            for t in producers:
                t.join()
        loaded = time.monotonic() - started
        self.say(f"load over after {loaded:.0f} s; draining (at most {p.drain:.0f} s)")
        for t in consumers:  # the node's recv --exec consumers carry on alone
            t.join()
        drained, verdict = self._drain()
        down = sup.down()
        if down:
            time.sleep(2)
            down = [d for d in sup.down() if d in down]
        sup.stop()
        return self._result(loaded, drained, verdict, down, sup, faults, producers, consumers, injectors)

    def _load(self, started: float, faults: Faults, sup: Supervisor) -> None:
        assert self.ledger is not None
        last = started
        while (now := time.monotonic()) < started + self.plan.seconds:
            time.sleep(min(1.0, started + self.plan.seconds - now))
            if now - last >= 30:
                last = now
                c = self.ledger.counts
                self.say(
                    f"{now - started:5.0f} s: {c['messages']} messages owed "
                    f"({c['puts_failed']} puts failed), "
                    f"faults {sum(faults.counts.values())} ({dict(sorted(faults.counts.items()))}), "
                    f"restarts {sup.restarts}, deaths {sup.deaths}"
                )

    def _scan(self) -> dict[str, Found]:
        return {n: scan(self.spools[n], self.logs[n]) for n in self.mesh.names}

    def _drain(self) -> tuple[float, Any]:
        assert self.ledger is not None
        t0 = time.monotonic()
        while True:
            verdict = check(self.ledger.owed, self._scan(), topo.GROUPS, topo.node_of_url(self.mesh))
            waited = time.monotonic() - t0
            if verdict.violations == 0 or waited > self.plan.drain:
                return waited, verdict
            time.sleep(2)

    # -- the end -------------------------------------------------------------------------------

    def _result(
        self,
        loaded: float,
        drained: float,
        verdict: Any,
        down: list[str],
        sup: Supervisor,
        faults: Faults,
        producers: list[Producer],
        consumers: list[PipeConsumer],
        injectors: list[Injector],
    ) -> dict[str, Any]:
        from . import finish

        assert self.ledger is not None
        after = finish.after_stop(self.spools, self.envs)
        kills = {k[5:]: n for k, n in faults.counts.items() if k.startswith("kill_")}
        net = {k[4:]: n for k, n in faults.counts.items() if k.startswith("net_")}
        clock = {k[6:]: n for k, n in faults.counts.items() if k.startswith("clock_")}
        put_errors: Counter[str] = Counter()
        for pr in producers:
            put_errors.update(pr.errors)
        c = verdict.counts
        self.result = {
            "seed": self.plan.seed,
            "load_seconds": round(loaded, 1),
            "drain_seconds": round(drained, 1),
            "machine": {
                "nproc": os.cpu_count(),
                "uname": " ".join(platform.uname()[:3] + platform.uname()[4:5]),
            },
            "messages": self.ledger.counts["messages"],
            "puts": dict(self.ledger.counts),
            "deliveries": {
                "owed": c["deliveries_owed"],
                "checked": c["delivered"],
                "stored": c["stored"],
                "stored_unowed": c["stored_unowed"],
                "consumed_again": c["consumed_again"],
            },
            "kills": {"total": sum(kills.values()), **kills},
            "network_events": {"total": sum(net.values()), **net},
            "disk_full_events": faults.counts["disk_full"],
            "clock_steps": {
                "total": sum(clock.values()),
                **clock,
                "how": "libfaketime (LD_PRELOAD) on dropr-send",
            },
            "restarts": sup.restarts,
            "daemon_deaths": sup.deaths,
            "deaths": [x for d in self.daemons for x in d.deaths][:20],
            "down_at_end": down,
            "violations": {k: c[k] for k in VIOLATIONS},
            "examples": dict(verdict.examples),
            "after_stop": after,
            "consumer": {n: dict(t.counts) for n, t in zip(self.mesh.names, consumers, strict=True)},
            "put_errors": dict(put_errors.most_common(10)),
            "injector_errors": {t.name: dict(t.errors) for t in injectors if t.errors},
        }
        lost = c["lost"] + c["undelivered"]
        self.result["lost"] = lost
        self.result["duplicated"] = c["duplicated"] + c["in_two_members"]
        self.result["ok"] = verdict.violations == 0 and not down and sup.deaths == 0 and after["ok"]
        return self.result

    def cleanup(self) -> None:
        self.stop_faults.set()
        self.stop_load.set()
        if self.sup is not None:  # first, or it restarts what is stopped here (an interrupted run)
            self.sup.halt()
        for d in self.daemons:
            try:
                d.stop(5)
            except Exception:
                pass
        for pid in list(self.running.procs):
            self.running.kill(pid)
        self.mesh.delete()
        keep = self.result.get("ok") is False
        for d in self.disks.values():
            d.unmount(keep)
        if keep:
            self.say(f"the spools are kept in {self.work}/*.img (mount -o loop IMG DIR)")
        if self.ledger is not None:
            self.ledger.close()


def run(plan: Plan, say: Any = print) -> dict[str, Any]:
    """Run one torture, cleaning up on every exit path (TERM and Ctrl-C included)."""
    r = Run(plan, say)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = (
        signal.signal(signal.SIGTERM, on_term)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        r.setup()
        return r.go()
    finally:
        r.cleanup()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
