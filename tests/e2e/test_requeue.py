"""dropr-ack --requeue as installed: dead letters back into the flow, inbox and outbox.

Node "a" puts to node "b"'s dropr-serve and delivers with dropr-send --once; messages
die at b (rejected, out of handler attempts) or at a (TTL, refused, max_attempts), the
cause is fixed, and --requeue brings them back. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Node, Nodes, Pair, expect_error, free_port, one_error_line, wait_until


def recv_json(b: Node, *args: str) -> list[dict[str, Any]]:
    """Claim with dropr-recv --format json; return the records (none when nothing is ready)."""
    p = b.run("dropr-recv", "--format", "json", *args)
    assert p.returncode in (0, 1), p.stderr.decode()
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


def requeue(node: Node, *args: str, input: str | None = None) -> tuple[int, list[str], str]:
    """Run dropr-ack --requeue; return its exit status, stdout lines and stderr."""
    p = node.run("dropr-ack", "--requeue", *args, input=input)
    return p.returncode, p.stdout.decode().splitlines(), p.stderr.decode()


def meta(node: Node, box: str, where: str, key: str) -> dict[str, Any]:
    """Return the record of one message: box in or out, where a channel or peer folder."""
    path = node.spool / box / where / "meta" / key
    return json.loads(path.read_text()) if path.exists() else {}


def peer_of(a: Node) -> str:
    """Return a's one outbox peer folder name."""
    [peer] = [d.name for d in (a.spool / "out").iterdir() if d.is_dir()]
    return peer


# -- the inbox: dead -> ready, counts reset -------------------------------------------------


def test_rejected_message_requeued_and_claimed_again_as_a_first_attempt(pair: Pair) -> None:
    b = pair.b
    ident, other = pair.deliver([b"poison", b"fine"])
    [claim] = recv_json(b)
    assert claim["id"] == ident and claim["attempt"] == 1
    assert b.run("dropr-ack", "--release", ident).returncode == 0
    [claim] = recv_json(b)
    assert claim["attempt"] == 2
    assert b.run("dropr-ack", "--reject", "--reason", "bad customer", ident).returncode == 0
    assert b.states("in") == {ident: "dead", other: "ready"}

    rc, out, err = requeue(b, ident)
    assert (rc, out, err) == (0, [ident], "")
    assert b.states("in") == {ident: "ready", other: "ready"}
    m = meta(b, "in", "default", f"a,{ident}")
    assert (m["returns"], m["failures"], m["requeues"]) == (0, 0, 1)
    assert m["error"] == "bad customer", "the last error stays: it says why it was dead"
    [claim] = recv_json(b)
    assert claim["id"] == ident and claim["attempt"] == 1, "the attempt count starts again"


