"""Receipts end to end: a consumer's ack or reject at the receiver comes back to the sender.

Real nodes: "a" puts and sends, "b" (and "c") serve and consume. The sender
records `processed` or `dead` from its status polls; dropr-put --wait reports
them. Every wait polls with a deadline; only processes these tests started are
signalled, by pid.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import subprocess
import time
from typing import Any

import pytest
from helpers import Node, Nodes, Pair, command_path, wait_until


def read_line(stream: Any, timeout: float) -> bytes:
    """Read one line from a pipe within timeout (fail if it does not come)."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line within {timeout}s (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"end of stream before a full line (got {buf!r})")
        buf += chunk
    return buf


def out_states(a: Node, ident: str) -> dict[str, str]:
    """Map peer name -> outbox state of one message at a."""
    return {r["name"]: r["state"] for r in a.ls(ident) if r["box"] == "out"}


def peer_of(a: Node, url: str) -> str:
    """Return the outbox peer name a uses for a URL (from its recorded url file)."""
    for d in (a.spool / "out").iterdir():
        if (d / "url").read_text().strip() == url:
            return d.name
    raise AssertionError(f"no outbox peer for {url}")


def consume_all(b: Node) -> None:
    """Consume and ack what is ready at b with `dropr-recv | dropr-ack -`, as a user would."""
    recv, ack = shlex.quote(command_path("dropr-recv")), shlex.quote(command_path("dropr-ack"))
    p = subprocess.run(["/bin/sh", "-c", f"{recv} | {ack} -"], env=b.env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()


@pytest.fixture
def net(pair: Pair) -> tuple[Node, Node, str]:
    return pair.a, pair.b, pair.url  # the nodes fixture TERMs their processes after the test


def test_ack_at_receiver_becomes_processed_at_sender(net: tuple[Node, Node, str]) -> None:
    a, b, url = net
    ident = a.put("job", "--to", url)
    a.send_once(check=True)
    assert a.states("out") == {ident: "sent"}
    consume_all(b)
    assert b.states("in") == {ident: "done"}
    a.send_once(check=True)
    assert a.states("out") == {ident: "processed"}
    rows = [r for r in a.ls("--out") if r["count"]]
    assert [(r["state"], r["count"]) for r in rows] == [("processed", 1)]
    text = a.run("dropr-ls", "--out", check=True).stdout.decode()
    assert "processed" in text
    assert not (b.spool / "out").exists() or not os.listdir(b.spool / "out"), (
        "a receipt is never itself a message"
    )


@pytest.mark.parametrize("waiting", [999, 1001])
def test_unconsumed_messages_do_not_hold_up_later_receipts(net: tuple[Node, Node, str], waiting: int) -> None:
    """A status poll's worth (1,000) of older messages wait unconsumed at the peer: the
    receipt of a newer one, consumed, still comes back. A --once pass polls once (1,000
    names), going on from where the last pass's poll stopped: with 1,001 waiting, the
    second pass asks for the 2 names after the first 1,000; with 999, nothing comes
    after them, and it starts again from the oldest."""
    a, b, url = net
    a.run("dropr-put", "--lines", "--channel", "slow", "--to", url, input=b"x\n" * waiting, check=True)
    ident = a.put("job", "--to", url)
    a.send_once(check=True)
    consume_all(b)
    assert b.states("in")[ident] == "done"
    a.send_once(check=True)
    states = a.states("out")
    assert states.pop(ident) == "processed"
    assert len(states) == waiting and set(states.values()) == {"sent"}


def test_daemon_polls_past_unconsumed_messages(net: tuple[Node, Node, str]) -> None:
    """The daemon's polls go through every sent name, 1,000 at a time, in rounds."""
    a, b, url = net
    a.run("dropr-put", "--lines", "--channel", "slow", "--to", url, input=b"x\n" * 1001, check=True)
    ident = a.put("job", "--to", url)
    a.start_sender()
    wait_until(lambda: a.states("out").get(ident) == "sent", 60, "the daemon to deliver")
    consume_all(b)
    wait_until(lambda: a.states("out")[ident] == "processed", 60, "the receipt of the consumed message")


def test_a_daemon_started_with_only_sent_messages_polls_their_receipts(net: tuple[Node, Node, str]) -> None:
    """A sender restarted (after a kill -9, an upgrade) with messages in sent/ and nothing
    queued polled nothing: its receipt polls began only once it sent something new. Found
    by the relay's kill -9 test (#15)."""
    a, b, url = net
    ident = a.put("job", "--to", url)
    a.send_once(check=True)  # sent, no receipt yet
    consume_all(b)
    assert a.states("out") == {ident: "sent"}
    a.start_sender()  # nothing to send: only the poll can move it
    wait_until(lambda: a.states("out")[ident] == "processed", 20, "the receipt, polled at start")


def test_a_receipt_the_peer_can_no_longer_give_is_given_up_after_the_retention(
    net: tuple[Node, Node, str],
) -> None:
    """b forgets two delivered messages, as its purge does a retention period after they
    were finished, or as a lost spool would: a keeps asking while they are younger than
    its own retention, then (on the second answer past it) makes them dead, "receipt
    lost". One b still has stays sent."""
    a, b, url = net
    a.config('[limits]\nretention = "6s"\n')
    gone = [a.put(f"m{i}", "--to", url) for i in range(2)]
    kept = a.put("kept", "--to", url)
    a.send_once(check=True)
    sent_at = time.monotonic()
    ready = b.spool / "in" / "default" / "ready"
    for ident in gone:
        (name,) = [n for n in os.listdir(ready) if n.endswith(f",{ident}")]
        (ready / name).unlink()
        (b.spool / "rcv" / "a" / ident).unlink()
    a.send_once(check=True)
    assert time.monotonic() - sent_at < 6, "the first poll came too late to test the wait"
    assert a.states("out") == dict.fromkeys([*gone, kept], "sent"), "younger than the retention: asked again"
    time.sleep(max(0.0, sent_at + 6.5 - time.monotonic()))
    a.send_once(check=True)
    assert set(a.states("out").values()) == {"sent"}, "the first unknown past the retention is asked again"
    a.send_once(check=True)
    assert a.states("out") == {gone[0]: "dead", gone[1]: "dead", kept: "sent"}
    for ident in gone:
        (rec,) = [r for r in a.ls(ident) if r["box"] == "out"]
        assert "receipt lost" in rec["error"]
    consume_all(b)
    a.send_once(check=True)
    assert a.states("out")[kept] == "processed"


def test_reject_at_receiver_is_dead_with_reason_at_sender(net: tuple[Node, Node, str]) -> None:
    a, b, url = net
    ident = a.put("job", "--to", url)
    a.send_once(check=True)
    b.run("dropr-recv", check=True)
    b.run("dropr-ack", "--reject", "--reason", "no such customer 4711", ident, check=True)
    a.send_once(check=True)
    (rec,) = [r for r in a.ls(ident) if r["box"] == "out"]
    assert rec["state"] == "dead"
    assert "no such customer 4711" in rec["error"]
    listing = a.run("dropr-ls", "--out", "--state", "dead", "-l", check=True).stdout.decode()
    (line,) = listing.splitlines()
    assert ident in line and "no such customer 4711" in line


def test_multicast_is_processed_only_when_every_destination_is(
    nodes: Nodes,
) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    ub, uc = b.serve(), c.serve()
    put = a.start(
        "dropr-put", "--to", ub, "--to", uc, "--id", "order-4711", "--wait", "--timeout", "60s",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert put.stdin is not None and put.stdout is not None
    put.stdin.write(b"multicast job")
    put.stdin.close()
    ident = read_line(put.stdout, 20).decode().strip()
    assert ident == "order-4711"
    a.send_once(check=True)
    pb, pc = peer_of(a, ub), peer_of(a, uc)
    assert out_states(a, ident) == {pb: "sent", pc: "sent"}
    assert put.poll() is None

    b.run("dropr-recv", check=True)
    b.run("dropr-ack", ident, check=True)
    a.send_once(check=True)
    assert out_states(a, ident) == {pb: "processed", pc: "sent"}
    # dropr-put --wait rechecks at least every second: give it more than one look
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert put.poll() is None, "dropr-put --wait returned before every destination processed"
        time.sleep(0.05)

    c.run("dropr-recv", check=True)
    c.run("dropr-ack", ident, check=True)
    t0 = time.monotonic()
    a.send_once(check=True)
    assert out_states(a, ident) == {pb: "processed", pc: "processed"}
    assert put.wait(10) == 0
    assert time.monotonic() - t0 < 3, "dropr-put --wait is woken when the receipt is recorded"


def test_put_wait_with_running_sender_and_handler(net: tuple[Node, Node, str]) -> None:
    a, b, url = net
    a.start_sender()
    b.start("dropr-recv", "--exec", "true", stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    p = a.run("dropr-put", "--to", url, "--wait", "--timeout", "20s", input=b"job", timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.decode()
    assert b"no dropr-send" not in p.stderr
    ident = p.stdout.decode().strip()
    assert a.states("out") == {ident: "processed"}
    assert b.states("in") == {ident: "done"}
    assert took < 15, took


def test_put_wait_without_sender_warns_at_once_and_times_out(net: tuple[Node, Node, str]) -> None:
    a, _, url = net
    t0 = time.monotonic()
    put = a.start(
        "dropr-put", "--to", url, "--wait", "--timeout", "1s",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert put.stdin is not None and put.stderr is not None
    put.stdin.write(b"job")
    put.stdin.close()
    warning = read_line(put.stderr, 10).decode()
    warned = time.monotonic() - t0
    assert put.poll() is None, "the warning must come at once, not at the timeout"
    assert "warning" in warning and "dropr-send" in warning and "running" in warning, warning
    put.wait(30)
    took = time.monotonic() - t0
    assert put.stdout is not None
    out = put.stdout.read()
    assert put.returncode == 75
    assert took >= 1.0 and warned < took
    ident = out.decode().strip()
    assert a.states("out") == {ident: "queued"}, "the put itself succeeded"


def test_dead_outcome_makes_put_wait_exit_1(net: tuple[Node, Node, str]) -> None:
    a, b, url = net
    a.start_sender()
    handler = "echo 'cannot parse order' >&2; exit 2"
    b.start("dropr-recv", "--exec", handler, "--max-attempts", "1", stderr=subprocess.DEVNULL)
    p = a.run("dropr-put", "--to", url, "--wait", "--timeout", "30s", input=b"garbage", timeout=60)
    assert p.returncode == 1, p.stderr.decode()
    ident = p.stdout.decode().strip()
    (rec,) = [r for r in a.ls(ident) if r["box"] == "out"]
    assert rec["state"] == "dead"
    assert "exit status 2" in rec["error"] and "cannot parse order" in rec["error"]


def test_idle_sender_stops_on_term(net: tuple[Node, Node, str]) -> None:
    a, b, url = net
    sender = a.start_sender()
    b.start("dropr-recv", "--exec", "true", stderr=subprocess.DEVNULL)
    p = a.run("dropr-put", "--to", url, "--wait", "--timeout", "20s", input=b"job", timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert set(a.states("out").values()) == {"processed"}
    # Nothing queued, nothing awaiting a receipt: after its last status poll (due 0.2 s
    # after the receipt) the daemon sleeps. Not a synchronisation: the scenario is
    # "TERM an idle sender", and idle it is after this pause.
    time.sleep(1.0)
    t0 = time.monotonic()
    sender.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        sender.wait(5)
    took = time.monotonic() - t0
    assert sender.returncode == 0, f"dropr-send still running {took:.1f}s after TERM"


def test_a_node_that_only_receives_purges_after_the_retention(nodes: Nodes) -> None:
    """Only dropr-send purged: a node running just dropr-serve and consumers kept its
    done entries (and their rcv/ index entries) for good."""
    a, b = nodes("a"), nodes("b")
    b.config('[limits]\nretention = "1s"\n')
    url = b.serve()
    ids = [a.put(f"m{i}", "--to", url) for i in range(3)]
    a.send_once(check=True)
    p = b.run("dropr-recv", "-n", "2", "--ack")
    assert p.returncode == 0, p.stderr.decode()
    done = b.spool / "in" / "default" / "done"
    rcv = b.spool / "rcv" / "a"
    assert len(os.listdir(done)) == 2 and len(os.listdir(rcv)) == 3
    stamp = b.spool / "lock" / "purged"
    wait_until(stamp.exists, 20, "dropr-serve to look whether a purge is due (nothing old yet)")
    b.stop_serve()
    time.sleep(1.5)  # past the retention
    stamp.unlink()  # as if the last purge was long ago
    b.serve()
    # a purge unlinks done/ entries first, then their rcv/ entries: wait for both
    wait_until(lambda: not os.listdir(done) and len(os.listdir(rcv)) <= 1, 20, "dropr-serve to purge")
    assert len(os.listdir(rcv)) == 1, "the unconsumed message keeps its index entry"
    assert len(os.listdir(b.spool / "in" / "default" / "ready")) == 1
    assert set(ids) >= {r["id"] for r in b.ls("-l", "--in")}
