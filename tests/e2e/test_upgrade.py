"""The upgrade test: a spool written by an older dropr is read, sent and consumed by this one.

tests/data/spool-v1/ was made by the code before the spool became a package (see
tests/data/make_spool_v1.py): outbox messages queued, sent, processed and dead (refused,
dead at the peer, out of attempts, out of time) to peers b and c, a multicast, a TTL,
caller-chosen ids, priorities and a second channel; an inbox with messages ready, wait,
claimed (a lease until 2100), done and dead, received from node w. Each test works on a
fresh faithful copy (folders, hard links, mtimes: helpers.restore_spool) through the
installed commands. Keep this file, and add a fixture, when the on-disk format changes.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Node, Nodes, restore_spool

FIXTURE = "spool-v1"
Key = tuple[str, str, str]  # (box, peer or channel, id)
# why each dead message died, by payload (the start of it for the refused one)
DEAD_WHY = {
    "out dead at peer": "dead at peer: no such customer",
    "out refused": "refused by peer: too large: 2012 bytes, limit 1024",
    "out dead attempts": "gave up after 3 attempts",
    "out dead ttl": "ttl expired before delivery",
    "in default 1": "cannot parse",
}


class Old:
    """The restored spool as node a, and what its manifest says is in it."""

    def __init__(self, a: Node, manifest: dict[str, Any]) -> None:
        self.a = a
        self.expect: dict[str, dict[str, dict[str, dict[str, str]]]] = manifest["expect"]

    def states(self) -> dict[Key, str]:
        """Map (box, dest, id) -> state for every message the fixture holds."""
        return {(box, dest, i): r["state"] for box, dest, i, r in self.records()}

    def records(self) -> Iterator[tuple[str, str, str, dict[str, str]]]:
        for box, dests in self.expect.items():
            for dest, msgs in dests.items():
                for ident, rec in msgs.items():
                    yield box, dest, ident, rec

    def ids(self, box: str, dest: str, state: str) -> list[str]:
        """The ids in one state of a peer's outbox or a channel's inbox, in name order."""
        msgs = self.expect[box][dest]
        return [i for i, r in sorted(msgs.items(), key=lambda kv: kv[1]["name"]) if r["state"] == state]

    def payload(self, box: str, dest: str, ident: str) -> str:
        return self.expect[box][dest][ident]["payload"]

    def config(self, url_b: str, url_c: str) -> None:
        """Point peers b and c of the old config at this test's servers."""
        self.a.config(
            f'\n[peers.b]\nurl = "{url_b}"\n\n[peers.c]\nurl = "{url_c}"\n\n'
            '[limits]\nmax_attempts = 3\nretention = "3650d"\n'
        )


@pytest.fixture
def old(nodes: Nodes, tmp_path: Path) -> Old:
    manifest = restore_spool(FIXTURE, tmp_path / "a")
    return Old(nodes("a"), manifest)


def listed(a: Node, *args: str) -> dict[Key, str]:
    """Map (box, dest, id) -> state from dropr-ls --json -l."""
    return {(r["box"], r["name"], r["id"]): r["state"] for r in a.ls("-l", *args)}


def inbox_ids(node: Node) -> Counter[tuple[str, str]]:
    """Count (channel, id) over every inbox record of a node."""
    return Counter((r["name"], r["id"]) for r in node.ls("-l", "--in"))


def test_fixture_is_faithful(old: Old) -> None:
    """The copy has the hard links, far leases and folders that git does not keep."""
    spool = old.a.spool
    (mc,) = [i for i in old.ids("out", "c", "queued") if old.expect["out"]["b"][i]["state"] == "processed"]
    assert (spool / "out/b/processed" / old.expect["out"]["b"][mc]["name"]).stat().st_nlink == 2
    (claimed,) = old.ids("in", "default", "claimed")
    path = spool / "in/default/claimed" / old.expect["in"]["default"][claimed]["name"]
    assert path.stat().st_nlink == 2  # and its rcv/w entry
    assert path.stat().st_mtime > 4e9
    assert (spool / "rcv/w" / claimed).samefile(path)
    assert (spool / "tmp").is_dir() and (spool / "wake").is_dir() and (spool / "corrupt").is_dir()


