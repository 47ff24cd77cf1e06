"""Relays (#15): a -> b -> c and longer chains, with real dropr-serve and dropr-send per node.

Each node is a spool with its own dropr-serve on 127.0.0.1 and its own dropr-send daemon.
The origin names the destination with `via`; each relay lists its clients in serve.relay
and has a peer for the next hop; the destination stores each message once, under the
origin and id it was put with, and receipts come back hop by hop.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from helpers import (
    Node,
    Nodes,
    alive,
    command_path,
    free_port,
    kill_server_tree,
    listdir,
    out_states,
    wait_until,
)

DEADLINE = 60.0
FAST = '[send]\nbackoff_min = "100ms"\nbackoff_max = "1s"\n'


def ready_names(node: Node, channel: str = "default") -> list[str]:
    return sorted(listdir(node.spool / "in" / channel / "ready"))


def dead_error(node: Node, peer: str, ident: str) -> str:
    return str(json.loads((node.spool / "out" / peer / "meta" / ident).read_text()).get("error", ""))


def chain(nodes: Nodes, names: str, *, origin_conf: str = "", trust: bool = True) -> list[Node]:
    """Start a chain of nodes named by the letters of names, the last the destination:
    every node serves and (but the last) runs a dropr-send daemon; the first reaches the
    last through the second. Each relay lets its predecessor relay, and trusts it (the
    first relay's client is the origin itself: nothing to trust)."""
    ns = [nodes(n) for n in names]
    dest = ns[-1]
    dest.config("")
    dest.serve()
    for i in range(len(ns) - 2, 0, -1):  # the relays, from the last one back
        me, nxt, prev = ns[i], ns[i + 1], ns[i - 1]
        conf = f'[serve]\nrelay = ["{prev.name}"]\n'
        if trust and i > 1:
            conf += f'trust_relays = ["{prev.name}"]\n'
        conf += f'[peers.{nxt.name}]\nurl = "{nxt.url}"\n'
        if nxt is not dest:
            conf += f'[peers.{dest.name}]\nvia = "{nxt.name}"\n'
        me.config(conf + FAST)
        me.serve()
    first = f'[peers.{ns[1].name}]\nurl = "{ns[1].url}"\n[peers.{dest.name}]\nvia = "{ns[1].name}"\n'
    ns[0].config(first + origin_conf + FAST)
    for n in ns[:-1]:
        n.start_sender()
    return ns


def in_names(node: Node) -> list[tuple[str, str]]:
    """(origin, id) of every message in the inbox (any state) of node."""
    out = []
    for state in ("ready", "wait", "claimed", "done", "dead"):
        for name in listdir(node.spool / "in" / "default" / state):
            _, origin, ident = name.split(",")
            out.append((origin, ident))
    return sorted(out)


def consume_all(node: Node) -> None:
    node.run("dropr-recv", "--all", "--ack", check=True)


def test_a_b_c_delivers_once_under_the_origin_and_receipts_come_back(nodes: Nodes) -> None:
    a, b, c = chain(nodes, "abc")
    ids = [a.put(f"via b {i}", "--to", "c") for i in range(5)]
    ids.append(a.put(b"x" * 100_000, "--to", "c", "--id", "chosen-1"))
    wait_until(lambda: len(ready_names(c)) == 6, DEADLINE, "six messages at c")
    assert in_names(c) == sorted(("a", i) for i in ids)  # the origin's name and ids, once each
    assert listdir(b.spool / "in") == [] or in_names(b) == []  # never in the relay's inbox
    # the relay kept them in its outbox for c, with o=a and h=1, and the payload unchanged
    wait_until(lambda: len(listdir(b.spool / "out" / "c" / "sent")) == 6, DEADLINE, "b to mark them sent")
    sent = listdir(b.spool / "out" / "c" / "sent")
    hdrs = [m.Header.parse((b.spool / "out" / "c" / "sent" / n).read_bytes()[:256]) for n in sent]
    assert {(h.origin, h.hops) for h in hdrs} == {("a", 1)}
    payloads = sorted((c.spool / "in" / "default" / "ready" / n).read_bytes() for n in ready_names(c))
    assert payloads == sorted([f"via b {i}".encode() for i in range(5)] + [b"x" * 100_000])
    consume_all(c)
    wait_until(lambda: set(out_states(a, "c").values()) == {"processed"}, DEADLINE, "receipts back at a")
    assert set(out_states(b, "c").values()) == {"processed"}


def test_put_wait_at_the_origin_through_a_relay(nodes: Nodes) -> None:
    a, _, c = chain(nodes, "abc")
    waiting = a.start("dropr-put", "--to", "c", "--wait", "--timeout", "60s", stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert waiting.stdin is not None
    waiting.stdin.write(b"wait for me")
    waiting.stdin.close()
    waiting.stdin = None  # communicate() must not flush it
    wait_until(lambda: ready_names(c), DEADLINE, "the message at c")
    assert waiting.poll() is None  # not processed yet
    consume_all(c)
    out, err = waiting.communicate(timeout=DEADLINE)
    assert waiting.returncode == 0, err.decode()
    assert in_names(c) == [("a", out.decode().strip())]


@pytest.mark.slow
def test_a_b_c_d_chain(nodes: Nodes) -> None:
    a, b, c, d = chain(nodes, "abcd")
    ids = [a.put(f"two relays {i}", "--to", "d") for i in range(20)]
    wait_until(lambda: len(ready_names(d)) == 20, DEADLINE, "twenty messages at d")
    assert in_names(d) == sorted(("a", i) for i in ids)
    name = listdir(c.spool / "out" / "d" / "sent")[0]
    hdr = m.Header.parse((c.spool / "out" / "d" / "sent" / name).read_bytes()[:256])
    assert (hdr.origin, hdr.hops) == ("a", 2)
    assert in_names(b) == [] and in_names(c) == []
    consume_all(d)
    wait_until(lambda: set(out_states(a, "d").values()) == {"processed"}, DEADLINE, "receipts back at a")
    assert set(out_states(b, "d").values()) == {"processed"}
    assert set(out_states(c, "d").values()) == {"processed"}


def test_a_client_not_allowed_to_relay_is_refused(nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    c.config("")
    c.serve()
    b.config(f'[peers.c]\nurl = "{c.url}"\n')  # no serve.relay: b relays for nobody
    b.serve()
    a.config(f'[peers.b]\nurl = "{b.url}"\n[peers.c]\nvia = "b"\n' + FAST)
    a.start_sender()
    ident = a.put("not allowed", "--to", "c")
    direct = a.put("to b itself", "--to", "b")  # the client's other messages go on
    wait_until(lambda: out_states(a, "c").get(ident) == "dead", DEADLINE, "the message dead at a")
    assert "b does not relay for a: add it to serve.relay at b" in dead_error(a, "c", ident)
    wait_until(lambda: in_names(b) == [("a", direct)], DEADLINE, "a's message for b itself at b")
    assert in_names(c) == [] and not (b.spool / "out" / "c").exists()


def test_an_unknown_destination_is_refused_and_the_others_go_on(nodes: Nodes) -> None:
    a, b, c = chain(nodes, "abc", origin_conf='[peers.zed]\nvia = "b"\n')
    lost = a.put("for nobody", "--to", "zed")
    fine = a.put("for c", "--to", "c")
    wait_until(lambda: out_states(a, "zed").get(lost) == "dead", DEADLINE, "the message dead at a")
    assert "b has no peer zed" in dead_error(a, "zed", lost)
    wait_until(lambda: in_names(c) == [("a", fine)], DEADLINE, "the other message at c")
    assert not (b.spool / "out" / "zed").exists()


def test_a_loop_is_refused_where_it_closes(nodes: Nodes) -> None:
    """a -> b -> c -> b: b reaches x through c, and c reaches x through b."""
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    b_port, c_port = free_port(), free_port()
    b_url, c_url = f"http://127.0.0.1:{b_port}/", f"http://127.0.0.1:{c_port}/"
    b.config(f'[serve]\nrelay = ["a", "c"]\ntrust_relays = ["c"]\n[peers.c]\nurl = "{c_url}"\n'
             '[peers.x]\nvia = "c"\n' + FAST)  # fmt: skip
    c.config(f'[serve]\nrelay = ["b"]\ntrust_relays = ["b"]\n[peers.b]\nurl = "{b_url}"\n'
             '[peers.x]\nvia = "b"\n' + FAST)  # fmt: skip
    a.config(f'[peers.b]\nurl = "{b_url}"\n[peers.x]\nvia = "b"\n' + FAST)
    b.serve(listen=f"127.0.0.1:{b_port}")
    c.serve(listen=f"127.0.0.1:{c_port}")
    for n in (a, b, c):
        n.start_sender()
    ident = a.put("round and round", "--to", "x")
    wait_until(lambda: out_states(c, "x").get(ident) == "dead", DEADLINE, "the message dead at c")
    assert f"loop: b has relayed a's message {ident} before, from a" in dead_error(c, "x", ident)
    # the dead end travels back: b's copy, then a's, are dead with the reason
    wait_until(lambda: out_states(a, "x").get(ident) == "dead", DEADLINE, "the message dead at a")
    assert "loop: b has relayed" in dead_error(a, "x", ident)
    assert out_states(b, "x") == {ident: "dead"}


@pytest.mark.slow
def test_a_ninth_hop_is_refused(nodes: Nodes) -> None:
    """a -> r1 -> ... -> r8 -> z: the 8th relay would make the 9th hop, and refuses."""
    ns = chain(nodes, "abcdefghiz")
    ident = ns[0].put("too far", "--to", "z")
    last = ns[-2]  # i, the 8th relay: what it got was refused by nobody; it refuses
    prev = ns[-3]
    wait_until(
        lambda: out_states(prev, "z").get(ident) == "dead", DEADLINE, "the message dead at the 7th relay"
    )
    assert "too many hops: the next from i would be hop 9, at most 8" in dead_error(prev, "z", ident)
    assert out_states(last, "z") == {}
    wait_until(lambda: out_states(ns[0], "z").get(ident) == "dead", DEADLINE, "the message dead at a")
    assert in_names(ns[-1]) == []


def test_the_destination_refuses_a_relay_it_does_not_trust(nodes: Nodes, tmp_path: Path) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    c.config('[serve.tokens]\n"tok-b" = "b"\n')  # tokens, and b not in serve.trust_relays
    c.serve()
    b.config(f'[serve]\nrelay = ["a"]\n[peers.c]\nurl = "{c.url}"\ntoken = "tok-b"\n' + FAST)
    b.serve()
    a.config(f'[peers.b]\nurl = "{b.url}"\n[peers.c]\nvia = "b"\n' + FAST)
    b.start_sender()
    a.start_sender()
    ident = a.put("from a through b", "--to", "c")
    own = b.put("b's own", "--to", "c")
    wait_until(lambda: out_states(b, "c").get(ident) == "dead", DEADLINE, "the message dead at b")
    assert "c does not take messages relayed by b: add it to serve.trust_relays" in dead_error(b, "c", ident)
    wait_until(lambda: out_states(a, "c").get(ident) == "dead", DEADLINE, "the message dead at a")
    # b's own message went on: it may still be on its way when a's is dead
    wait_until(lambda: in_names(c) == [("b", own)], DEADLINE, "b's own message stored at c")


def test_an_older_relay_answers_404(nodes: Nodes) -> None:
    """A server without v1/relay (here: a URL whose path has no dropr) defers with a clear error."""
    a, b = nodes("a"), nodes("b")
    b.config("")
    url = b.serve()
    a.config(f'[peers.b]\nurl = "{url}nodropr/"\n[peers.c]\nvia = "b"\n' + FAST)
    ident = a.put("for c", "--to", "c")
    p = a.send_once()
    assert p.returncode == 75, p.stderr.decode()
    err = p.stderr.decode()
    assert "HTTP 404" in err and "b does not relay: an older dropr?" in err, err
    assert out_states(a, "c") == {ident: "queued"} and in_names(b) == []


def kill_9(b: Node, sender: subprocess.Popen[bytes]) -> None:
    """kill -9 the relay's dropr-send, its dropr-serve master and workers; wait until gone."""
    master = b.serve_proc
    assert master is not None
    os.kill(sender.pid, signal.SIGKILL)
    pids = [sender.pid, *kill_server_tree(master.pid)]
    master.wait(30)
    sender.wait(30)
    b.serve_proc = None
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the killed processes to exit")


@pytest.mark.slow
def test_kill_9_of_the_relay_loses_nothing_and_duplicates_nothing(nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    c.config("")
    c.serve()
    listen = f"127.0.0.1:{free_port()}"
    b.config(f'[serve]\nrelay = ["a"]\n[peers.c]\nurl = "{c.url}"\n' + FAST)
    url = b.serve(listen=listen)
    a.config(f'[peers.b]\nurl = "{url}"\n[peers.c]\nvia = "b"\n' + FAST)
    n = 2000
    p = a.run("dropr-put", "--lines", "--to", "c", input="".join(f"m{i}\n" for i in range(n)), check=True)
    ids = p.stdout.decode().split()
    a.start_sender("--batch", "20")  # smaller batches: with 50 it was over within the first sleep
    relay_sender = b.start_sender("--batch", "20")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    kills = 0
    for _ in range(4):
        if len(ready_names(c)) >= n:
            break
        time.sleep(rng.uniform(0.02, 0.2))  # the fault's timing, not a synchronization
        kill_9(b, relay_sender)
        kills += 1
        assert b.serve(listen=listen) == url
        relay_sender = b.start_sender("--batch", "20")
    assert kills >= 2, f"only {kills} kills (seed {seed}): the transfer was too quick"
    wait_until(lambda: len(ready_names(c)) >= n, 2 * DEADLINE, f"{n} messages at c (seed {seed})")
    got = in_names(c)
    assert len(got) == len(set(got)) == n, f"seed {seed}"
    assert got == sorted(("a", i) for i in ids)
    consume_all(c)
    wait_until(lambda: set(out_states(a, "c").values()) == {"processed"}, DEADLINE, "receipts back at a")


# -- a network where a cannot reach c at all ------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


class Net:
    """Namespaces A, B, C; veth A--B on 10.232.X.0/30 and B--C on 10.233.X.0/30. No
    forwarding, no default route: A has no route to C's address at all."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{secrets.token_hex(1)}"
        self.ns = {n: f"relay-{n}-{tag}" for n in "abc"}
        self.made: list[str] = []
        x = os.getpid() % 256
        self.addr = {"a": f"10.232.{x}.1", "b1": f"10.232.{x}.2", "b2": f"10.233.{x}.1", "c": f"10.233.{x}.2"}
        self.veths = [
            (f"rla{tag}"[:15], "a", f"rlb{tag}"[:15], "b"),
            (f"rlB{tag}"[:15], "b", f"rlc{tag}"[:15], "c"),
        ]

    def add(self, n: str) -> subprocess.CompletedProcess[str]:
        p = ip("netns", "add", self.ns[n], check=False)
        if p.returncode == 0:
            self.made.append(self.ns[n])
        return p

    def up(self) -> None:
        for n in "bc":
            if self.add(n).returncode != 0:
                raise AssertionError(f"cannot add namespace {self.ns[n]}")
        addrs = iter([self.addr["a"], self.addr["b1"], self.addr["b2"], self.addr["c"]])
        for va, na, vb, nb in self.veths:
            ip(
                "link",
                "add",
                va,
                "netns",
                self.ns[na],
                "type",
                "veth",
                "peer",
                "name",
                vb,
                "netns",
                self.ns[nb],
            )
            for dev, n in ((va, na), (vb, nb)):
                ip("-n", self.ns[n], "addr", "add", f"{next(addrs)}/30", "dev", dev)
                ip("-n", self.ns[n], "link", "set", dev, "up")
        for ns in self.ns.values():
            ip("-n", ns, "link", "set", "lo", "up")

    def delete(self) -> None:
        for ns in self.made:  # the veth pairs go with their namespaces
            ip("netns", "del", ns, check=False)

    def exec(self, n: str, node: Node, name: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """Start a dropr command of node inside namespace n; node's teardown stops it."""
        with open(log, "ab") as f:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[n], command_path(name), *args],
                env=node.env,
                stderr=f,
                stdin=subprocess.DEVNULL,
            )
        node.procs.append(p)  # `ip netns exec` execs the command: this pid is dropr's
        return p

    def serve(self, n: str, node: Node, addr: str) -> None:
        """Start node's dropr-serve in namespace n on addr:8080; wait until it listens."""
        proc = self.exec(n, node, "dropr-serve", "--listen", f"{addr}:8080", log=node.serve_log)

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"dropr-serve died: {node.serve_log.read_text()}")
            return f"url=http://{addr}:8080/" in node.serve_log.read_text()

        wait_until(listening, DEADLINE, f"{node.name}'s dropr-serve to listen in its namespace")


@pytest.fixture
def net() -> Iterator[Net]:
    nt = Net()
    p = nt.add("a")
    if p.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root and iproute2): {p.stderr.strip()}")
    try:
        nt.up()
        yield nt
    finally:
        nt.delete()


