"""The sender's checks of a backed-off peer's queue for expired TTLs (no network needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dropr import sender as sender_mod
from dropr import transport as tp
from dropr.config import Peer
from dropr.sender import Sender, SendOptions
from dropr.spool import Spool

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

DOWN = Peer("down", "http://127.0.0.1:9/")


@pytest.fixture
def sp(spool_dir: Path) -> Spool:
    return Spool(str(spool_dir))


def put(sp: Spool, payload: bytes, ttl: float = 0) -> str:
    batch = sp.batch([DOWN], ttl=ttl)
    batch.add(payload)
    return batch.commit()[0]


def backed_off(sp: Spool) -> tuple[Sender, sender_mod._PeerRun, list[str]]:
    """A sender whose peer is backed off for a minute; the names it reads headers of."""
    sp.set_peer_state(DOWN.name, {"failures": 1, "until": time.time() + 60})
    s = Sender(sp, SendOptions())
    s._refresh_peers()
    run = s.runs[DOWN.name]
    peeked: list[str] = []
    peek = sp.peek

    def spy(peer: str, name: str) -> tuple[int, int]:
        peeked.append(name)
        return peek(peer, name)

    sp.peek = spy  # type: ignore[method-assign]
    return s, run, peeked


def states(sp: Spool, ids: list[str]) -> list[str]:
    return [sp.find_out(i)[0][1] for i in ids]


def test_an_expired_message_of_a_backed_off_peer_goes_dead(sp: Spool) -> None:
    keep, later = put(sp, b"no ttl"), put(sp, b"an hour", ttl=3600)
    gone = put(sp, b"a moment", ttl=0.001)
    time.sleep(0.01)
    s, run, peeked = backed_off(sp)
    s._start_sends()  # the peer is backed off: nothing is sent, the queue is checked
    assert len(s.pool) == 0
    assert states(sp, [keep, later, gone]) == ["queued", "queued", "dead"]
    assert "ttl expired" in sp.out_meta(DOWN.name, gone)["error"]
    assert len(peeked) == 3
    s._start_sends()  # checked a moment ago: not again yet
    assert len(peeked) == 3
    assert 0 < s._sleep_for() <= sender_mod.EXPIRE_EVERY  # the daemon wakes up for the next check


def test_without_a_ttl_ever_put_no_header_is_read(sp: Spool) -> None:
    put(sp, b"no ttl")
    s, _, peeked = backed_off(sp)
    s._start_sends()
    assert peeked == []
    assert s._sleep_for() > 10  # the backoff (capped at 30 s), not a check, is what it waits for


def test_an_empty_queue_is_listed_again_without_a_wake_up_after_a_while(sp: Spool) -> None:
    # A put that died between its link into queued/ and its wake-up leaves a message
    # nobody announced: the daemon finds it when it next lists the queue on its own.
    sp.peer_dir(DOWN)
    s = Sender(sp, SendOptions())
    s._refresh_peers()
    run = s.runs[DOWN.name]
    assert s._next_batch(run, 10) == []  # listed: empty
    batch = sp.batch([DOWN])
    batch.add(b"unannounced")
    sp.wake_one = lambda name: 0  # type: ignore[method-assign]  # the put dies before waking
    [ident] = batch.commit()
    assert s._next_batch(run, 10) == [], "listed again at once without a wake-up"
    assert s._sleep_for() <= sender_mod.RELIST_IDLE  # the daemon wakes up to list again
    run.listed -= sender_mod.RELIST_IDLE + 1
    assert [i for i, _, _ in s._next_batch(run, 10)] == [ident]


# -- a failing peer: the backoff -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failures", [1023, 1024, pytest.param(10**400, id="10**400"), "many", -3, None, [1], float("inf")]
)
def test_the_backoff_is_capped_whatever_failure_count_peer_json_holds(sp: Spool, failures: object) -> None:
    put(sp, b"x")
    sp.set_peer_state(DOWN.name, {"failures": failures, "until": "soon", "last_ok": "never"})
    s = Sender(sp, SendOptions())
    s._refresh_peers()
    assert s._backoff_until(DOWN.name) == 0  # a bad time reads as "not backed off"
    s._peer_failed(s.runs[DOWN.name], "could not connect")
    st = sp.peer_state(DOWN.name)
    assert time.time() < st["until"] <= time.time() + sp.config.backoff_max
    good = isinstance(failures, int) and failures >= 0
    assert st["failures"] == (failures + 1 if good else 1)


@pytest.mark.parametrize("once", [True, False])
def test_now_ignores_only_the_backoff_from_before_this_run(sp: Spool, once: bool) -> None:
    # --now used to ignore the backoff for good: a failing peer was retried in a tight
    # loop (1024 times in half a second, until the backoff overflowed).
    put(sp, b"x")
    sp.set_peer_state(DOWN.name, {"failures": 5, "until": time.time() + 3600})
    s = Sender(sp, SendOptions(once=once, now=True))
    s._refresh_peers()
    assert s._backoff_until(DOWN.name) == 0
    s._peer_failed(s.runs[DOWN.name], "could not connect")
    assert s._backoff_until(DOWN.name) > time.time()
    s._start_sends()
    try:
        assert len(s.pool) == 0
    finally:
        s.pool.close()
    if not once:
        assert s._sleep_for() > 0  # the daemon sleeps out the backoff


def test_a_once_pass_does_not_try_a_failed_peer_again(sp: Spool) -> None:
    put(sp, b"x")
    s = Sender(sp, SendOptions(once=True))
    s._refresh_peers()
    run = s.runs[DOWN.name]
    s._peer_failed(run, "could not connect")
    run.until = 0.0  # the backoff is over (a short backoff_min, a long pass): still not again
    s._start_sends()
    try:
        assert len(s.pool) == 0
    finally:
        s.pool.close()


# -- what libcurl cannot take --------------------------------------------------------------------


@pytest.mark.parametrize("token", ["tøken€", "tok\r\nX-Evil: 1", "tok\n", "a\0b"])
def test_a_token_http_cannot_carry_defers_the_peer(sp: Spool, token: str) -> None:
    put(sp, b"x")
    s = Sender(sp, SendOptions(once=True))
    s._refresh_peers()
    s.runs[DOWN.name] = sender_mod._PeerRun(Peer(DOWN.name, DOWN.url, token))
    s._start_sends()
    assert len(s.pool) == 1
    s._drive(0)
    assert len(s.pool) == 0
    st = sp.peer_state(DOWN.name)
    assert st["failures"] == 1 and "Authorization header: the peer's token" in st["last_error"]
    assert token not in st["last_error"]  # a secret


def test_a_non_ascii_spool_path_reaches_libcurl_a_non_ascii_url_fails(
    tmp_path: Path,
) -> None:
    """pycurl encodes a str as ASCII: a spool under "sé" crashed the sender. A URL with
    non-ASCII characters (refused at the put and in the config, but an older outbox may
    hold one) fails its transfer with a reason instead."""
    spool = tmp_path / "sé" / "spool"
    sp = Spool(str(spool))
    ident = put(sp, b"x")
    path = f"{spool}/out/{DOWN.name}/queued/{sp.find_out(ident)[0][2]}"
    t = tp.upload(Peer("p", DOWN.url), [(ident, path)], "a", tp.Timeouts())
    try:
        assert t.error == ""
    finally:
        t.close()
    t = tp.upload(Peer("p", "http://bücher.example:80/"), [(ident, path)], "a", tp.Timeouts())
    try:
        assert "non-ASCII" in t.error
    finally:
        t.close()
