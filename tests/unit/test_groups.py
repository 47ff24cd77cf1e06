"""Peer groups without a network: choosing members, the assign and unassign transitions,
their crash states, and how failures are told apart (groups.py, Outbox.assign)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import crash_explorer as ce
import pycurl
import pytest
from dropr import groups
from dropr import message as m
from dropr import transport as tp
from dropr.config import Config, Peer, member_name
from dropr.peerrun import PeerRun
from dropr.sender import Sender, SendOptions
from dropr.spool import Spool
from dropr.spool.outbox import settle

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

URLS = ["http://127.0.0.1:9/m1/", "http://127.0.0.1:9/m2/", "http://127.0.0.1:9/m3/"]


def group_spool(spool_dir: Path, mode: str = "failover", n: int = 3) -> Spool:
    urls = URLS[:n]
    return Spool(str(spool_dir), Config({"peers": {"g": {"urls": urls, "mode": mode}}}))


def put(sp: Spool, n: int, key: str | None = None) -> list[str]:
    batch = sp.batch([sp.config.peers["g"]], key=None if key is None else m.key_hash(key))
    for i in range(n):
        batch.add(b"message %d" % i)
    return batch.commit()


def sender(sp: Spool) -> tuple[Sender, groups.GroupRun, list[PeerRun]]:
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    g = s.groups["g"]
    return s, g, g.members


def take(g: groups.GroupRun, r: PeerRun, room: int = 100) -> list[str]:
    """Fill one member's queue as the sender does before a batch; return what it got."""
    before = len(r.queue)
    g.fill(r, room, time.time())
    return list(r.queue)[before:]


def queued(sp: Spool, folder: str) -> list[str]:
    return sp.out_names(folder, "queued")


# -- choosing a member --------------------------------------------------------------------


def test_failover_gives_everything_to_the_first_healthy_member(spool_dir: Path) -> None:
    sp = group_spool(spool_dir)
    put(sp, 5)
    _, g, (m1, m2, m3) = sender(sp)
    assert take(g, m2) == [] and take(g, m3) == []
    got = take(g, m1, room=3)
    assert len(got) == 3 and queued(sp, m1.peer.name) == got
    assert len(queued(sp, "g")) == 2
    m1.back_off("down")  # backed off: the next one in config order takes over
    assert take(g, m1) == [] and take(g, m3) == []
    assert len(take(g, m2)) == 2 and queued(sp, "g") == []


def test_a_failed_member_gets_nothing_new_until_it_answers_a_probe(spool_dir: Path) -> None:
    sp = group_spool(spool_dir, n=2)
    put(sp, 2)
    s, g, (m1, m2) = sender(sp)
    m1.back_off("down")
    m1.until = time.time() - 1  # the backoff is over, it still failed last
    assert take(g, m1) == []
    g.tick(s.pool, sp.node, s.timeouts, time.time())
    assert g.probing == {m1.peer.name}  # GET v1/health is on its way; no message risked
    [t] = [t for t in s.pool.failed] or list(s.pool.running.values())
    assert t.kind == "health" and t.tag is m1
    m1.record_ok()
    assert len(take(g, m1)) == 2
    s.pool.close()


def test_spread_takes_turns_a_batch_each(spool_dir: Path) -> None:
    sp = group_spool(spool_dir, mode="spread")
    put(sp, 9)
    _, g, (m1, m2, m3) = sender(sp)
    assert len(take(g, m1, room=3)) == 3
    m1.sending = 2  # its two batches in flight: it cannot take another
    assert take(g, m3) == []  # m2's turn, and m2 can take one
    assert len(take(g, m2, room=3)) == 3
    assert len(take(g, m3, room=3)) == 3
    assert queued(sp, "g") == []


def test_a_key_goes_to_its_rendezvous_member_and_back(spool_dir: Path) -> None:
    sp = group_spool(spool_dir, mode="spread")
    ids = put(sp, 4, key="customer-17")
    _, g, runs = sender(sp)
    home = groups.rendezvous(m.key_hash("customer-17"), runs)
    for r in runs:
        if r is not home:
            assert take(g, r) == []
    assert sorted(m.split_out_name(n)[1] for n in take(g, home)) == sorted(ids)
    more = put(sp, 2, key="customer-17")
    home.back_off("down")
    other = groups.rendezvous(m.key_hash("customer-17"), [r for r in runs if r is not home])
    assert sorted(m.split_out_name(n)[1] for n in take(g, other)) == sorted(more)