@pytest.mark.slow
@pytest.mark.netns
def test_a_delivers_through_b_to_c_it_has_no_route_to(net: Net, nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    unreachable = ip("netns", "exec", net.ns["a"], "ip", "route", "get", net.addr["c"], check=False)
    assert unreachable.returncode != 0, unreachable.stdout  # no route from a to c at all
    c.config('[serve]\ntrust_relays = ["b"]\n[serve.tokens]\n"tok-of-b-for-c" = "b"\n')
    b.config(
        '[serve]\nrelay = ["a"]\n[serve.tokens]\n"tok-of-a-for-b" = "a"\n'
        f'[peers.c]\nurl = "http://{net.addr["c"]}:8080/"\ntoken = "tok-of-b-for-c"\n' + FAST
    )
    a.config(
        f'[peers.b]\nurl = "http://{net.addr["b1"]}:8080/"\ntoken = "tok-of-a-for-b"\n'
        '[peers.c]\nvia = "b"\n' + FAST
    )
    net.serve("c", c, net.addr["c"])
    net.serve("b", b, net.addr["b1"])  # the side a reaches; b reaches c from its other side
    net.exec("b", b, "dropr-send", log=b.send_log)
    net.exec("a", a, "dropr-send", log=a.send_log)
    ids = [a.put(f"across {i}", "--to", "c") for i in range(10)]
    wait_until(lambda: len(ready_names(c)) == 10, DEADLINE, "the messages at c")
    assert in_names(c) == sorted(("a", i) for i in ids)
    assert in_names(b) == []
    consume_all(c)
    wait_until(lambda: set(out_states(a, "c").values()) == {"processed"}, DEADLINE, "receipts back at a")


# -- the wire, by hand --------------------------------------------------------------------------


def message(payload: bytes, ident: str, origin: str | None = None, hops: int = 0) -> bytes:
    hdr = m.Header(
        ident, "default", 5, m.now_us(), 0, len(payload), m.crc32(payload), origin=origin, hops=hops
    )
    return hdr.pack() + payload


def post(url: str, path: str, body: bytes, ctype: str, **headers: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url + path, data=body, method="POST", headers={"Content-Type": ctype, **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload(url: str, path: str, parts: list[tuple[str, bytes]], **headers: str) -> tuple[int, dict[str, Any]]:
    b = "dropr-test-boundary"
    body = (
        b"".join(
            f'--{b}\r\nContent-Disposition: form-data; name="m"; filename="{i}"\r\n'.encode()
            + b"Content-Type: application/octet-stream\r\n\r\n"
            + data
            + b"\r\n"
            for i, data in parts
        )
        + f"--{b}--\r\n".encode()
    )
    return post(url, path, body, f"multipart/form-data; boundary={b}", **headers)


def results(answer: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(r["id"], r["status"], r.get("reason", "")) for r in answer["results"]]


def test_the_destination_stores_a_trusted_relays_parts_under_their_origin(nodes: Nodes) -> None:
    c = nodes("c")
    c.config('[serve]\ntrust_relays = ["b"]\n[serve.tokens]\n"tok-b" = "b"\n"tok-x" = "x"\n')
    url = c.serve()
    as_b = {"Authorization": "Bearer tok-b"}
    as_x = {"Authorization": "Bearer tok-x"}
    code, ans = upload(
        url, "v1/messages", [("r1", message(b"1", "r1", "a", 1)), ("own", message(b"2", "own"))], **as_b
    )
    assert code == 200 and results(ans) == [("r1", "stored", ""), ("own", "stored", "")]
    code, ans = upload(
        url, "v1/messages", [("r2", message(b"3", "r2", "a", 1)), ("x1", message(b"4", "x1"))], **as_x
    )
    assert results(ans) == [
        ("r2", "refused", "c does not take messages relayed by x: add it to serve.trust_relays"),
        ("x1", "stored", ""),
    ]
    assert in_names(c) == [("a", "r1"), ("b", "own"), ("x", "x1")]
    # a resend of the relayed one is a duplicate under its origin
    _, ans = upload(url, "v1/messages", [("r1", message(b"1", "r1", "a", 1))], **as_b)
    assert results(ans) == [("r1", "duplicate", "")]
    poll = json.dumps({"ids": ["r1", "own"], "origins": ["a", ""]}).encode()
    _, ans = post(url, "v1/status", poll, "application/json", **as_b)
    assert ans["results"] == {"r1": {"state": "pending"}, "own": {"state": "pending"}}
    _, ans = post(
        url, "v1/status", json.dumps({"ids": ["r1"], "origins": ["a"]}).encode(), "application/json", **as_x
    )
    assert ans["results"]["r1"]["state"] == "unknown"
    code, ans = post(
        url, "v1/status", json.dumps({"ids": ["r1"], "origins": []}).encode(), "application/json", **as_b
    )
    assert code == 400 and ans["error"] == "bad status request: origins must be a list as long as ids"


def test_the_relay_routes_by_hand(nodes: Nodes) -> None:
    b = nodes("b")
    b.config('[serve]\nrelay = ["a"]\n[peers.c]\nurl = "http://127.0.0.1:9/"\n')
    url = b.serve()
    origin = {"X-Dropr-Origin": "a"}
    code, ans = upload(url, "v1/relay", [("m1", message(b"1", "m1"))], **origin)
    assert code == 400 and ans["error"].startswith("bad X-Dropr-To ''")
    code, ans = upload(url, "v1/relay", [("m1", message(b"1", "m1"))], **origin, **{"X-Dropr-To": "c"})
    assert results(ans) == [("m1", "stored", "")]
    assert listdir(b.spool / "out" / "c" / "queued") and in_names(b) == []
    code, ans = upload(url, "v1/relay", [("m2", message(b"2", "m2"))], **origin, **{"X-Dropr-To": "b"})
    assert results(ans) == [("m2", "stored", "")] and in_names(b) == [("a", "m2")]  # b is the destination
    bad = message(b"3", "m3")[:-1] + b"X"  # the end-to-end checksum fails
    _, ans = upload(url, "v1/relay", [("m3", bad)], **origin, **{"X-Dropr-To": "c"})
    assert results(ans) == [("m3", "refused", "checksum mismatch")]
    assert len(listdir(b.spool / "out" / "c" / "queued")) == 1 and listdir(b.spool / "tmp") == []
    poll = json.dumps({"ids": ["m1", "zz"]}).encode()
    _, ans = post(url, "v1/relay/status", poll, "application/json", **origin, **{"X-Dropr-To": "c"})
    assert ans["results"] == {"m1": {"state": "pending"}, "zz": {"state": "unknown"}}
    _, ans = post(
        url, "v1/relay/status", poll, "application/json", **{"X-Dropr-Origin": "e", "X-Dropr-To": "c"}
    )
    assert ans["results"]["m1"] == {"state": "unknown"}  # only the client that relayed it learns its state


def test_a_relay_to_a_held_peer_is_fetched_under_the_origin(nodes: Nodes) -> None:
    """a -> hub (relay) -> laptop, which nobody reaches: it fetches from hub."""
    a, hub, lap = nodes("a"), nodes("hub"), nodes("laptop")
    hub.config(
        '[serve]\nrelay = ["a"]\n[peers.laptop]\nhold = true\n'
        '[serve.tokens]\n"tok-a" = "a"\n"tok-l" = "laptop"\n'
    )
    url = hub.serve()
    lap.config(f'[peers.hub]\nurl = "{url}"\ntoken = "tok-l"\nfetch = true\n')
    a.config(f'[peers.hub]\nurl = "{url}"\ntoken = "tok-a"\n[peers.laptop]\nvia = "hub"\n' + FAST)
    a.start_sender()
    ids = [a.put(f"for the laptop {i}", "--to", "laptop") for i in range(3)]
    wait_until(lambda: len(out_states(hub, "laptop")) == 3, DEADLINE, "the messages queued at the hub")
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert in_names(lap) == sorted(("a", i) for i in ids)
    consume_all(lap)
    assert lap.send_once("--fetch", "hub").returncode == 0  # the receipts go with the next fetch
    wait_until(lambda: set(out_states(a, "laptop").values()) == {"processed"}, DEADLINE, "receipts back at a")
