"""Peer groups with real processes on 127.0.0.1: failover, spread, --key, failover_after.

Node a delivers to a group of members m1, m2 (and m3), each a real dropr-serve. After
every test, every member's inbox is counted: a message is stored at two members only
where send.failover_after passed while its first member failed mid-request.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Node, Nodes, alive, children, free_port, listdir, wait_until

FAST = 'backoff_min = "200ms"\nbackoff_max = "400ms"\n'


def group_config(a: Node, urls: list[str], mode: str = "failover", send: str = FAST) -> None:
    quoted = ", ".join(f'"{u}"' for u in urls)
    a.config(f'[peers.g]\nurls = [{quoted}]\nmode = "{mode}"\n[send]\n{send}')


def members(nodes: Nodes, n: int) -> list[Node]:
    """Start n member nodes, each serving on a fixed loopback port (so it can come back)."""
    out = []
    for i in range(1, n + 1):
        node = nodes(f"m{i}")
        node.serve(listen=f"127.0.0.1:{free_port()}")
        out.append(node)
    return out


def stored(node: Node) -> list[str]:
    """Return the ids in a member's inbox (every state), origin a."""
    ids = []
    ch = node.spool / "in" / "default"
    for state in ("ready", "wait", "claimed", "done", "dead"):
        ids += [n.split(",")[2] for n in listdir(ch / state)]
    return ids


def where(ms: list[Node]) -> dict[str, list[str]]:
    """Map id -> the members whose inbox holds it."""
    out: dict[str, list[str]] = {}
    for node in ms:
        for i in stored(node):
            out.setdefault(i, []).append(node.name)
    return out


def once_each(ms: list[Node], ids: list[str]) -> dict[str, list[str]]:
    """Assert every id is stored at exactly one member; return where."""
    w = where(ms)
    assert sorted(w) == sorted(ids), (len(w), len(ids))
    twice = {i: at for i, at in w.items() if len(at) > 1}
    assert not twice, twice
    return w


def put_lines(a: Node, n: int, *args: str) -> list[str]:
    data = "".join(f"message {i}\n" for i in range(n))
    p = a.run("dropr-put", "--lines", "--to", "g", *args, input=data, check=True)
    ids = p.stdout.decode().split()
    assert len(ids) == n
    return ids


def kill_serve(node: Node) -> None:
    """kill -9 a member's dropr-serve and its workers (by pid)."""
    proc = node.serve_proc
    assert proc is not None
    kids = children(proc.pid)
    for pid in [proc.pid, *kids]:
        os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not any(alive(k) for k in kids), 10, "the workers to die")
    node.serve_proc = None


def restart_serve(node: Node) -> None:
    port = node.url.rsplit(":", 1)[1].strip("/")
    node.serve(listen=f"127.0.0.1:{port}")


def test_failover_first_member_down_then_back(nodes: Nodes) -> None:
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url])
    m1.stop_serve()
    first = put_lines(a, 20)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    w = once_each([m1, m2], first)
    assert set(sum(w.values(), [])) == {"m2"}  # the first member was down: all at the second
    restart_serve(m1)
    time.sleep(0.5)  # its backoff (200-400 ms) is over: a pass probes it
    assert a.send_once().returncode == 0
    second = put_lines(a, 20)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    w = once_each([m1, m2], first + second)
    assert {w[i][0] for i in second} == {"m1"}  # back: the first member takes new messages again
    ls = a.ls("--out")
    assert not [r for r in ls if r["name"] == "g" and r["state"] == "queued" and r["count"]]


def test_failover_daemon_member_killed_and_back(nodes: Nodes) -> None:
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url])
    a.start_sender()
    ids = put_lines(a, 50)
    wait_until(lambda: len(where([m1, m2])) == 50, 30, "the first 50 stored")
    assert set(sum(where([m1, m2]).values(), [])) == {"m1"}
    kill_serve(m1)
    ids += put_lines(a, 50)
    wait_until(lambda: len(where([m1, m2])) == 100, 30, "the next 50 stored at m2")
    restart_serve(m1)
    state = a.spool / "out" / member(a, m1) / "peer.json"
    wait_until(lambda: json.loads(state.read_text()).get("failures") == 0, 30, "m1 probed healthy")
    late = put_lines(a, 10)
    wait_until(lambda: set(late) <= set(stored(m1)) | set(stored(m2)), 30, "the late ones stored")
    assert set(late) <= set(stored(m1)), "the first member takes new messages again once it answers"
    once_each([m1, m2], ids + late)