def test_ls_lists_every_message_in_its_state(old: Old) -> None:
    """dropr-ls: the summary (text and JSON), -l (text and JSON) and ids show every state."""
    a, want = old.a, old.states()
    assert len(want) == 22 and {s for s in want.values()} == {
        "queued", "sent", "processed", "dead", "ready", "wait", "claimed", "done",
    }  # fmt: skip
    assert listed(a) == want
    records = {(r["box"], r["name"], r["id"]): r for r in a.ls("-l")}
    for (box, dest, ident), rec in records.items():
        payload = old.payload(box, dest, ident)
        assert rec["size"] == len(payload.encode())
        assert rec["priority"] == int(old.expect[box][dest][ident]["name"][0])
        why = [w for p, w in DEAD_WHY.items() if payload.startswith(p)]
        if rec["state"] == "dead":
            assert [rec["error"]] == why, (payload, rec)
    (mc,) = [i for i in old.ids("out", "c", "queued") if old.expect["out"]["b"][i]["state"] == "processed"]
    assert records[("out", "c", mc)]["attempts"] == 2
    assert {(r["box"], r["name"]): r["state"] for r in a.ls(mc)} == {
        ("out", "b"): "processed",
        ("out", "c"): "queued",
    }
    assert {r["state"] for r in a.ls("order-7", "job-1", "w-chosen-1", "w-job-1")} == {
        "queued", "sent", "ready", "done",
    }  # fmt: skip

    counts = Counter((box, dest, state) for (box, dest, _), state in want.items())
    rows = {(r["box"], r["name"], r["state"]): r["count"] for r in a.ls() if r["count"]}
    assert rows == counts
    text = a.run("dropr-ls", check=True).stdout.decode().splitlines()
    table = {tuple(ln.split()[:3]): int(ln.split()[3]) for ln in text if ln.split()[:1] in (["out"], ["in"])}
    assert table == counts
    assert [ln.split()[:2] for ln in text if ln.split()[:1] in (["b"], ["c"])] == [["b", "4"], ["c", "2"]]
    lines = a.run("dropr-ls", "-l", check=True).stdout.decode().splitlines()
    assert {(f[1], f[2], f[0]): f[3] for f in map(str.split, lines)} == want


def test_send_delivers_the_queued_messages_once(old: Old, nodes: Nodes) -> None:
    """dropr-send --once delivers what is queued (the multicast to both peers), each once."""
    a, b, c = old.a, nodes("b"), nodes("c")
    old.config(b.serve(), c.serve())
    a.send_once(check=True)  # exit 0: every queued message sent
    for peer, node in (("b", b), ("c", c)):
        queued = old.ids("out", peer, "queued")
        assert len(queued) == (4 if peer == "b" else 2)
        got = inbox_ids(node)
        assert sorted(i for _, i in got) == sorted(queued), peer
        assert set(got.values()) == {1}
        for r in node.ls("-l", "--in"):
            assert Path(r["path"]).read_text() == old.payload("out", peer, r["id"])
            assert r["priority"] == int(old.expect["out"][peer][r["id"]]["name"][0])
            assert r["origin"] == "a"
        channels = {r["id"]: r["name"] for r in node.ls("-l", "--in")}
        for i in queued:
            want = "jobs" if old.payload("out", peer, i) == "out queued ttl" else "default"
            assert channels[i] == want
        now = listed(a, "--out", "--peer", peer)
        assert {i: now[("out", peer, i)] for i in queued} == dict.fromkeys(queued, "sent")
    now = listed(a)
    for key, state in old.states().items():
        if state in ("processed", "dead") or key[0] == "in":
            assert now[key] == state, key

    a.send_once(check=True)
    for node, n in ((b, 4), (c, 2)):
        assert set(inbox_ids(node).values()) == {1} and sum(inbox_ids(node).values()) == n


