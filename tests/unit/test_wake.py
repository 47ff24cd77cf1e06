"""The sender's wake-ups name the peers that got new work: the datagram, and what a
Sender lists after one (no network needed: every peer refuses on 127.0.0.1:9)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dropr import peerrun as pr
from dropr.config import Config, Peer
from dropr.sender import Sender, SendOptions, _drive_busy, _mark_dirty
from dropr.spool import Spool, Waiter
from dropr.spool import wake as wake_mod

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

PEERS = [Peer(f"p{i:03d}", f"http://127.0.0.1:9/{i}") for i in range(200)]


@pytest.fixture
def sp(spool_dir: Path) -> Spool:
    return Spool(str(spool_dir))


@pytest.fixture
def waiter(sp: Spool) -> Iterator[Waiter]:
    w = sp.wakeups.sender()
    yield w
    w.close()


def raw_wake(sp: Spool, data: bytes) -> None:
    """Send a datagram to the sender's socket, as any other dropr would."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, sp.path("wake", wake_mod.SEND_SOCK))


# -- the datagram ---------------------------------------------------------------------------------


def test_names_go_through_a_wake_up(sp: Spool, waiter: Waiter) -> None:
    names = {"db1", "web-2.example", "grp+0a1b2c3d", "host_8080-deadbeef"}
    assert sp.wakeups.wake_sender(sorted(names)) == 1
    assert waiter.wait(5, drain=False) is True
    assert waiter.drain_names() == names
    assert waiter.drain_names() == set(), "drained"


def test_wake_ups_pending_together_name_every_peer_they_named(sp: Spool, waiter: Waiter) -> None:
    sp.wakeups.wake_sender(["a"])
    sp.wakeups.wake_sender(["b", "c"])
    sp.wakeups.resume_sender()
    assert waiter.drain_names() == {"a", "b", "c"}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"!", id="old dropr-put"),
        pytest.param(b"", id="empty"),
        pytest.param(b"=", id="no name"),
        pytest.param(b"=a\n\nb", id="an empty name"),
        pytest.param(b"=a\xff", id="not UTF-8"),
        pytest.param(b"peers a b", id="garbage"),
        pytest.param(b"=" + b"a" * 1024, id="oversize"),  # wake_mod.WAKE_MAX
    ],
)
def test_a_wake_up_naming_no_peer_it_can_read_means_all(sp: Spool, waiter: Waiter, data: bytes) -> None:
    sp.wakeups.wake_sender(["a"])
    raw_wake(sp, data)
    sp.wakeups.wake_sender(["b"])
    assert waiter.drain_names() is None
    assert waiter.drain_names() == set(), "drained, the rest too"


@pytest.mark.parametrize(
    "peers",
    [
        pytest.param([], id="none"),
        pytest.param([f"peer-{i:035d}" for i in range(40)], id="too many for one datagram"),
        pytest.param(["a\nb"], id="a newline"),
        pytest.param(["a", "\udcff"], id="not encodable"),
    ],
)
def test_wake_sender_sends_everything_for_names_it_cannot_send(peers: list[str]) -> None:
    assert wake_mod.names_datagram(peers) == wake_mod.WAKE_ALL
    assert wake_mod.parse_wake(wake_mod.names_datagram(peers)) is None


def test_a_named_wake_up_fits_the_limit() -> None:
    many = [f"p{i:03d}" for i in range(205)]  # 5 bytes each with its separator, and the "="
    assert len(wake_mod.names_datagram(many[:204])) == 1020
    assert wake_mod.names_datagram(many) == wake_mod.WAKE_ALL
    names = {f"peer{i:02d}" for i in range(20)}
    assert wake_mod.parse_wake(wake_mod.names_datagram(names)) == names


def test_a_queue_that_may_have_been_full_means_every_peer(sp: Spool, waiter: Waiter) -> None:
    # A wake-up sent to a full queue is lost (EAGAIN): nothing says which peers it named.
    for i in range(wake_mod._queue_length() + 5):
        sp.wakeups.wake_sender([f"p{i}"])
    assert waiter.drain_names() is None


