"""A Hypothesis state machine over the spool: every transition, crashes included.

The model says in which state each message is, per destination peer (outbox)
and per received (origin, id) (inbox); after every step the spool on disk must
agree exactly: each message in one state per destination, nothing lost,
nothing extra, payloads intact, duplicates never stored twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import pytest
from dropr import message as m
from dropr.config import Config, Peer
from dropr.report import spool_bytes
from dropr.spool import IN_STATES, OUT_STATES, Spool
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

PEERS = {"a": Peer("a", "http://127.0.0.1:9/a/"), "b": Peer("b", "http://127.0.0.1:9/b/")}
CHANNELS = ["default", "jobs"]
ORIGINS = ["web1", "web2"]
CALLER_IDS = ["order-1", "order-2", "order-3"]
INBOX_IDS = ["m1", "m2", "m3", "m4", "m5", "m6"]
LEASE = 3600.0
QUOTA = Config({"limits": {"quota": "1TiB"}})  # every step keeps the quota's running total (#17)

payloads = st.binary(max_size=64)
peer_sets = st.sampled_from([("a",), ("b",), ("a", "b")])


@dataclass
class OutMsg:
    payload: bytes
    name: str
    states: dict[str, str] = field(default_factory=dict)  # peer -> state


@dataclass
class InMsg:
    payload: bytes
    channel: str
    state: str
    name: str = ""
    expired: bool = False  # claimed, lease backdated, not yet swept


class SpoolMachine(RuleBasedStateMachine):
    """Drive one spool through random transitions and check it against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="dropr-machine-")
        self.sp = Spool(os.path.join(self.root, "spool"), QUOTA)
        self.out: dict[str, OutMsg] = {}
        self.inbox: dict[tuple[str, str], InMsg] = {}
        self.abandoned = 0  # tmp files of crashed putters

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @initialize()
    def fresh(self) -> None:
        assert self.sp.out_peers() == []

    # -- outbox ---------------------------------------------------------------

    @rule(dests=peer_sets, bodies=st.lists(payloads, min_size=1, max_size=6), prio=st.integers(0, 9))
    def put(self, dests: tuple[str, ...], bodies: list[bytes], prio: int) -> None:
        batch = self.sp.batch([PEERS[p] for p in dests], priority=prio)
        for b in bodies:
            batch.add(b)
        ids = batch.commit()
        assert len(ids) == len(bodies) == len(set(ids))
        for ident, body in zip(ids, bodies, strict=True):
            assert ident not in self.out
            self._record_put(ident, body, dests)

    @rule(dests=peer_sets, ident=st.sampled_from(CALLER_IDS), body=payloads)
    def put_caller_id(self, dests: tuple[str, ...], ident: str, body: bytes) -> None:
        batch = self.sp.batch([PEERS[p] for p in dests])
        batch.add(body, ident)
        assert batch.commit() == [ident]
        if ident not in self.out:  # else: idempotent no-op
            self._record_put(ident, body, dests)

    def _record_put(self, ident: str, body: bytes, dests: tuple[str, ...]) -> None:
        found = self.sp.find_out(ident)
        assert sorted(p for p, _, _ in found) == sorted(dests)
        self.out[ident] = OutMsg(body, found[0][2], {p: "queued" for p in dests})

    @rule(body=payloads)
    def crash_mid_put(self, body: bytes) -> None:
        batch = self.sp.batch([PEERS["a"]])
        batch.add(body)
        for _, _, _, fd in batch.pending:  # the process dies: fds close, tmp stays
            if fd >= 0:
                os.close(fd)
        batch.pending = []
        self.abandoned += 1

    def _out_pick(self, data: st.DataObject, state: str | tuple[str, ...]) -> tuple[str, str] | None:
        states = (state,) if isinstance(state, str) else state
        choices = sorted((i, p) for i, msg in self.out.items() for p, s in msg.states.items() if s in states)
        return data.draw(st.sampled_from(choices)) if choices else None

    def _out_step(self, data: st.DataObject, src: str | tuple[str, ...], dst: str) -> None:
        pick = self._out_pick(data, src)
        if pick is None:
            return
        ident, peer = pick
        msg = self.out[ident]
        if dst == "dead":
            assert self.sp.kill(peer, [msg.name], "refused for good", state=msg.states[peer]) == 1
        elif dst == "sent":
            assert self.sp.mark_sent(peer, [msg.name]) == 1
        else:
            assert self.sp.mark_processed(peer, [msg.name]) == 1
        msg.states[peer] = dst

    @rule(data=st.data())
    def mark_sent(self, data: st.DataObject) -> None:
        self._out_step(data, "queued", "sent")

    @rule(data=st.data())
    def mark_processed(self, data: st.DataObject) -> None:
        self._out_step(data, "sent", "processed")

    @rule(data=st.data())
    def mark_dead(self, data: st.DataObject) -> None:
        self._out_step(data, ("queued", "sent"), "dead")

    @rule(data=st.data())
    def requeue_out(self, data: st.DataObject) -> None:
        """dropr-ack --requeue --out: a dead entry back to queued; any other state is left."""
        pick = self._out_pick(data, ("queued", "sent", "processed", "dead"))
        if pick is None:
            return
        ident, peer = pick
        msg = self.out[ident]
        was = msg.states[peer]
        assert self.sp.outbox.requeue(peer, [msg.name]) == ([msg.name] if was == "dead" else [])
        if was == "dead":
            msg.states[peer] = "queued"
            assert self.sp.out_meta(peer, ident)["attempts"] == 0

    @rule(data=st.data())
    def resend_is_noop(self, data: st.DataObject) -> None:
        """A sender that lost track tries a move that already happened: nothing changes."""
        pick = self._out_pick(data, ("sent", "processed", "dead"))
        if pick is not None:
            ident, peer = pick
            assert self.sp.mark_sent(peer, [self.out[ident].name]) == 0

    # -- inbox ----------------------------------------------------------------

    @rule(
        items=st.lists(
            st.tuples(
                st.sampled_from(ORIGINS),
                st.sampled_from(INBOX_IDS),
                st.sampled_from(CHANNELS),
                st.integers(0, 9),
                payloads,
            ),
            min_size=1,
            max_size=6,
        )
    )
    def store(self, items: list[tuple[str, str, str, int, bytes]]) -> None:
        """Simulate the receiver: write tmp files, then store them per origin."""
        by_origin: dict[str, list[tuple[str, m.Header, bytes]]] = {}
        for origin, ident, channel, prio, body in items:
            tmp = self.sp.tmp_name("rcv")
            with open(tmp, "wb") as f:
                f.write(body)
            hdr = m.Header(ident, channel, prio, m.now_us(), 0, len(body), m.crc32(body))
            by_origin.setdefault(origin, []).append((tmp, hdr, body))
        for origin, group in by_origin.items():
            results = self.sp.store(origin, [(t, h, -1) for t, h, _ in group])
            for (_, hdr, body), result in zip(group, results, strict=True):
                key = (origin, hdr.ident)
                if key in self.inbox:
                    assert result == "duplicate", key
                else:
                    assert result == "stored", key
                    self.inbox[key] = InMsg(body, hdr.channel, "ready")

    def _in_keys(self, *states: str, channel: str | None = None) -> list[tuple[str, str]]:
        return sorted(k for k, v in self.inbox.items() if v.state in states and channel in (None, v.channel))

    def _sweep_model(self, channel: str) -> int:
        moved = 0
        for k in self._in_keys("claimed", channel=channel):
            if self.inbox[k].expired:
                self.inbox[k].state, self.inbox[k].expired = "ready", False
                moved += 1
        for k in self._in_keys("wait", channel=channel):
            if self.inbox[k].expired:  # backdated: due
                self.inbox[k].state, self.inbox[k].expired = "ready", False
                moved += 1
        return moved

    @rule(channel=st.sampled_from(CHANNELS), n=st.integers(1, 3))
    def claim(self, channel: str, n: int) -> None:
        self._sweep_model(channel)
        ready = self._in_keys("ready", channel=channel)
        claims = self.sp.claim(channel, n, LEASE)
        got = [(c.origin, c.ident) for c in claims]
        assert len(got) == min(n, len(ready))
        assert set(got) <= set(ready)
        prios = [c.priority for c in claims]
        assert prios == sorted(prios), "most urgent first"
        for c in claims:
            msg = self.inbox[(c.origin, c.ident)]
            msg.state, msg.name = "claimed", c.name
            with open(c.path, "rb") as f:
                assert f.read() == msg.payload

    def _in_pick(self, data: st.DataObject, *states: str) -> tuple[str, str] | None:
        keys = self._in_keys(*states)
        return data.draw(st.sampled_from(keys)) if keys else None

    @rule(data=st.data(), how=st.sampled_from(["ack", "release", "reject", "fail", "delay"]))
    def finish(self, data: st.DataObject, how: str) -> None:
        key = self._in_pick(data, "claimed")
        if key is None:
            return
        msg = self.inbox[key]
        if how == "delay":
            ok = self.sp.finish(msg.channel, msg.name, "release", delay=LEASE)
            new = "wait"
        else:
            ok = self.sp.finish(msg.channel, msg.name, how, reason="test")
            new = {"ack": "done", "release": "ready", "reject": "dead", "fail": "ready"}[how]
        assert ok is True
        msg.state, msg.expired = new, False

    @rule(data=st.data())
    def finish_lost_claim(self, data: st.DataObject) -> None:
        """Acking a message that is no longer claimed reports the lost claim, changes nothing."""
        key = self._in_pick(data, "ready", "done", "dead", "wait")
        if key is None or not self.inbox[key].name:
            return
        msg = self.inbox[key]
        assert self.sp.finish(msg.channel, msg.name, "ack") is False

    @rule(data=st.data())
    def requeue_in(self, data: st.DataObject) -> None:
        """dropr-ack --requeue: a dead inbox entry back to ready; any other state is left."""
        key = self._in_pick(data, "ready", "claimed", "wait", "done", "dead")
        if key is None or not self.inbox[key].name:
            return
        msg = self.inbox[key]
        assert self.sp.leases.requeue(msg.channel, msg.name) is (msg.state == "dead")
        if msg.state == "dead":
            msg.state = "ready"
            assert self.sp.in_meta(msg.channel, *key).get("failures") == 0

    @rule(data=st.data())
    def expire_lease(self, data: st.DataObject) -> None:
        """Let time pass for one claim (or one delayed release): backdate its mtime."""
        key = self._in_pick(data, "claimed", "wait")
        if key is None:
            return
        msg = self.inbox[key]
        path = self.sp.path("in", msg.channel, msg.state, msg.name)
        past = time.time() - 10
        os.utime(path, (past, past))
        msg.expired = True

    @rule(channel=st.sampled_from(CHANNELS))
    def sweep(self, channel: str) -> None:
        assert self.sp.leases.sweep_channel(channel) == self._sweep_model(channel)

    # -- crash ----------------------------------------------------------------

    @rule()
    def crash(self) -> None:
        """Drop the Spool object (kill -9 of its process) and open the spool again."""
        node = self.sp.node
        del self.sp
        self.sp = Spool(os.path.join(self.root, "spool"), QUOTA)
        assert self.sp.node == node

    # -- invariants -----------------------------------------------------------

    @invariant()
    def outbox_matches_model(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        inodes: dict[str, set[int]] = {}
        for peer in self.sp.out_peers():
            for state in OUT_STATES:
                for name in self.sp.out_names(peer, state):
                    ident = m.parse_out_name(name)[2]
                    assert (ident, peer) not in seen, f"{ident} twice for {peer}"
                    seen[(ident, peer)] = state
                    path = self.sp.path("out", peer, state, name)
                    hdr = self.sp.read_header(peer, state, name)
                    with open(path, "rb") as f:
                        f.seek(m.HEADER_SIZE)
                        body = f.read()
                    assert ident in self.out, f"{ident} on disk but never put"
                    assert body == self.out[ident].payload and hdr.crc == m.crc32(body)
                    inodes.setdefault(ident, set()).add(os.stat(path).st_ino)
        expected = {(i, p): s for i, msg in self.out.items() for p, s in msg.states.items()}
        assert seen == expected
        for ident, ino in inodes.items():
            assert len(ino) == 1, f"multicast {ident} is more than one copy"

    @invariant()
    def usage_matches_a_scan(self) -> None:
        rec = self.sp.usage.read()
        assert rec is None or (rec.opens == rec.closes and rec.total == spool_bytes(self.sp))
        assert self.sp.usage.used() == spool_bytes(self.sp)

    @invariant()
    def caller_id_index_matches(self) -> None:
        indexed = set(os.listdir(self.sp.path("ids")))
        assert indexed == {i for i in self.out if i in CALLER_IDS}

    @invariant()
    def find_out_agrees(self) -> None:
        for ident, msg in self.out.items():
            assert sorted((p, s) for p, s, _ in self.sp.find_out(ident)) == sorted(msg.states.items())

    @invariant()
    def inbox_matches_model(self) -> None:
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        for ch in self.sp.channels():
            for state in IN_STATES:
                for name in self.sp.in_names(ch, state):
                    _, _, origin, ident = m.parse_in_name(name)
                    key = (origin, ident)
                    assert key not in seen, f"{key} stored twice"
                    seen[key] = (ch, state)
                    with open(self.sp.path("in", ch, state, name), "rb") as f:
                        assert f.read() == self.inbox[key].payload
        assert seen == {k: (v.channel, v.state) for k, v in self.inbox.items()}
        for (origin, ident), msg in self.inbox.items():
            found = self.sp.find_in(origin, ident)
            assert found is not None and found[:2] == (msg.channel, msg.state)

    @invariant()
    def tmp_holds_only_crash_leftovers(self) -> None:
        assert len(os.listdir(self.sp.tmp)) == self.abandoned

    @precondition(lambda self: self.abandoned > 0)
    @rule()
    def sweep_tmp(self) -> None:
        self.sp.purge(now=time.time() + 40 * 3600)
        self.abandoned = 0  # 40 h: past TMP_MAX_AGE, well within the 7 d retention

    @rule()
    def purge_after_retention(self) -> None:
        """Finished messages older than the retention go; nothing unfinished does."""
        self.sp.purge(now=time.time() + 8 * 86400)
        self.abandoned = 0
        for ident in list(self.out):
            msg = self.out[ident]
            for p in [p for p, s in msg.states.items() if s in ("processed", "dead")]:
                del msg.states[p]
            if not msg.states:
                del self.out[ident]
        for key in [k for k, v in self.inbox.items() if v.state in ("done", "dead")]:
            del self.inbox[key]  # the id may now be received again: retention is the window


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(
    max_examples=int(os.environ.get("DROPR_MACHINE_EXAMPLES", "40")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_machine_catches_a_lost_message() -> None:
    """The invariants can fail: a message deleted behind the model's back is noticed."""
    machine = SpoolMachine()
    try:
        machine.put(("a",), [b"x"], 5)
        ident = next(iter(machine.out))
        os.unlink(machine.sp.path("out", "a", "queued", machine.out[ident].name))
        with pytest.raises(AssertionError):
            machine.outbox_matches_model()
    finally:
        machine.teardown()