def test_recv_and_ack_consume_the_ready_messages(old: Old) -> None:
    """dropr-recv hands out the ready messages in order; dropr-ack makes them done."""
    a = old.a
    for channel in ("default", "jobs"):
        ready = old.ids("in", channel, "ready")
        assert ready
        p = a.run("dropr-recv", "--all", "--channel", channel, "--format", "json", check=True)
        recs = [json.loads(ln) for ln in p.stdout.decode().splitlines()]
        assert [r["id"] for r in recs] == ready  # priority, then the origin's order
        for r in recs:
            assert Path(r["path"]).read_text() == old.payload("in", channel, r["id"])
            assert r["origin"] == "w" and r["channel"] == channel
        ack = a.run("dropr-ack", "-", input="".join(f"{r['id']}\n" for r in recs))
        assert ack.returncode == 0, ack.stderr.decode()
    want = {k: ("done" if s == "ready" else s) for k, s in old.states().items()}
    assert listed(a) == want
    none = a.run("dropr-recv")  # the claimed lease and the wait due time are in 2100
    assert none.returncode == 1 and none.stdout == b""


def test_received_ids_are_answered_duplicate(old: Old, nodes: Nodes) -> None:
    """The exactly-once index rcv/ survives: w sending its chosen ids again stores nothing."""
    a, w = old.a, nodes("w")
    w.config(f'\n[peers.a]\nurl = "{a.serve()}"\n')
    # two chosen ids (rcv/w/ID a symlink), and one generated id in each inbox state (rcv/w/ID
    # a hard link of the message); a generated id given to --id is sent as it is
    chosen = {"w-chosen-1": "default", "w-job-1": "jobs"}
    for state in ("ready", "wait", "claimed", "done", "dead"):
        chosen[next(i for i in old.ids("in", "default", state) if not i.startswith("w-"))] = "default"
    for ident, channel in chosen.items():
        assert w.put("sent again", "--to", "a", "--id", ident, "--channel", channel) == ident
    p = w.send_once("-v", check=True)
    for ident in chosen:
        assert f"dropr-send: sent id={ident} peer=a duplicate" in p.stderr.decode().splitlines()
    assert listed(a) == old.states()
    for r in a.ls("-l", "--in"):
        assert Path(r["path"]).read_text() == old.payload("in", r["name"], r["id"])


def test_put_of_an_existing_caller_id_is_a_noop(old: Old) -> None:
    """The ids/ index survives: dropr-put --id of an id in the outbox changes nothing."""
    a = old.a
    before = a.ls("-l", "--out")
    links = {i: (a.spool / "ids" / i).readlink() for i in ("order-7", "job-1")}
    for ident in links:  # order-7 is queued, job-1 sent
        p = a.run("dropr-put", "--to", "b", "--id", ident, input="other payload")
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.decode().split() == [ident]
    assert a.ls("-l", "--out") == before
    assert {i: (a.spool / "ids" / i).readlink() for i in links} == links


@pytest.mark.skipif(
    importlib.util.find_spec("dropr.groups") is None, reason="the peer groups of #15 are not here yet"
)
def test_a_peer_that_becomes_a_group_keeps_its_messages_flowing(old: Old, nodes: Nodes) -> None:
    """Peer b of the old spool becomes a group (urls = [b, b2]): what was queued for b goes to
    the first member, b, each message once and nothing to b2; what was sent, processed or
    dead before stays so (dropr.7, NETWORKS OF HOSTS: out/b/ becomes the group's folder)."""
    a, b, b2, c = old.a, nodes("b"), nodes("b2"), nodes("c")
    url_b, url_b2, url_c = b.serve(), b2.serve(), c.serve()
    a.config(
        f'\n[peers.b]\nurls = ["{url_b}", "{url_b2}"]\n\n[peers.c]\nurl = "{url_c}"\n\n'
        '[limits]\nmax_attempts = 3\nretention = "3650d"\n'
    )
    a.send_once(check=True)
    queued = old.ids("out", "b", "queued")
    got = inbox_ids(b)
    assert sorted(i for _, i in got) == sorted(queued) and set(got.values()) == {1}
    assert inbox_ids(b2) == Counter()
    now: dict[str, str] = {}
    for r in a.ls("-l", "--out"):
        if r["id"] in old.expect["out"]["b"] and r["name"] != "c":
            assert r["id"] not in now, f"{r['id']} is in two of b's folders: {r}"
            now[r["id"]] = r["state"]
    before = {i: rec["state"] for i, rec in old.expect["out"]["b"].items()}
    assert now == {i: ("sent" if s == "queued" else s) for i, s in before.items()}