def test_handler_out_of_attempts_requeued_runs_again(pair: Pair, tmp_path: Path) -> None:
    b = pair.b
    (ident,) = pair.deliver([b"job"])
    flag, runs = tmp_path / "fixed", tmp_path / "runs"
    handler = f"echo $DROPR_ATTEMPT >> {runs}; test -e {flag}"

    def drain() -> str | None:
        p = b.run("dropr-recv", "--exec", handler, "--once", "--max-attempts", "2", timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        return b.states("in").get(ident)

    wait_until(lambda: drain() == "dead", 20, "the handler to make the message dead")
    assert runs.read_text().split() == ["1", "2"]
    flag.touch()  # the cause is fixed
    assert requeue(b, ident) == (0, [ident], "")
    wait_until(lambda: drain() == "done", 20, "the requeued message to be handled")
    assert runs.read_text().split() == ["1", "2", "1"], "a requeued message starts at attempt 1"


def test_requeue_all_channel_takes_only_that_channel(pair: Pair) -> None:
    b = pair.b
    jobs = pair.deliver([b"j1", b"j2"], "--channel", "jobs")
    mails = pair.deliver([b"m1"], "--channel", "mail")
    for ch in ("jobs", "mail"):
        ids = [r["id"] for r in recv_json(b, "--channel", ch, "--all")]
        assert b.run("dropr-ack", "--reject", *ids).returncode == 0

    rc, out, err = requeue(b, "--all", "--channel", "jobs")
    assert (rc, sorted(out), err) == (0, sorted(jobs), "")
    assert b.states("in") == {**{i: "ready" for i in jobs}, **{i: "dead" for i in mails}}
    assert requeue(b, "--all", "--channel", "jobs") == (0, [], ""), "nothing dead there: nothing to do"
    rc, out, _ = requeue(b, "--all")
    assert (rc, out) == (0, mails)


def test_an_id_not_dead_is_an_error_for_that_id_and_the_others_still_go(pair: Pair) -> None:
    b = pair.b
    dead1, ready, dead2 = pair.deliver([b"1", b"2", b"3"])
    recv_json(b, "--all")
    assert b.run("dropr-ack", "--reject", dead1, dead2).returncode == 0
    assert b.run("dropr-ack", "--release", ready).returncode == 0

    rc, out, err = requeue(b, dead1, ready, "nosuchid", dead2)
    assert rc == 1
    assert out == [dead1, dead2]
    errs = err.splitlines()
    assert len(errs) == 2 and all(e.startswith("dropr-ack: error: ") for e in errs), err
    assert f"{ready} is not dead in the inbox" in errs[0] and "nosuchid is not dead" in errs[1]
    assert b.states("in") == {dead1: "ready", ready: "ready", dead2: "ready"}
    rc, out, err = requeue(b, "-", input=f"{dead1}\n")
    assert (rc, out) == (1, []), "requeued already: not dead"
    one_error_line(err, "dropr-ack")


def test_unknown_channel_or_peer_is_not_found(pair: Pair) -> None:
    pair.deliver([b"x"])
    expect_error(pair.b.run("dropr-ack", "--requeue", "--all", "--channel", "nope"), 1, "dropr-ack")
    expect_error(pair.a.run("dropr-ack", "--requeue", "--all", "--peer", "nope"), 1, "dropr-ack")


ALONE = "--requeue goes alone: not with --release, --reject, --delay or --reason"
WITH_REQUEUE = "--out, --all, --channel and --peer go with --requeue"
ONE_BOX = "--channel picks an inbox channel, --out and --peer the outbox: give one"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--requeue", "--release", "X"], ALONE),
        (["--requeue", "--reject", "X"], ALONE),
        (["--requeue", "--reason", "why", "X"], ALONE),
        (["--requeue", "--delay", "1s", "X"], ALONE),
        (["--out", "X"], WITH_REQUEUE),
        (["--all"], WITH_REQUEUE),
        (["--channel", "c", "X"], WITH_REQUEUE),
        (["--peer", "p", "X"], WITH_REQUEUE),
        (["--requeue", "--all", "X"], "--all requeues every dead message there; give no ids with it"),
        (["--requeue"], "no ids; give ID... or - to read them from stdin"),
        (["--requeue", "--out", "--channel", "c", "--all"], ONE_BOX),
        (["--requeue", "--peer", "p", "--channel", "c", "--all"], ONE_BOX),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_bad_combinations_are_usage_errors(nodes: Nodes, argv: list[str], words: str) -> None:
    b = nodes("b")
    assert words in expect_error(b.run("dropr-ack", *argv), 64, "dropr-ack")
    assert not (b.spool / "in").exists(), "a bad command line leaves no trace"


# -- the outbox: dead -> queued for every peer where it is dead -----------------------------


def test_dead_at_the_peer_requeued_at_both_ends_is_resent_as_duplicate_and_processed(pair: Pair) -> None:
    """Exactly once at the receiver: the resend of a message the peer has is a duplicate;
    it is sent again, polled, and processed once the peer's consumer acks it."""
    a, b = pair.a, pair.b
    (ident,) = pair.deliver([b"order"])
    recv_json(b)
    assert b.run("dropr-ack", "--reject", "--reason", "no stock", ident).returncode == 0
    wait_until(lambda: pair.send() and a.states("out") == {ident: "dead"}, 20, "the dead receipt")

    assert requeue(b, ident) == (0, [ident], "")  # at the receiver: the cause is fixed
    assert requeue(a, "--out", ident) == (0, [ident], "")  # at the sender: learn what becomes of it
    assert a.states("out") == {ident: "queued"}
    p = pair.a.send_once("-v")
    assert f"sent id={ident} peer=" in p.stderr.decode() and "duplicate" in p.stderr.decode()
    assert " count=1 " in p.stderr.decode() and " duplicate=1" in p.stderr.decode()  # the summary
    assert a.states("out") == {ident: "sent"}
    stored = [f for f in (b.spool / "in" / "default").glob(f"*/*,{ident}") if f.parent.name != "meta"]
    assert [f.parent.name for f in stored] == ["ready"], "stored once"
    [claim] = recv_json(b, "--ack")
    assert claim["id"] == ident
    wait_until(lambda: pair.send() and a.states("out") == {ident: "processed"}, 20, "the receipt")


def test_ttl_expired_requeued_gets_a_new_ttl_span_and_is_delivered(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    slow = a.put(b"late but wanted", "--to", url, "--ttl", "1s")
    quick = a.put(b"1ms", "--to", url, "--ttl", "1ms")
    time.sleep(1.05)
    a.send_once()
    assert a.states("out") == {slow: "dead", quick: "dead"}
    peer = peer_of(a)

    assert b.serve(listen=f"127.0.0.1:{port}") == url  # the cause is fixed: the peer is up
    rc, out, err = requeue(a, "--out", "--all")
    assert (rc, sorted(out), err) == (0, sorted([slow, quick]), "")
    m = meta(a, "out", peer, slow)
    assert m["attempts"] == 0 and 0 < m["deadline"] - m["requeued_at"] <= 1_000_000
    header = (a.spool / "out" / peer / "queued").glob(f"*,{slow}")
    assert b" d=" in next(header).read_bytes()[:256], "the file is not changed: the record holds the deadline"
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {slow: "sent", quick: "dead"}, "a TTL counts again from the requeue"
    assert [r["id"] for r in recv_json(b, "--all")] == [slow]


def test_refused_requeued_after_the_peer_takes_it(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    port = free_port()
    url = b.serve("--max-size", "1KiB", listen=f"127.0.0.1:{port}")
    big = a.put(b"x" * 2048, "--to", url)
    a.send_once()
    assert a.states("out") == {big: "dead"}
    b.stop_serve()
    b.serve("--max-size", "1MiB", listen=f"127.0.0.1:{port}")  # the cause is fixed
    assert requeue(a, "--out", big) == (0, [big], "")
    assert a.send_once().returncode == 0
    assert a.states("out") == {big: "sent"}
    assert [r["size"] for r in recv_json(b)] == [2048]


def test_out_of_attempts_requeued_with_attempts_reset(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    a.config("[limits]\nmax_attempts = 2\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ident = a.put(b"persistent", "--to", url)
    for _ in range(3):
        a.send_once("--now")
    assert a.states("out") == {ident: "dead"}
    assert "gave up after 2 attempts" in (a.ls(ident)[0]["error"] or "")
    b.serve(listen=f"127.0.0.1:{port}")
    assert requeue(a, "--out", ident) == (0, [ident], "")
    assert meta(a, "out", peer_of(a), ident)["attempts"] == 0
    assert a.send_once("--now").returncode == 0
    assert a.states("out") == {ident: "sent"}


def test_requeue_all_peer_takes_only_that_peer_and_multicast_once_per_id(nodes: Nodes) -> None:
    a = nodes("a")
    port1, port2 = free_port(), free_port()
    p1, p2 = f"http://127.0.0.1:{port1}/", f"http://127.0.0.1:{port2}/"
    both = a.put(b"to both", "--to", p1, "--to", p2, "--ttl", "1ms")
    only2 = a.put(b"to p2", "--to", p2, "--ttl", "1ms")
    time.sleep(0.01)
    a.send_once()
    peers = sorted(d.name for d in (a.spool / "out").iterdir())
    [name1] = [p for p in peers if f"_{port1}-" in p]
    [name2] = [p for p in peers if f"_{port2}-" in p]

    def dead_at(peer: str) -> set[str]:
        return {r["id"] for r in a.ls("-l", "--out", "--peer", peer) if r["state"] == "dead"}

    assert dead_at(name1) == {both} and dead_at(name2) == {both, only2}
    assert requeue(a, "--all", "--peer", name1) == (0, [both], "")
    assert dead_at(name1) == set() and dead_at(name2) == {both, only2}
    rc, out, _ = requeue(a, "--out", "--all")
    assert rc == 0 and sorted(out) == sorted([both, only2]), "one line per id"
    assert dead_at(name2) == set()


def test_outbox_id_not_dead_is_an_error_the_others_still_go(nodes: Nodes) -> None:
    a = nodes("a")
    url = f"http://127.0.0.1:{free_port()}/"
    dead = a.put(b"d", "--to", url, "--ttl", "1ms")
    time.sleep(0.01)
    a.send_once()
    queued = a.put(b"q", "--to", url)
    rc, out, err = requeue(a, "--out", queued, dead)
    assert (rc, out) == (1, [dead])
    assert f"{queued} is not dead in the outbox" in one_error_line(err, "dropr-ack")
    assert a.states("out") == {dead: "queued", queued: "queued"}