def test_a_wake_up_that_finds_its_own_send_buffer_full_goes_again_alone(
    sp: Spool, waiter: Waiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Full:
        def sendto(self, data: bytes, path: str) -> None:
            raise BlockingIOError

    monkeypatch.setattr(wake_mod, "_wake_socket", Full)
    assert sp.wakeups.wake_sender(["a"]) == 1
    assert waiter.drain_names() == {"a"}


def test_other_waiters_still_just_drain(sp: Spool) -> None:
    with sp.wakeups.putter() as w:
        assert sp.wakeups.wake_putters() == 1
        assert w.wait(5) is True
        assert w.wait(0) is False


# -- the sender: which queues a wake-up has listed ------------------------------------------------


def idle_sender(sp: Spool, peers: list[Peer]) -> tuple[Sender, list[str]]:
    """A daemon's Sender whose peers' queues were all listed (empty); the peers whose
    queued/ it lists from now on."""
    for p in peers:
        sp.peer_dir(p)
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    s.start_sends()  # every queue listed once: empty, nothing sent
    assert len(s.pool) == 0 and not any(r.dirty for r in s.runs.values())
    listed: list[str] = []
    names = sp.out_names

    def spy(peer: str, state: str, *a: object, **k: object) -> list[str]:
        if state == pr.QUEUED:
            listed.append(peer)
        return names(peer, state, *a, **k)  # type: ignore[arg-type]

    sp.out_names = spy  # type: ignore[method-assign]
    return s, listed


def put(sp: Spool, peers: list[Peer]) -> str:
    batch = sp.batch(peers)
    batch.add(b"x")
    return batch.commit()[0]


def test_a_put_to_one_peer_lists_that_peer_only(sp: Spool, waiter: Waiter) -> None:
    s, listed = idle_sender(sp, PEERS)
    try:
        put(sp, [PEERS[7]])
        _drive_busy(s, waiter)  # woken: what the daemon does with the wake-up
        assert [n for n, r in s.runs.items() if r.dirty] == [PEERS[7].name]
        s.start_sends()
        assert listed == [PEERS[7].name]
        assert len(s.pool) == 1, "its message is on its way"
    finally:
        s.pool.close()


def test_an_idle_daemon_lists_the_named_peers_only(sp: Spool, waiter: Waiter) -> None:
    s, listed = idle_sender(sp, PEERS)
    try:
        put(sp, [PEERS[3], PEERS[150]])
        assert waiter.wait(5, drain=False) is True  # as run_daemon waits when nothing is in flight
        _mark_dirty(s, waiter.drain_names())
        s.start_sends()
        assert sorted(listed) == [PEERS[3].name, PEERS[150].name]
    finally:
        s.pool.close()


def test_a_wake_up_of_an_older_dropr_put_lists_every_peer(sp: Spool, waiter: Waiter) -> None:
    s, listed = idle_sender(sp, PEERS)
    try:
        raw_wake(sp, b"!")
        _drive_busy(s, waiter)
        assert all(r.dirty for r in s.runs.values())
        s.start_sends()
        assert sorted(listed) == [p.name for p in PEERS]
    finally:
        s.pool.close()


def test_a_put_to_a_peer_the_daemon_does_not_know_yet_is_sent(sp: Spool, waiter: Waiter) -> None:
    s, listed = idle_sender(sp, PEERS[:10])
    new = Peer("newcomer", "http://127.0.0.1:9/new")  # added to the config since
    try:
        put(sp, [new])
        _drive_busy(s, waiter)
        assert not any(r.dirty for r in s.runs.values())
        s.refresh_peers()  # the top of the daemon's loop
        s.start_sends()
        assert listed == [new.name]
        assert len(s.pool) == 1
    finally:
        s.pool.close()


def test_a_signal_wakes_the_loop_without_listing(sp: Spool, waiter: Waiter) -> None:
    s, listed = idle_sender(sp, PEERS[:10])
    try:
        sp.wakeups.resume_sender()
        _drive_busy(s, waiter)
        s.start_sends()
        assert listed == []
    finally:
        s.pool.close()


def test_a_put_to_a_group_lists_the_group_and_its_members_only(spool_dir: Path) -> None:
    urls = ["http://127.0.0.1:9/m1/", "http://127.0.0.1:9/m2/"]
    sp = Spool(str(spool_dir), Config({"peers": {"g": {"urls": urls}}}))
    with sp.wakeups.sender() as waiter:
        s, listed = idle_sender(sp, [*PEERS[:50], sp.config.peers["g"]])
        members = sorted(r.peer.name for r in s.groups["g"].members)
        try:
            put(sp, [sp.config.peers["g"]])
            _drive_busy(s, waiter)
            assert sorted(n for n, r in s.runs.items() if r.dirty) == members
            s.start_sends()
            assert set(listed) == {"g", *members}
            assert len(s.pool) == 1, "given to a member, on its way"
        finally:
            s.pool.close()


# -- who names what -------------------------------------------------------------------------------


def test_a_relay_store_names_the_next_hop(spool_dir: Path) -> None:
    from dropr import message as m

    sp = Spool(str(spool_dir), Config({"node": "b", "peers": {"c": {"url": "http://127.0.0.1:9/"}}}))
    hdr = m.Header(sp.ids.new()[0], "default", 5, m.now_us(), 0, 1, m.crc32(b"x"))
    part = sp.relays.open("a", hdr)
    part.write(b"x")
    part.close()
    with sp.wakeups.sender() as waiter:
        sp.relays.store("a", sp.config.peers["c"], [(part.path, hdr)])
        assert waiter.drain_names() == {"c"}


def test_a_requeue_names_the_peers_it_requeued_for(sp: Spool, waiter: Waiter) -> None:
    import io

    from dropr import retry
    from dropr.requeue import requeue

    batch = sp.batch(PEERS[:3])
    batch.add(b"x")
    [ident] = batch.commit()
    [(_, _, name), *_] = sp.find_out(ident)
    for p in PEERS[:2]:
        sp.kill(p.name, [name], retry.TTL_EXPIRED)
    waiter.drain()
    requeue(sp, [ident], out=True, stdout=io.StringIO(), err=io.StringIO())
    assert waiter.drain_names() == {PEERS[0].name, PEERS[1].name}