def member(a: Node, m: Node) -> str:
    from dropr.config import member_name

    return member_name("g", m.url)


def test_spread_and_key_stickiness(nodes: Nodes) -> None:
    a = nodes("a")
    ms = members(nodes, 3)
    group_config(a, [m.url for m in ms], mode="spread")
    a.start_sender("--batch", "5")
    plain = put_lines(a, 60)
    keyed = {k: put_lines(a, 8, "--key", k) for k in ("alpha", "beta", "gamma", "delta")}
    every = plain + sum(keyed.values(), [])
    wait_until(lambda: len(where(ms)) == len(every), 30, "all stored")
    w = once_each(ms, every)
    counts = {m.name: sum(1 for i in plain if w[i] == [m.name]) for m in ms}
    assert all(c > 0 for c in counts.values()), counts  # spread: every member took some
    for k, ids in keyed.items():
        assert len({w[i][0] for i in ids}) == 1, (k, [w[i] for i in ids])  # one key, one member
    # the same key goes to the same member again, put by another dropr-put
    again = put_lines(a, 5, "--key", "alpha")
    wait_until(lambda: set(again) <= set(where(ms)), 30, "stored")
    assert {where(ms)[i][0] for i in again} == {w[keyed["alpha"][0]][0]}


def test_key_moves_only_while_its_member_is_down(nodes: Nodes) -> None:
    a = nodes("a")
    ms = members(nodes, 3)
    group_config(a, [m.url for m in ms], mode="spread")
    ids = put_lines(a, 3, "--key", "k1")
    assert a.send_once().returncode == 0
    [home] = {at[0] for at in once_each(ms, ids).values()}
    down = next(m for m in ms if m.name == home)
    down.stop_serve()
    moved = put_lines(a, 3, "--key", "k1")
    assert a.send_once().returncode == 0
    w = once_each(ms, ids + moved)
    [elsewhere] = {w[i][0] for i in moved}
    assert elsewhere != home
    restart_serve(down)
    time.sleep(0.5)
    assert a.send_once().returncode == 0  # probes it
    back = put_lines(a, 3, "--key", "k1")
    assert a.send_once().returncode == 0
    w = once_each(ms, ids + moved + back)
    assert {w[i][0] for i in back} == {home}


@pytest.mark.slow
def test_pinned_after_ambiguous_failure_move_only_after_failover_after(nodes: Nodes) -> None:
    """m1 stops mid-request (SIGSTOP, then kill -9): its batch is pinned there; m2 gets new
    messages at once but the pinned ones only once m1 has failed for failover_after."""
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url], send=FAST + 'failover_after = "3s"\ntimeout = "30s"\n')
    assert m1.serve_proc is not None
    stopped = [m1.serve_proc.pid, *children(m1.serve_proc.pid)]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    a.start_sender()
    pinned = put_lines(a, 5)
    folder = a.spool / "out" / member(a, m1)
    wait_until(lambda: len(listdir(folder / "queued")) == 5, 10, "the batch assigned to m1")
    time.sleep(0.3)  # the upload is on its way into the stopped server
    for pid in stopped:
        os.kill(pid, signal.SIGKILL)
    m1.serve_proc.wait(10)
    m1.serve_proc = None
    killed = time.monotonic()
    new = put_lines(a, 5)
    wait_until(lambda: set(new) <= set(stored(m2)), 10, "new messages at m2")
    assert not set(pinned) & set(stored(m2)), "a pinned message went to m2 before failover_after"
    pins = [json.loads((folder / "meta" / i).read_text()).get("pinned_at") for i in pinned]
    assert all(pins), pins
    wait_until(lambda: set(pinned) <= set(stored(m2)), 20, "the pinned ones at m2 after failover_after")
    assert time.monotonic() - killed >= 2.5  # failing_since is the failure, just after the kill
    once_each([m1, m2], pinned + new)
    assert not listdir(folder / "queued")
    wait_until(lambda: all(a.ls(i)[0]["state"] == "sent" for i in pinned), 10, "all sent")


