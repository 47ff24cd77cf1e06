"""Shared e2e helpers: nodes with their own spool, real dropr-serve and dropr-send processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import command_path, wait_until


class Node:
    """One host: a spool directory, an optional config, and the processes it runs."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.spool = root / name
        self.spool.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, DROPR_SPOOL=str(self.spool), DROPR_NODE=name)
        self.env.pop("DROPR_CONFIG", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.serve_log: Path = root / f"{name}-serve.log"

    def config(self, text: str) -> None:
        """Write SPOOL/dropr.toml."""
        (self.spool / "dropr.toml").write_text(f'node = "{self.name}"\n' + text)

    def run(self, name: str, *args: str, input: bytes | str | None = None, check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run a dropr command for this node and wait for it."""
        data = input.encode() if isinstance(input, str) else input
        p = subprocess.run([command_path(name), *args], input=data, capture_output=True, env=self.env,
                           timeout=timeout)  # fmt: skip
        if check and p.returncode != 0:
            raise AssertionError(f"{name} {args} exited {p.returncode}: {p.stderr.decode()}")
        return p

    def put(self, payload: bytes | str, *args: str) -> str:
        """Put one message; return its id."""
        p = self.run("dropr-put", *args, input=payload, check=True)
        return p.stdout.decode().strip()

    def start(self, name: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running dropr command for this node."""
        p = subprocess.Popen([command_path(name), *args], env=self.env, **kw)
        self.procs.append(p)
        return p

    def serve(self, *args: str, listen: str = "127.0.0.1:0") -> str:
        """Start dropr-serve on a free loopback port; return its URL."""
        with open(self.serve_log, "wb") as log:
            self.serve_proc = self.start("dropr-serve", "--listen", listen, *args, stderr=log)

        def url() -> str | None:
            for line in self.serve_log.read_text().splitlines():
                if "listening" in line and "url=" in line:
                    return line.split("url=")[1].split()[0]
            if self.serve_proc is not None and self.serve_proc.poll() is not None:
                raise AssertionError(f"dropr-serve died: {self.serve_log.read_text()}")
            return None

        self.url = wait_until(url, 20, "dropr-serve to listen")
        return self.url

    def stop_serve(self, sig: int = signal.SIGTERM) -> None:
        """Stop this node's dropr-serve (TERM: graceful; KILL: crash)."""
        if self.serve_proc is not None:
            self.serve_proc.send_signal(sig)
            self.serve_proc.wait(30)
            self.serve_proc = None

    def ls(self, *args: str) -> list[dict[str, Any]]:
        """Return dropr-ls --json -l records (or summary rows without -l)."""
        p = self.run("dropr-ls", "--json", *args, check=True)
        return [json.loads(line) for line in p.stdout.decode().splitlines() if line]

    def states(self, box: str) -> dict[str, str]:
        """Map id -> state for every message in a box (one destination/channel)."""
        return {r["id"]: r["state"] for r in self.ls("-l", f"--{box}")}

    def stop_all(self) -> None:
        """End every process this node started, by PID."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    """Make nodes on demand: nodes("a"), nodes("b"); all their processes end with the test."""
    made: list[Node] = []

    def make(name: str) -> Node:
        n = Node(tmp_path, name)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop_all()
