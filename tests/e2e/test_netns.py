"""Two hosts in network namespaces joined by a veth pair: cut the link, heal it.

Node b's dropr-serve listens inside namespace B on a private /30 that exists only
inside these two namespaces; node a's dropr-send daemon runs inside namespace A.
The spools are ordinary directories, so dropr-put and dropr-ls run outside (a
put wakes the daemon through its Unix socket, which does not care about network
namespaces). Needs root and iproute2; skipped otherwise. The namespaces (and with
them the veth pair) are deleted afterwards, whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Node, Nodes, command_path, listdir, wait_until

TOKEN = "tok-of-a-" + secrets.token_hex(8)
DEADLINE = 30.0

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


class Link:
    """Namespaces A and B joined by veth VA (in A) -- VB (in B) on 10.231.X.0/30."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}{secrets.token_hex(1)}"
        self.ns_a, self.ns_b = f"dropr-a-{tag}", f"dropr-b-{tag}"
        self.veth_a, self.veth_b = f"dra{tag}"[:15], f"drb{tag}"[:15]
        net = f"10.231.{os.getpid() % 256}"
        self.addr_a, self.addr_b = f"{net}.1", f"{net}.2"

    def up(self) -> None:
        ip("netns", "add", self.ns_b)
        ip(
            "link",
            "add",
            self.veth_a,
            "netns",
            self.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            self.veth_b,
            "netns",
            self.ns_b,
        )
        ip("-n", self.ns_a, "addr", "add", f"{self.addr_a}/30", "dev", self.veth_a)
        ip("-n", self.ns_b, "addr", "add", f"{self.addr_b}/30", "dev", self.veth_b)
        for ns, dev in ((self.ns_a, self.veth_a), (self.ns_b, self.veth_b)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")

    def cut(self) -> None:
        ip("-n", self.ns_a, "link", "set", self.veth_a, "down")

    def heal(self) -> None:
        ip("-n", self.ns_a, "link", "set", self.veth_a, "up")

    def delete(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            ip("netns", "del", ns, check=False)

    def exec(self, ns: str, node: Node, name: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start a dropr command of node inside namespace ns; node's teardown stops it."""
        with open(log, "wb") as f:
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, command_path(name), *args],
                env=node.env,
                stderr=f,
                stdin=subprocess.DEVNULL,
            )
        node.procs.append(p)  # `ip netns exec` execs the command: this pid is dropr's
        return p


@pytest.fixture
def link() -> Iterator[Link]:
    lk = Link()
    p = ip("netns", "add", lk.ns_a, check=False)
    if p.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root and iproute2): {p.stderr.strip()}")
    try:
        lk.up()
        yield lk
    finally:
        lk.delete()


def test_link_cut_and_healed(link: Link, nodes: Nodes, tmp_path: Path) -> None:
    a, b = nodes("a"), nodes("b")
    b.config(f'[serve.tokens]\n"{TOKEN}" = "a"\n')
    a.config(
        f'[peers.b]\nurl = "http://{link.addr_b}:8080/"\ntoken = "{TOKEN}"\n'
        '[send]\nbackoff_min = "100ms"\nbackoff_max = "2s"\n'
        'connect_timeout = "1s"\ntimeout = "3s"\n'
    )
    try:
        # not loopback, so the server needs tokens (it has them), not --insecure
        serve_log = tmp_path / "b-serve-netns.log"
        serve = link.exec(link.ns_b, b, "dropr-serve", "--listen", f"{link.addr_b}:8080", log=serve_log)

        def listening() -> bool:
            if serve.poll() is not None:
                raise AssertionError(f"dropr-serve died: {serve_log.read_text()}")
            return f"url=http://{link.addr_b}:8080/" in serve_log.read_text()

        wait_until(listening, DEADLINE, "dropr-serve to listen inside namespace B")

        first = a.put("before the cut", "--to", "b")
        send_log = tmp_path / "a-send-netns.log"
        sender = link.exec(link.ns_a, a, "dropr-send", log=send_log)
        ready = b.spool / "in" / "default" / "ready"
        wait_until(lambda: len(listdir(ready)) == 1, DEADLINE, "delivery over the veth pair")
        assert sender.poll() is None

        link.cut()
        cut = [a.put(f"during the cut {i}", "--to", "b") for i in range(5)]
        peer_json = a.spool / "out" / "b" / "peer.json"

        def failures() -> int:
            try:
                return int(json.loads(peer_json.read_text()).get("failures", 0))
            except (OSError, ValueError):
                return 0

        # deferred, and retried by the backoff (a second failure) while the link is down
        wait_until(lambda: failures() >= 2, DEADLINE, "the daemon to defer and retry")
        states = a.states("out")
        assert states[first] == "sent"
        assert all(states[i] == "queued" for i in cut), states
        text = a.run("dropr-ls", "--out", check=True).stdout.decode()
        peer_line = [ln for ln in text.splitlines() if ln.startswith("b ")][-1]
        assert peer_line.split()[1] == "5", text  # backlog
        assert not peer_line.rstrip().endswith(" -"), text  # a last error is shown
        assert len(listdir(ready)) == 1

        link.heal()
        wait_until(lambda: len(listdir(ready)) == 6, DEADLINE, "delivery after the link healed")
        wait_until(lambda: set(a.states("out").values()) == {"sent"}, DEADLINE, "all recorded as sent")
        ids = [n.split(",")[2] for n in listdir(ready)]
        assert sorted(ids) == sorted([first, *cut])  # each exactly once
        for n in listdir(ready):
            assert (ready / n).read_bytes().startswith((b"before the cut", b"during the cut"))
        assert sender.poll() is None and serve.poll() is None
    finally:
        a.stop_all()
        b.stop_all()