def test_no_message_at_two_members_without_failover_after(nodes: Nodes) -> None:
    """Members fail and come back while messages flow; failover_after is long: each message
    is stored at exactly one member."""
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url], mode="spread", send=FAST + 'failover_after = "1h"\n')
    a.start_sender("--batch", "20")
    ids = put_lines(a, 200)
    m2.stop_serve()
    ids += put_lines(a, 200)
    restart_serve(m2)
    m1.stop_serve()
    ids += put_lines(a, 200)
    restart_serve(m1)
    wait_until(lambda: len(where([m1, m2])) == len(ids), 60, "all stored")
    once_each([m1, m2], ids)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_of_members_mid_stream_stores_each_message_at_one_member(nodes: Nodes, seed: int) -> None:
    """Members killed -9 at random moments while batches flow (some stored, their answer
    lost: pinned), and restarted; failover_after is long: never at two members."""
    rng = random.Random(seed)
    a = nodes("a")
    ms = members(nodes, 2)
    group_config(a, [m.url for m in ms], mode="spread", send=FAST + 'failover_after = "1h"\n')
    a.start_sender("--batch", "50")
    ids: list[str] = []
    for victim in (ms[0], ms[1], ms[0]):
        ids += put_lines(a, 400)
        time.sleep(rng.uniform(0.0, 0.3))
        kill_serve(victim)
        time.sleep(rng.uniform(0.1, 0.5))
        restart_serve(victim)
    wait_until(lambda: len(where(ms)) == len(ids), 90, "every message stored")
    once_each(ms, ids)
    wait_until(lambda: not any(listdir(a.spool / "out" / f / "queued") for f in os.listdir(a.spool / "out")),
               30, "every queue empty")  # fmt: skip


def test_dropr_ls_member_rows(nodes: Nodes, tmp_path: Path) -> None:
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url])
    m1.stop_serve()
    put_lines(a, 4)
    assert a.send_once().returncode == 0
    p = a.run("dropr-ls", "--out", check=True)
    text = p.stdout.decode()
    assert m1.url in text and m2.url in text, text
    out = a.run("dropr-ls", "--json", "--out", check=True).stdout.decode()
    rows = [json.loads(x) for x in out.splitlines()]
    assert {r["member"] for r in rows} >= {"", m1.url, m2.url}, rows
    assert all(r["name"] == "g" for r in rows), rows
    prom = a.run("dropr-ls", "--prom", check=True).stdout.decode()
    assert f'member="{m1.url}"' in prom
    assert a.run("dropr-send", "--once", "--peer", "g").returncode == 0


def test_put_wait_and_requeue_cover_the_members(nodes: Nodes) -> None:
    a = nodes("a")
    m1, m2 = members(nodes, 2)
    group_config(a, [m1.url, m2.url])
    m1.stop_serve()
    a.start_sender()
    waiting = a.start("dropr-put", "--to", "g", "--wait", "--timeout", "60s", stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE)  # fmt: skip
    assert waiting.stdin is not None and waiting.stdout is not None
    waiting.stdin.write(b"job")
    waiting.stdin.close()
    ident = waiting.stdout.readline().decode().strip()
    wait_until(lambda: ident in stored(m2), 30, "stored at m2")
    assert waiting.poll() is None  # not processed yet
    m2.run("dropr-recv", "--ack", check=True)
    assert waiting.wait(30) == 0
    assert where([m1, m2]) == {ident: ["m2"]}
    [rec] = a.ls(ident)
    assert rec["state"] == "processed" and rec["name"] == member(a, m2)
    # a message dead at a member is requeued there by --peer GROUP
    m2.stop_serve()
    p = a.run("dropr-put", "--to", "g", "--ttl", "1s", input=b"late")
    [late] = p.stdout.decode().split()
    wait_until(lambda: a.ls(late)[0]["state"] == "dead", 20, "the TTL to kill it")
    restart_serve(m2)
    p = a.run("dropr-ack", "--requeue", "--out", "--peer", "g", late, check=True)
    assert p.stdout.decode().split() == [late]
    wait_until(lambda: late in where([m1, m2]), 30, "the requeued message stored")
    once_each([m1, m2], [ident, late])


def test_send_peer_group_delivers_the_group_only(nodes: Nodes) -> None:
    a = nodes("a")
    m1, m2, other = members(nodes, 3)
    quoted = f'"{m1.url}", "{m2.url}"'
    a.config(f'[peers.g]\nurls = [{quoted}]\n[peers.other]\nurl = "{other.url}"\n[send]\n{FAST}')
    ids = put_lines(a, 5)
    a.run("dropr-put", "--lines", "--to", "other", input="x\ny\n", check=True)
    p = a.run("dropr-send", "--once", "--peer", "g")
    assert p.returncode == 0, p.stderr.decode()
    once_each([m1, m2], ids)
    assert stored(other) == []
    assert len(listdir(a.spool / "out" / "other" / "queued")) == 2
