"""The sender's checks of a backed-off peer's queue for expired TTLs (no network needed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from dropr import peerrun as pr
from dropr import transport as tp
from dropr.config import Peer
from dropr.peerrun import PeerRun
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


def backed_off(sp: Spool) -> tuple[Sender, PeerRun, list[str]]:
    """A sender whose peer is backed off for a minute; the names it reads headers of."""
    sp.set_peer_state(DOWN.name, {"failures": 1, "until": time.time() + 60})
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    run = s.runs[DOWN.name]
    peeked: list[str] = []
    peek = sp.peek

    def spy(peer: str, name: str) -> tuple[int, int]:
        peeked.append(name)
        return peek(peer, name)

    sp.peek = spy  # type: ignore[method-assign]
    return s, run, peeked


def fail(run: PeerRun) -> None:
    """A batch to the peer starts and comes back failed."""
    run.fire(pr.START)
    run.batch_failed("could not connect")


def states(sp: Spool, ids: list[str]) -> list[str]:
    return [sp.find_out(i)[0][1] for i in ids]


def test_an_expired_message_of_a_backed_off_peer_goes_dead(sp: Spool) -> None:
    keep, later = put(sp, b"no ttl"), put(sp, b"an hour", ttl=3600)
    gone = put(sp, b"a moment", ttl=0.001)
    time.sleep(0.01)
    s, run, peeked = backed_off(sp)
    s.start_sends()  # the peer is backed off: nothing is sent, the queue is checked
    assert len(s.pool) == 0
    assert states(sp, [keep, later, gone]) == ["queued", "queued", "dead"]
    assert "ttl expired" in sp.out_meta(DOWN.name, gone)["error"]
    assert len(peeked) == 3
    s.start_sends()  # checked a moment ago: not again yet
    assert len(peeked) == 3
    assert 0 < s.sleep_for() <= pr.EXPIRE_EVERY  # the daemon wakes up for the next check


def test_without_a_ttl_ever_put_no_header_is_read(sp: Spool) -> None:
    put(sp, b"no ttl")
    s, _, peeked = backed_off(sp)
    s.start_sends()
    assert peeked == []
    assert s.sleep_for() > 10  # the backoff (capped at 30 s), not a check, is what it waits for


def test_an_empty_queue_is_listed_again_without_a_wake_up_after_a_while(sp: Spool) -> None:
    # A put that died between its link into queued/ and its wake-up leaves a message
    # nobody announced: the daemon finds it when it next lists the queue on its own.
    sp.peer_dir(DOWN)
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    run = s.runs[DOWN.name]
    assert run.next_batch(10, s.opts.batch_bytes) == []  # listed: empty
    batch = sp.batch([DOWN])
    batch.add(b"unannounced")
    sp.wakeups.wake_sender = lambda peers=(): 0  # type: ignore[method-assign]  # the put dies before waking
    [ident] = batch.commit()
    assert run.next_batch(10, s.opts.batch_bytes) == [], "listed again at once without a wake-up"
    assert s.sleep_for() <= pr.RELIST_IDLE  # the daemon wakes up to list again
    run.listed -= pr.RELIST_IDLE + 1
    assert [i for i, _, _ in run.next_batch(10, s.opts.batch_bytes)] == [ident]


# -- a failing peer: the backoff -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failures", [1023, 1024, pytest.param(10**400, id="10**400"), "many", -3, None, [1], float("inf")]
)
def test_the_backoff_is_capped_whatever_failure_count_peer_json_holds(sp: Spool, failures: object) -> None:
    put(sp, b"x")
    sp.set_peer_state(DOWN.name, {"failures": failures, "until": "soon", "last_ok": "never"})
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    run = s.runs[DOWN.name]
    assert run.until == 0 and run.send == pr.IDLE  # a bad time reads as "not backed off"
    fail(run)
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
    s.refresh_peers()
    run = s.runs[DOWN.name]
    assert run.until == 0
    fail(run)
    assert run.until > time.time()
    s.start_sends()
    try:
        assert len(s.pool) == 0
    finally:
        s.pool.close()
    if not once:
        assert s.sleep_for() > 0  # the daemon sleeps out the backoff


def test_a_once_pass_does_not_try_a_failed_peer_again(sp: Spool) -> None:
    put(sp, b"x")
    s = Sender(sp, SendOptions(once=True))
    s.refresh_peers()
    run = s.runs[DOWN.name]
    fail(run)
    assert run.send == pr.DEFERRED
    run.until = 0.0  # the backoff is over (a short backoff_min, a long pass): still not again
    s.start_sends()
    try:
        assert len(s.pool) == 0
    finally:
        s.pool.close()


# -- what libcurl cannot take --------------------------------------------------------------------


@pytest.mark.parametrize("token", ["tøken€", "tok\r\nX-Evil: 1", "tok\n", "a\0b"])
def test_a_token_http_cannot_carry_defers_the_peer(sp: Spool, token: str) -> None:
    put(sp, b"x")
    sp.config.peers[DOWN.name] = Peer(DOWN.name, DOWN.url, token)
    s = Sender(sp, SendOptions(once=True))
    s.refresh_peers()
    s.start_sends()
    assert len(s.pool) == 1
    s.drive(0)
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


# -- the per-peer state machines -------------------------------------------------------------------


def a_run(sp: Spool, *, once: bool = False) -> PeerRun:
    sp.peer_dir(DOWN)
    return PeerRun(DOWN, sp, once=once)


def machine(event: str) -> tuple[tuple[str, ...], str]:
    return (pr.SEND_STATES, "send") if event in pr.SEND_EVENTS else (pr.POLL_STATES, "poll")


@pytest.mark.parametrize("state, event", sorted(pr.TABLE), ids="-".join)
def test_every_transition_of_the_table_lands_in_a_state_of_its_machine(
    sp: Spool, state: str, event: str
) -> None:
    run = a_run(sp)
    states, attr = machine(event)
    assert state in states
    setattr(run, attr, state)
    run.sending = 1  # ok and fail are a batch coming back: one is in flight
    run.fire(event)
    assert getattr(run, attr) in states


def test_every_pair_outside_the_table_raises(sp: Spool) -> None:
    run = a_run(sp)
    missing = 0
    for states, events, attr in [
        (pr.SEND_STATES, pr.SEND_EVENTS, "send"),
        (pr.POLL_STATES, pr.POLL_EVENTS, "poll"),
    ]:
        for state in states:
            for event in events:
                if (state, event) in pr.TABLE:
                    continue
                setattr(run, attr, state)
                with pytest.raises(pr.TransitionError, match=f"no transition for {event} in state {state}"):
                    run.fire(event)
                assert getattr(run, attr) == state  # unchanged
                missing += 1
    assert missing  # e.g. a batch coming back to an idle peer


def test_a_batch_that_comes_back_to_an_idle_peer_is_a_bug(sp: Spool) -> None:
    run = a_run(sp)
    with pytest.raises(pr.TransitionError):
        run.fire(pr.OK)
    with pytest.raises(pr.TransitionError):
        run.fire(pr.FAIL)


def test_sending_backoff_and_back(sp: Spool) -> None:
    run = a_run(sp)
    assert run.send == pr.IDLE and run.may_send(time.time())
    run.fire(pr.START)
    run.fire(pr.START)
    assert (run.send, run.sending) == (pr.SENDING, pr.PIPELINE)
    assert not run.may_send(time.time())  # the pipeline is full
    run.batch_failed("could not connect")
    assert (run.send, run.sending) == (pr.BACKOFF, 1) and run.backed_off(time.time())
    assert not run.may_send(time.time())
    run.batch_ok()  # the other batch, started before the failure, went through: the peer is fine
    assert (run.send, run.sending, run.until) == (pr.IDLE, 0, 0)
    run.fire(pr.START)
    run.batch_failed("could not connect")
    assert run.send == pr.BACKOFF
    assert run.may_send(run.until + 1)  # the backoff is over: resumed
    assert run.send == pr.IDLE


def test_a_once_pass_defers_a_failed_peer_for_good(sp: Spool) -> None:
    run = a_run(sp, once=True)
    run.fire(pr.START)
    run.fire(pr.START)
    run.batch_failed("could not connect")
    assert run.send == pr.DEFERRED
    run.batch_ok()
    assert run.send == pr.DEFERRED and run.until == 0  # fine again, but not in this pass
    assert not run.may_send(time.time())


def test_a_run_starts_backed_off_as_peer_json_says_unless_now(sp: Spool) -> None:
    sp.peer_dir(DOWN)
    sp.set_peer_state(DOWN.name, {"failures": 2, "until": time.time() + 60})
    assert a_run(sp).send == pr.BACKOFF
    assert PeerRun(DOWN, sp, now=True).send == pr.IDLE


def test_polls_are_due_after_a_send_and_back_off_while_nothing_changes(sp: Spool) -> None:
    run = a_run(sp)
    now = time.monotonic()
    assert run.poll == pr.QUIET and not run.poll_due(now + 60, force=False)
    assert run.poll_due(now, force=True)  # a --once pass asks once anyway
    run.fire(pr.SENT)
    assert run.poll == pr.DUE and run.poll_due(now + pr.POLL_MIN + 1, force=False)
    run.fire(pr.ASK)
    assert run.poll == pr.POLLING and not run.poll_due(now + 60, force=True)
    run.fire(pr.NO_NEWS)
    assert run.poll == pr.DUE and run.poll_gap == pr.POLL_MIN * 1.5
    run.fire(pr.ASK)
    run.fire(pr.NEWS)
    assert run.poll_gap == pr.POLL_MIN
    run.fire(pr.ASK)
    run.fire(pr.ERROR)
    assert run.poll_at >= time.monotonic() + pr.POLL_MAX - 1
    run.fire(pr.ROUND_OVER)  # nothing left to ask about, no full poll before: quiet
    assert (run.poll, run.poll_at) == (pr.QUIET, 0)


# -- reading a batch: small messages whole, once ------------------------------------------------------


@pytest.mark.parametrize("extra, whole", [(0, True), (1, False)])
def test_a_message_up_to_in_memory_bytes_is_read_whole_for_its_batch(
    sp: Spool, extra: int, whole: bool
) -> None:
    ident = put(sp, b"x" * (pr.IN_MEMORY + extra), ttl=3600)
    name = sp.find_out(ident)[0][2]
    path = Path(sp.path("out", DOWN.name, "queued", name))
    deadline, size, data = sp.outbox.load(DOWN.name, name, pr.IN_MEMORY)
    assert (deadline, size) == sp.peek(DOWN.name, name)
    assert data == (path.read_bytes() if whole else None)
    s = Sender(sp, SendOptions())
    s.refresh_peers()
    [(got, src, _)] = s.runs[DOWN.name].next_batch(10, s.opts.batch_bytes)
    assert got == ident and src == (path.read_bytes() if whole else str(path))


def test_a_receipt_poll_names_the_creation_prefix_of_a_generated_id() -> None:
    # a relayed entry's name carries its arrival at the relay; the peer's inbox name the
    # message's creation at its origin, which a generated id starts with
    from dropr.sender import _created_prefix

    assert _created_prefix("51111111111111", "0123456789abc0123456789a") == "50123456789abc"
    assert _created_prefix("51111111111111", "chosen-id") == "51111111111111"


# -- many peers: a pass costs what has work, polls in flight are bounded ---------------------------


def _peers(sp: Spool, n: int) -> list[Peer]:
    peers = [Peer(f"p{i:03d}", "http://127.0.0.1:9/") for i in range(n)]
    for p in peers:
        batch = sp.batch([p])
        batch.add(b"x")
        batch.commit()
    return peers


def test_receipt_polls_in_flight_are_bounded_however_many_peers_wait(sp: Spool) -> None:
    from dropr.sender import POLL_SLOTS

    peers = _peers(sp, POLL_SLOTS + 40)
    for p in peers:
        sp.mark_sent(p.name, sp.out_names(p.name, "queued"))
    s = Sender(sp, SendOptions(concurrency=2))
    s.refresh_peers()
    try:
        s._start_polls(force=True)
        assert len(s.pool) == 2 + POLL_SLOTS  # a thousand peers took a thousand handles at once
        asked = [r for r in s.runs.values() if r.poll == pr.POLLING]
        assert len(asked) == 2 + POLL_SLOTS
        assert all(r.poll_due(time.monotonic(), force=True) for r in s.runs.values() if r not in asked)
    finally:
        s.pool.close()


def test_a_pass_looks_at_no_drained_peer(sp: Spool) -> None:
    _peers(sp, 30)
    s = Sender(sp, SendOptions(concurrency=256))
    s.refresh_peers()
    looked: list[str] = []
    for run in s.runs.values():
        take = run.next_batch

        def spy(room: int, size: int, name: str = run.peer.name, take: Any = take) -> Any:
            looked.append(name)
            return take(room, size)

        run.next_batch = spy  # type: ignore[method-assign]
    try:
        s.start_sends()
        assert len(s.pool) == 30
        looked.clear()
        s.start_sends()  # every queue was taken whole and nothing woke the sender: a thousand
        assert looked == []  # drained peers made each pass cost milliseconds
        s.runs["p007"].dirty = True  # a wake-up: that queue is looked at again
        s.start_sends()
        assert looked == ["p007"]
    finally:
        s.pool.close()