def test_rendezvous_moves_only_the_keys_of_a_member_that_is_gone() -> None:
    sp_runs = [type("R", (), {"peer": Peer("x", u)})() for u in URLS]
    keys = [zlib.crc32(b"%d" % i) for i in range(2000)]
    before = {k: groups.rendezvous(k, sp_runs) for k in keys}  # type: ignore[arg-type]
    gone = sp_runs[1]
    after = {k: groups.rendezvous(k, [sp_runs[0], sp_runs[2]]) for k in keys}  # type: ignore[arg-type]
    moved = {k for k in keys if before[k] is not after[k]}
    assert moved == {k for k in keys if before[k] is gone}
    shares = [sum(1 for k in keys if before[k] is r) for r in sp_runs]
    assert min(shares) > 500, shares  # spread about evenly


# -- failures -----------------------------------------------------------------------------


def transfer(error: str = "", code: int = 0, errno: int = 0, sent: int = 300) -> tp.Transfer:
    t = tp.Transfer(Peer("p", URLS[0]), "send", [], [])
    t.error, t.code, t.curl_errno, t.request_bytes = error, code, errno, sent
    t.close()
    return t


@pytest.mark.parametrize(
    ("t", "maybe_stored"),
    [
        (transfer("refused", errno=pycurl.E_COULDNT_CONNECT, sent=0), False),
        (transfer("no host", errno=pycurl.E_COULDNT_RESOLVE_HOST, sent=0), False),
        # libcurl's second try on a new connection after a kept-alive one died unanswered:
        # the first may have delivered the request whole (an e2e kill -9 test caught it)
        (transfer("refused", errno=pycurl.E_COULDNT_CONNECT, sent=1301), True),
        (transfer("cannot read the file", code=0), False),
        (transfer("HTTP 503: busy", code=503), False),
        (transfer("HTTP 401: token", code=401), False),
        (transfer("", code=200), False),  # per-message retry answers
        (transfer("timed out", errno=pycurl.E_OPERATION_TIMEDOUT), True),
        (transfer("connect timed out", errno=pycurl.E_OPERATION_TIMEDOUT, sent=0), False),
        (transfer("reset", errno=pycurl.E_RECV_ERROR), True),
        (transfer("empty reply", errno=pycurl.E_GOT_NOTHING), True),
        (transfer("HTTP 500: oops", code=500), True),
        (transfer("HTTP 502: bad gateway", code=502), True),  # a proxy in front: it may have passed it on
        (transfer("HTTP 504: gateway timeout", code=504), True),
        (transfer("malformed answer from peer", code=200), True),
    ],
)
def test_ambiguous_failures_are_those_that_may_have_stored(t: tp.Transfer, maybe_stored: bool) -> None:
    assert groups.ambiguous(t) is maybe_stored


def test_an_ambiguous_failure_pins_until_failover_after(spool_dir: Path) -> None:
    sp = group_spool(spool_dir, n=2)
    put(sp, 3)
    s, g, (m1, m2) = sender(sp)
    names = take(g, m1)
    m1.back_off("reset")
    g.batch_back(m1, transfer("reset", errno=pycurl.E_RECV_ERROR), names)
    assert queued(sp, m1.peer.name) == names  # pinned: stays at m1
    assert all(sp.out_meta(m1.peer.name, m.split_out_name(n)[1]).get("pinned_at") for n in names)
    assert take(g, m2) == []
    g.tick(s.pool, sp.node, s.timeouts, time.time())
    assert queued(sp, m1.peer.name) == names  # failing for less than failover_after
    g.tick(s.pool, sp.node, s.timeouts, m1.failing_since + sp.config.failover_after)
    assert queued(sp, m1.peer.name) == [] and queued(sp, "g") == names
    assert not any(sp.out_meta("g", m.split_out_name(n)[1]).get("pinned_at") for n in names)
    assert take(g, m2) == names
    s.pool.close()


def test_an_unambiguous_failure_gives_the_batch_back_at_once(spool_dir: Path) -> None:
    sp = group_spool(spool_dir, n=2)
    put(sp, 3)
    s, g, (m1, m2) = sender(sp)
    names = take(g, m1, room=2)
    extra = take(g, m1, room=3)  # assigned, not yet in a batch
    m1.back_off("refused")
    g.batch_back(m1, transfer("refused", errno=pycurl.E_COULDNT_CONNECT, sent=0), names)
    assert queued(sp, m1.peer.name) == [] and sorted(queued(sp, "g")) == sorted(names + extra)
    assert len(take(g, m2)) == 3


# -- the transitions and their crash states -----------------------------------------------

G = Peer("g", URLS[0])
M = Peer(member_name("g", URLS[0]), URLS[0])


def test_assign_and_unassign_move_the_record_without_the_pin(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    b = sp.batch([G])
    b.add(b"x")
    [ident] = b.commit()
    sp.peer_dir(M)
    [name] = queued(sp, "g")
    sp.record_failure("g", name, "earlier")
    assert sp.outbox.assign("g", M.name, [name]) == [name]
    assert queued(sp, "g") == [] and queued(sp, M.name) == [name]
    assert sp.out_meta(M.name, ident)["error"] == "earlier" and sp.out_meta("g", ident) == {}
    sp.out_note(M.name, ident, pinned_at=1)
    assert sp.outbox.unassign(M.name, "g", [name]) == [name]
    assert queued(sp, M.name) == [] and queued(sp, "g") == [name]
    assert "pinned_at" not in sp.out_meta("g", ident) and sp.out_meta("g", ident)["attempts"] == 1
    assert sp.outbox.unassign(M.name, "g", [name]) == []  # gone from there: nothing moves


def test_settle_finishes_a_cut_move(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    b = sp.batch([G])
    b.add(b"one")
    b.add(b"two")
    b.commit()
    sp.peer_dir(M)
    n1, n2 = queued(sp, "g")
    base = spool_dir / "out"
    (base / M.name / "queued" / n1).hardlink_to(base / "g" / "queued" / n1)  # cut assign
    (base / M.name / "sent" / n2).hardlink_to(base / "g" / "queued" / n2)  # a lost unlink
    assert settle(sp.outbox, "g", [M.name]) == 2
    assert queued(sp, "g") == [n1] and queued(sp, M.name) == [] and sp.out_names(M.name, "sent") == [n2]


def _scenario(run: ce.Run) -> None:
    sp = run.plain()
    b = sp.batch([G])
    for i in range(3):
        b.add(b"group %d" % i)
    b.commit()
    sp.peer_dir(M)
    n1, n2, n3 = queued(sp, "g")
    sp = run.record()
    sp.outbox.assign("g", M.name, [n1, n2, n3])
    sp.mark_sent(M.name, [n1])
    sp.outbox.unassign(M.name, "g", [n2])


def test_every_crash_state_of_assign_and_unassign_keeps_each_message_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DROPR_NODE", "here")
    run = ce.Run("group_moves", tmp_path / "world")
    _scenario(run)
    rec = run.done()
    checked = 0
    for i, st in enumerate(ce.states(rec, 300, seed=15)):
        dest = tmp_path / f"s{i}"
        dest.mkdir()
        root = ce.materialise(rec, st, str(dest))
        sp = Spool(root, fs=ce.NoSyncFS())
        settle(sp.outbox, "g", [M.name])
        places: dict[str, list[str]] = {}
        for folder in ("g", M.name):
            for state in ("queued", "sent", "processed", "dead"):
                for name in sp.out_names(folder, state):
                    places.setdefault(name, []).append(f"{folder}/{state}")
        for name, where in places.items():
            if where == [f"{M.name}/queued", f"{M.name}/sent"]:  # a cut mark_sent: the next pass ends it
                continue
            assert len(where) == 1, (st.k, name, where)
        assert len(places) == 3, (st.k, places)
        checked += 1
    assert checked >= 20


def test_a_peer_that_became_a_group_has_its_sent_polled_at_the_member_at_its_url(spool_dir: Path) -> None:
    old = Spool(str(spool_dir))
    b = old.batch([Peer("g", URLS[1])])
    b.add(b"before")
    b.add(b"queued")
    b.commit()
    n1, n2 = queued(old, "g")
    old.mark_sent("g", [n1])
    sp = group_spool(spool_dir, n=2)
    s, g, (m1, m2) = sender(sp)
    assert sp.out_names(m2.peer.name, "sent") == [n1] and sp.out_names("g", "sent") == []
    assert m2.poll == "due"
    assert queued(sp, "g") == [n2]  # the queued one waits for a member, as any put
    s.pool.close()
