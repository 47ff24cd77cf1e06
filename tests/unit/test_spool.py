"""The spool library: puts, faults mid-commit, sweeping, retention, the inbox and wake-ups."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr import spool as spool_mod
from dropr.config import Config, Peer
from dropr.errors import (
    EX_TEMPFAIL,
    ConfigError,
    DataError,
    DroprError,
    NotFoundError,
    TempFailError,
)
from dropr.spool import Spool, _fs, _layout
from dropr.spool import wake as wake_mod
from helpers import CLAIM_FIELDS, receive
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

A = Peer("a", "http://127.0.0.1:9/a/")
B = Peer("b", "http://127.0.0.1:9/b/")
FAR_FUTURE = 10 * 365 * 86400.0


@pytest.fixture
def sp(spool_dir: Path) -> Spool:
    return Spool(str(spool_dir))


def put(sp: Spool, payloads: list[bytes], peers: list[Peer] | None = None, **kw: Any) -> list[str]:
    batch = sp.batch(peers or [A], **kw)
    for p in payloads:
        batch.add(p)
    return batch.commit()


def payload_of(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(m.HEADER_SIZE)
        return f.read()


def all_out_files(sp: Spool) -> list[str]:
    """Every file in every outbox state folder."""
    found = []
    for peer in sp.out_peers():
        for state in spool_mod.OUT_STATES:
            found += [os.path.join(peer, state, n) for n in sp.out_names(peer, state)]
    return found


def assert_nothing_partial(sp: Spool) -> None:
    """No message visible in any outbox state, nothing left in tmp/ or ids/."""
    assert all_out_files(sp) == []
    assert os.listdir(sp.tmp) == []


def out_path(sp: Spool, peer: str, state: str, name: str) -> str:
    return sp.path("out", peer, state, name)


# -- put ----------------------------------------------------------------------


def test_put_single(sp: Spool) -> None:
    before = m.now_us()
    [ident] = put(sp, [b"hello"], channel="jobs", priority=3)
    found = sp.find_out(ident)
    assert len(found) == 1
    peer, state, name = found[0]
    assert (peer, state) == ("a", "queued")
    prio, arrival, nid = m.parse_out_name(name)
    assert (prio, nid) == (3, ident) and arrival >= before
    hdr = sp.read_header(peer, state, name)
    assert (hdr.ident, hdr.channel, hdr.priority, hdr.size, hdr.deadline) == (
        ident,
        "jobs",
        3,
        5,
        0,
    )
    assert hdr.crc == m.crc32(b"hello")
    assert payload_of(out_path(sp, peer, state, name)) == b"hello"
    assert sp.peer_url("a") == A.url
    assert os.listdir(sp.tmp) == []


def test_put_empty_payload(sp: Spool) -> None:
    [ident] = put(sp, [b""])
    [(peer, state, name)] = sp.find_out(ident)
    assert sp.read_header(peer, state, name).size == 0


def test_put_many_in_one_commit_keeps_order(sp: Spool) -> None:
    n = spool_mod.SYNC_EACH_MAX * 3  # past the fsync-each threshold: the syncfs path
    payloads = [f"msg {i}".encode() for i in range(n)]
    ids = put(sp, payloads)
    assert len(ids) == n == len(set(ids))
    names = sp.out_names("a", "queued")
    assert [m.parse_out_name(x)[2] for x in names] == ids, "names sort in arrival order"
    for ident, p in zip(ids, payloads, strict=True):
        [(_, _, name)] = sp.find_out(ident)
        assert payload_of(out_path(sp, "a", "queued", name)) == p
    assert os.listdir(sp.tmp) == []


def test_put_multicast_is_one_inode_linked_per_peer(sp: Spool) -> None:
    [ident] = put(sp, [b"to both"], peers=[A, B])
    found = sp.find_out(ident)
    assert sorted((p, s) for p, s, _ in found) == [("a", "queued"), ("b", "queued")]
    stats = [os.stat(out_path(sp, p, s, n)) for p, s, n in found]
    assert stats[0].st_ino == stats[1].st_ino
    assert all(st.st_nlink == 2 for st in stats)
    assert os.listdir(sp.tmp) == []


def test_multicast_copies_stay_one_inode_across_states(sp: Spool) -> None:
    [ident] = put(sp, [b"x"], peers=[A, B])
    [(_, _, name), _] = sp.find_out(ident)
    assert sp.mark_sent("a", [name]) == 1
    ino_a = os.stat(out_path(sp, "a", "sent", name)).st_ino
    ino_b = os.stat(out_path(sp, "b", "queued", name)).st_ino
    assert ino_a == ino_b
    assert sorted((p, s) for p, s, _ in sp.find_out(ident)) == [("a", "sent"), ("b", "queued")]


def test_put_stream_from_file(sp: Spool, tmp_path: Path) -> None:
    data = os.urandom(3 * spool_mod.CHUNK + 123)
    src = tmp_path / "big"
    src.write_bytes(data)
    batch = sp.batch([A])
    with open(src, "rb") as f:
        batch.add_stream(f)
    [ident] = batch.commit()
    [(_, _, name)] = sp.find_out(ident)
    hdr = sp.read_header("a", "queued", name)
    assert hdr.size == len(data) and hdr.crc == m.crc32(data)
    assert payload_of(out_path(sp, "a", "queued", name)) == data


def test_put_stream_over_limit_leaves_nothing(sp: Spool, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.write_bytes(b"x" * 5000)
    batch = sp.batch([A])
    with open(src, "rb") as f, pytest.raises(DataError):
        batch.add_stream(f, limit=4096)
    assert batch.commit() == []
    assert_nothing_partial(sp)


def test_ttl_is_recorded_in_the_header(sp: Spool) -> None:
    [ident] = put(sp, [b"x"], ttl=90)
    [(_, _, name)] = sp.find_out(ident)
    hdr = sp.read_header("a", "queued", name)
    assert hdr.deadline == hdr.created + 90_000_000
    assert hdr.created == m.parse_out_name(name)[1]


def test_bad_channel_is_refused(sp: Spool) -> None:
    for bad in ("../x", ".hidden", "a/b", "x" * 41):
        with pytest.raises(ValueError):
            sp.batch([A], channel=bad)


def test_batch_needs_a_destination(sp: Spool) -> None:
    with pytest.raises(DataError):
        sp.batch([])


def test_find_out_of_generated_id_needs_no_index(sp: Spool) -> None:
    ids = [put(sp, [b"p"], priority=p)[0] for p in (0, 5, 9)]
    assert os.listdir(sp.path("ids")) == []
    for ident, p in zip(ids, (0, 5, 9), strict=True):
        [(_, _, name)] = sp.find_out(ident)
        assert name.startswith(str(p))
    assert sp.find_out("0" * 24) == []
    assert sp.find_out("never-put") == []


# -- idempotent caller ids ----------------------------------------------------


def test_caller_id_put_twice_is_a_noop(sp: Spool) -> None:
    batch = sp.batch([A])
    batch.add(b"first", "order-4711")
    assert batch.commit() == ["order-4711"]
    batch = sp.batch([A])
    batch.add(b"second", "order-4711")
    assert batch.commit() == ["order-4711"]
    [(_, _, name)] = sp.find_out("order-4711")
    assert payload_of(out_path(sp, "a", "queued", name)) == b"first"
    assert len(sp.out_names("a", "queued")) == 1
    assert os.listdir(sp.tmp) == []


def test_caller_id_noop_in_any_state_and_for_other_peers(sp: Spool) -> None:
    batch = sp.batch([A])
    batch.add(b"first", "job-1")
    batch.commit()
    [(_, _, name)] = sp.find_out("job-1")
    sp.mark_sent("a", [name])
    batch = sp.batch([A, B])
    batch.add(b"again", "job-1")
    assert batch.commit() == ["job-1"]
    assert sp.find_out("job-1") == [("a", "sent", name)]


def test_caller_id_twice_in_one_batch_stores_once(sp: Spool) -> None:
    batch = sp.batch([A])
    batch.add(b"one", "dup")
    batch.add(b"two", "dup")
    assert batch.commit() == ["dup", "dup"]
    [(_, _, name)] = sp.find_out("dup")
    assert payload_of(out_path(sp, "a", "queued", name)) == b"one"
    assert os.listdir(sp.tmp) == []


def test_caller_id_that_looks_generated_is_found(sp: Spool) -> None:
    ident = "0123456789abc0123456789a"
    batch = sp.batch([A], priority=2)
    batch.add(b"x", ident)
    batch.commit()
    assert [s for _, s, _ in sp.find_out(ident)] == ["queued"]


def test_bad_caller_id_is_refused(sp: Spool) -> None:
    batch = sp.batch([A])
    with pytest.raises(ValueError):
        batch.add(b"x", "../x")
    assert_nothing_partial(sp)


# -- node name ----------------------------------------------------------------


def test_node_is_fixed_at_first_use(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPR_NODE", "web1")
    assert Spool(str(spool_dir)).node == "web1"
    assert (spool_dir / "node").read_text().strip() == "web1"
    monkeypatch.delenv("DROPR_NODE")
    monkeypatch.setattr(spool_mod, "_safe_hostname", lambda: "renamed-host")
    assert Spool(str(spool_dir)).node == "web1", "a new host name must not change the node"
    monkeypatch.setenv("DROPR_NODE", "web2")
    with pytest.raises(ConfigError) as exc:
        Spool(str(spool_dir))
    assert "web1" in str(exc.value) and "web2" in str(exc.value)
    monkeypatch.delenv("DROPR_NODE")
    with pytest.raises(ConfigError):
        Spool(str(spool_dir), Config({"node": "web3"}))
    assert Spool(str(spool_dir), Config({"node": "web1"})).node == "web1"


def test_node_defaults_to_a_safe_host_name(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "my host.example.com", "", "", "")))
    node = Spool(str(spool_dir)).node
    assert node == "my-host"
    m.check_name(node)


def test_bad_node_name_is_config_error(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPR_NODE", "../evil")
    with pytest.raises(ConfigError):
        Spool(str(spool_dir))
    assert not (spool_dir / "node").exists()


def test_opening_a_missing_spool_without_create(spool_dir: Path) -> None:
    with pytest.raises(NotFoundError):
        Spool(str(spool_dir), create=False)
    assert not spool_dir.exists()


# -- faults mid-put -----------------------------------------------------------

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def failing(real: Callable[..., Any], fail_on: Callable[..., bool]) -> Callable[..., Any]:
    """Wrap real so that it raises ENOSPC whenever fail_on(call number, *args) says so."""
    calls = {"n": 0}

    def fake(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if fail_on(calls["n"], *args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kw)

    return fake


def is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


# (what to break, how many messages, peers, predicate on (call number, *args))
COMMIT_FAULTS: dict[str, tuple[str, int, list[Peer], Callable[..., bool]]] = {
    "link of the 3rd message": ("link", 3, [A], lambda n, *a: n == 3),
    "link of the 1st message": ("link", 2, [A], lambda n, *a: n == 1),
    "unlink of the tmp file": ("unlink", 2, [A], lambda n, *a: n == 2),
    "link to the 2nd peer": ("link", 1, [A, B], lambda n, *a: n == 2),
    "link of the 2nd message": ("link", 2, [A, B], lambda n, *a: n == 3),
    "fsync of a file": ("fsync", 3, [A], lambda n, fd: not is_dir_fd(fd) and n == 2),
    "fsync of the queued dir": ("fsync", 2, [A], lambda n, fd: is_dir_fd(fd)),
    "fsync of a dir after multicast": ("fsync", 1, [A, B], lambda n, fd: is_dir_fd(fd) and n > 2),
    "syncfs of the data": ("syncfs", 8, [A], lambda n, fd: n == 1),
    "fsync of the names of a batch": ("fsync", 8, [A, B], lambda n, fd: is_dir_fd(fd) and n == 2),
}


@pytest.mark.parametrize("fault", list(COMMIT_FAULTS))
def test_commit_fault_leaves_nothing_partial(sp: Spool, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    what, count, peers, fail_on = COMMIT_FAULTS[fault]
    put(sp, [b"already there"], peers=peers)  # earlier messages must survive untouched
    before = sorted(all_out_files(sp))
    batch = sp.batch(peers)
    for i in range(count):
        batch.add(f"payload {i}".encode())
    owner = _fs if what == "syncfs" else os
    monkeypatch.setattr(owner, what, failing(getattr(owner, what), fail_on))
    with pytest.raises(TempFailError) as exc:
        batch.commit()
    monkeypatch.undo()
    assert exc.value.code == EX_TEMPFAIL
    assert "\n" not in str(exc.value) and "space" in str(exc.value)
    assert sorted(all_out_files(sp)) == before
    assert os.listdir(sp.tmp) == []
    assert batch.ids == []
    # and the spool still works
    ids = put(sp, [b"after"], peers=peers)
    assert len(sp.find_out(ids[0])) == len(peers)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_write_fault_leaves_nothing(sp: Spool, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    batch = sp.batch([A])
    if fail_at == 2:
        batch.add(b"first")  # written fine, then the second add fails: the batch is dropped
    monkeypatch.setattr(os, "write", failing(os.write, lambda n, *a: True))
    with pytest.raises(TempFailError):
        batch.add(b"doomed")
    monkeypatch.undo()
    assert len(batch) == 0
    assert batch.commit() == []
    assert_nothing_partial(sp)


def test_stream_write_fault_midway_leaves_nothing(
    sp: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"y" * (3 * spool_mod.CHUNK))
    batch = sp.batch([A])
    monkeypatch.setattr(os, "write", failing(os.write, lambda n, *a: n == 2))
    with open(src, "rb") as f, pytest.raises(TempFailError):
        batch.add_stream(f)
    monkeypatch.undo()
    assert batch.commit() == []
    assert_nothing_partial(sp)


def test_tmp_create_fault(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = sp.batch([A])
    real_open = os.open
    monkeypatch.setattr(os, "open", failing(real_open, lambda n, path, *a: str(path).startswith(sp.tmp)))
    with pytest.raises(TempFailError):
        batch.add(b"x")
    monkeypatch.undo()
    assert_nothing_partial(sp)


def test_short_write_never_commits_a_truncated_message(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write

    def short(fd: int, data: bytes) -> int:
        return real(fd, data[: max(1, len(data) // 2)])

    batch = sp.batch([A])
    monkeypatch.setattr(os, "write", short)
    try:
        batch.add(b"z" * 1000)
        ids = batch.commit()
    except DroprError:
        ids = []
    monkeypatch.undo()
    for ident in ids:
        for peer, state, name in sp.find_out(ident):
            hdr = sp.read_header(peer, state, name)  # ValueError if the payload is short
            assert payload_of(out_path(sp, peer, state, name)) == b"z" * 1000
            assert hdr.size == 1000


def test_retry_of_caller_id_after_a_failed_commit_stores_it(
    sp: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = sp.batch([A])
    batch.add(b"x", "order-1")
    monkeypatch.setattr(os, "link", failing(os.link, lambda n, *a: True))
    with pytest.raises(TempFailError):
        batch.commit()
    monkeypatch.undo()
    assert_nothing_partial(sp)
    assert os.listdir(sp.path("ids")) == [], "the failed commit left its index entry"
    batch = sp.batch([A])
    batch.add(b"x", "order-1")
    assert batch.commit() == ["order-1"]
    assert [s for _, s, _ in sp.find_out("order-1")] == ["queued"]


def test_dangling_caller_id_index_is_replaced_when_old(sp: Spool) -> None:
    # a putter killed between the ids/ symlink and the link leaves this behind
    link = sp.path("ids", "order-9")
    os.symlink("51234567890abc", link)
    old = time.time() - 3600
    os.utime(link, (old, old), follow_symlinks=False)
    batch = sp.batch([A])
    batch.add(b"x", "order-9")
    assert batch.commit() == ["order-9"]
    [(_, state, name)] = sp.find_out("order-9")
    assert payload_of(out_path(sp, "a", state, name)) == b"x"


# -- sweeping and retention ---------------------------------------------------


def backdate(path: str | Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_tmp_leftovers_are_swept_by_age(sp: Spool) -> None:
    old = Path(sp.tmp) / "12345.1.crashed"
    old.write_bytes(b"half a message")
    backdate(old, spool_mod.TMP_MAX_AGE + 60)
    young = Path(sp.tmp) / "12345.2.writing"
    young.write_bytes(b"still being written")
    backdate(young, spool_mod.TMP_MAX_AGE - 3600)
    batch = sp.batch([A])
    batch.add(b"pending")  # an uncommitted put in progress must not be swept
    assert sp.purge() == 1
    assert not old.exists() and young.exists()
    [ident] = batch.commit()
    assert sp.find_out(ident)


def test_put_whose_tmp_was_swept_fails_cleanly(sp: Spool) -> None:
    batch = sp.batch([A])
    batch.add(b"slow writer")
    sp.purge(now=time.time() + spool_mod.TMP_MAX_AGE + 60)
    with pytest.raises(DroprError):
        batch.commit()
    assert_nothing_partial(sp)


@pytest.fixture(autouse=True)
def _close_entries() -> Iterator[None]:
    yield
    while _OPEN:
        os.close(_OPEN.pop())


_OPEN: list[int] = []  # descriptors of files written as their rcv/ entry, as dropr-serve keeps them


def _receive(sp: Spool, origin: str, hdr: m.Header, payload: bytes) -> tuple[str, m.Header, int]:
    """Write a payload as dropr-serve does; return the item for Spool.store."""
    item = receive(sp, origin, hdr, payload)
    if item[2] >= 0:
        _OPEN.append(item[2])
    return item


def _inbox_message(
    sp: Spool, origin: str, ident: str, payload: bytes, channel: str = "default", priority: int = 5
) -> str:
    hdr = m.Header(ident, channel, priority, m.now_us(), 0, len(payload), m.crc32(payload))
    [result] = sp.store(origin, [_receive(sp, origin, hdr, payload)])
    return result


def test_purge_after_retention(sp: Spool) -> None:
    ids = put(sp, [b"q", b"s", b"p", b"d"])
    names = {i: sp.find_out(i)[0][2] for i in ids}
    q, s, p, d = ids
    sp.mark_sent("a", [names[s], names[p]])
    sp.mark_processed("a", [names[p]])
    sp.kill("a", [names[d]], "too large")
    batch = sp.batch([A])
    batch.add(b"c", "caller-id")
    batch.commit()
    cname = sp.find_out("caller-id")[0][2]
    sp.mark_sent("a", [cname])
    sp.mark_processed("a", [cname])
    for i, ident in enumerate(["r1", "c1", "k1", "x1"]):
        assert _inbox_message(sp, "web1", ident, str(i).encode()) == "stored"
    claims = {c.ident: c for c in sp.claim("default", 3, 300)}
    sp.finish("default", claims["r1"].name, "ack")
    sp.finish("default", claims["c1"].name, "reject", reason="bad")
    # c1 was rejected, r1 done, k1 claimed, x1 ready

    assert sp.purge() == 0, "nothing is old yet"
    removed = sp.purge(now=time.time() + FAR_FUTURE)
    assert removed == 5
    assert [x[1] for x in sp.find_out(q)] == ["queued"]
    assert [x[1] for x in sp.find_out(s)] == ["sent"]
    assert sp.find_out(p) == [] and sp.find_out(d) == [] and sp.find_out("caller-id") == []
    assert not os.path.lexists(sp.path("ids", "caller-id"))
    assert not os.path.exists(sp.path("out", "a", "meta", d))
    assert sp.find_in("web1", "r1") is None and sp.find_in("web1", "c1") is None
    assert not os.path.lexists(sp.path("rcv", "web1", "r1"))
    assert not os.path.exists(sp.path("in", "default", "meta", "web1,c1"))
    assert sp.find_in("web1", "k1")[1] == "claimed"  # type: ignore[index]
    assert sp.find_in("web1", "x1")[1] == "ready"  # type: ignore[index]
    # after the purge the id may be received again (retention is the exactly-once window)
    assert _inbox_message(sp, "web1", "r1", b"again") == "stored"


def _dead_entry(sp: Spool) -> None:
    [ident] = put(sp, [b"x"])
    sp.kill("a", [sp.find_out(ident)[0][2]], "given up")


def test_purge_if_due_runs_at_most_every_so_often(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir), Config({"limits": {"retention": "0s"}}))
    _dead_entry(sp)
    time.sleep(0.05)  # older than a retention of 0 (ctime)
    assert sp.purge_if_due(600) == 1
    stamp = sp.path("lock", "purged")
    _dead_entry(sp)
    time.sleep(0.05)
    assert sp.purge_if_due(600) == 0, "purged a moment ago: not due"
    os.utime(stamp, (0, 0))  # as if the last purge was long ago
    assert sp.purge_if_due(600) == 1
    assert time.time() - os.stat(stamp).st_mtime < 60, "the stamp moved"


def test_purge_if_due_leaves_it_to_a_purge_already_running(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir), Config({"limits": {"retention": "0s"}}))
    _dead_entry(sp)
    time.sleep(0.05)
    fd = os.open(sp.path("lock", "purge.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process purging
        t0 = time.monotonic()
        assert sp.purge_if_due(0) == 0
        assert time.monotonic() - t0 < 1, "it did not wait for the lock"
    finally:
        os.close(fd)
    assert sp.purge_if_due(0) == 1


def test_purge_respects_configured_retention(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir), Config({"limits": {"retention": "1h"}}))
    [ident] = put(sp, [b"x"])
    name = sp.find_out(ident)[0][2]
    sp.kill("a", [name], "given up")
    assert sp.purge(now=time.time() + 1800) == 0
    assert sp.purge(now=time.time() + 3700) == 1


# -- inbox --------------------------------------------------------------------


def test_store_and_find_in(sp: Spool) -> None:
    created = m.now_us() - 5_000_000
    tmp = sp.tmp_name("rcv")
    Path(tmp).write_bytes(b"payload")
    hdr = m.Header("abc", "jobs", 2, created, 0, 7, m.crc32(b"payload"))
    assert sp.store("web1", [(tmp, hdr, -1)]) == ["stored"]
    found = sp.find_in("web1", "abc")
    assert found is not None
    channel, state, name, got_created = found
    assert (channel, state, got_created) == ("jobs", "ready", created)
    assert m.parse_in_name(name)[0] == 2 and m.parse_in_name(name)[2:] == ("web1", "abc")
    assert Path(sp.path("in", "jobs", "ready", name)).read_bytes() == b"payload"
    assert os.listdir(sp.tmp) == []
    assert sp.find_in("web2", "abc") is None, "ids are per origin"
    assert sp.find_in("web1", "nope") is None


def test_store_duplicate_is_answered_duplicate(sp: Spool) -> None:
    assert _inbox_message(sp, "web1", "m1", b"one") == "stored"
    assert _inbox_message(sp, "web1", "m1", b"two") == "duplicate"
    assert _inbox_message(sp, "web2", "m1", b"three") == "stored"
    names = sp.in_names("default", "ready")
    assert len(names) == 2
    [(_, _, name, _)] = [sp.find_in("web1", "m1")]  # type: ignore[misc]
    assert Path(sp.path("in", "default", "ready", name)).read_bytes() == b"one"
    assert os.listdir(sp.tmp) == []


def test_store_duplicate_in_any_state_and_in_one_batch(sp: Spool) -> None:
    items = []
    for ident in ["d1", "d2", "d1", "d3", "d4", "d5", "d2"]:  # > SYNC_EACH_MAX: syncfs path
        tmp = sp.tmp_name("rcv")
        Path(tmp).write_bytes(ident.encode())
        items.append((tmp, m.Header(ident, "default", 5, m.now_us(), 0, 2, 0), -1))
    assert sp.store("web1", items) == [
        "stored",
        "stored",
        "duplicate",
        "stored",
        "stored",
        "stored",
        "duplicate",
    ]
    assert len(sp.in_names("default", "ready")) == 5
    claims = sp.claim("default", 5, 300)
    for c in claims[:2]:
        sp.finish("default", c.name, "ack")
    for c in claims[2:]:
        sp.finish("default", c.name, "reject", reason="no")
    for ident in ["d1", "d2", "d3", "d4", "d5"]:
        assert _inbox_message(sp, "web1", ident, b"again") == "duplicate"
    assert os.listdir(sp.tmp) == []


def test_store_dangling_rcv_link_is_replaced(sp: Spool) -> None:
    # a receiver killed between the symlink and the rename
    os.makedirs(sp.path("rcv", "web1"), exist_ok=True)
    os.symlink("default/51234567890abc/1", sp.path("rcv", "web1", "lost"))
    assert _inbox_message(sp, "web1", "lost", b"resent") == "stored"
    assert sp.find_in("web1", "lost") is not None


def _fill_inbox(sp: Spool, specs: list[tuple[str, int]], channel: str = "default") -> None:
    for ident, prio in specs:
        assert _inbox_message(sp, "web1", ident, ident.encode(), channel, prio) == "stored"


def test_claim_order_is_priority_then_arrival(sp: Spool) -> None:
    _fill_inbox(sp, [("late-5", 5), ("urgent-0", 0), ("lazy-9", 9), ("later-5", 5), ("next-1", 1)])
    claims = sp.claim("default", 10, 300)
    assert [c.ident for c in claims] == ["urgent-0", "next-1", "late-5", "later-5", "lazy-9"]
    assert sp.claim("default", 1, 300) == []
    assert sp.claim("no-such-channel", 1, 300) == []


def test_claim_sets_a_lease_and_ack_finishes(sp: Spool) -> None:
    _fill_inbox(sp, [("a1", 5), ("a2", 5)])
    t0 = time.time()
    [c] = sp.claim("default", 1, 120)
    assert c.ident == "a1" and c.origin == "web1"
    assert Path(c.path).read_bytes() == b"a1"
    assert abs(os.stat(c.path).st_mtime - (t0 + 120)) < 5
    assert c.expiry == pytest.approx(t0 + 120, abs=5)
    assert sp.find_in("web1", "a1")[1] == "claimed"  # type: ignore[index]
    info = c.info()
    assert set(info) == CLAIM_FIELDS
    assert (info["id"], info["channel"], info["size"], info["attempt"]) == ("a1", "default", 2, 1)
    assert sp.finish("default", c.name, "ack") is True
    assert sp.find_in("web1", "a1")[1] == "done"  # type: ignore[index]
    assert sp.in_status("web1", "a1") == ("processed", "")
    assert sp.in_status("web1", "a2") == ("pending", "")
    assert sp.in_status("web1", "zz") == ("unknown", "")
    assert sp.finish("default", c.name, "ack") is False, "a finished claim cannot be acked twice"


def test_release_counts_the_return(sp: Spool) -> None:
    _fill_inbox(sp, [("r", 5)])
    [c] = sp.claim("default", 1, 300)
    assert sp.finish("default", c.name, "release") is True
    assert sp.find_in("web1", "r")[1] == "ready"  # type: ignore[index]
    assert sp.in_meta("default", "web1", "r")["returns"] == 1
    [c] = sp.claim("default", 1, 300)
    assert c.info()["attempt"] == 2


def test_release_with_delay_waits_until_due(sp: Spool) -> None:
    _fill_inbox(sp, [("w", 5)])
    [c] = sp.claim("default", 1, 300)
    t0 = time.time()
    assert sp.finish("default", c.name, "release", delay=600) is True
    assert sp.find_in("web1", "w")[1] == "wait"  # type: ignore[index]
    wait_path = sp.path("in", "default", "wait", c.name)
    assert os.stat(wait_path).st_mtime == pytest.approx(t0 + 600, abs=5)
    assert sp.claim("default", 1, 300) == [], "not due yet"
    backdate(wait_path, 1)
    [again] = sp.claim("default", 1, 300)
    assert again.ident == "w"


def test_reject_is_dead_with_reason(sp: Spool) -> None:
    _fill_inbox(sp, [("bad", 5)])
    [c] = sp.claim("default", 1, 300)
    assert sp.finish("default", c.name, "reject", reason="cannot parse") is True
    assert sp.find_in("web1", "bad")[1] == "dead"  # type: ignore[index]
    assert sp.in_status("web1", "bad") == ("dead", "cannot parse")
    assert sp.claim("default", 1, 300) == []


def test_expired_lease_returns_to_ready(sp: Spool) -> None:
    _fill_inbox(sp, [("e", 5)])
    [c] = sp.claim("default", 1, 300)
    assert sp.claim("default", 1, 300) == [], "the lease holds"
    backdate(c.path, 1)
    assert sp.leases.sweep_channel("default") == 1
    assert sp.find_in("web1", "e")[1] == "ready"  # type: ignore[index]
    assert sp.in_meta("default", "web1", "e")["error"] == "lease expired"
    [c2] = sp.claim("default", 1, 300)
    assert c2.ident == "e" and c2.info()["attempt"] == 2
    assert sp.finish("default", c.name, "ack") is True  # same name: the old holder's ack still lands
    assert sp.finish("default", c2.name, "ack") is False


def test_lease_zero_expires_at_once(sp: Spool) -> None:
    _fill_inbox(sp, [("z", 5)])
    [c] = sp.claim("default", 1, 0)
    [c2] = sp.claim("default", 1, 300)  # the sweep inside claim takes it back
    assert c2.ident == c.ident


def test_renew_extends_and_reports_loss(sp: Spool) -> None:
    _fill_inbox(sp, [("n", 5)])
    [c] = sp.claim("default", 1, 1)
    assert c.renew(600) is True
    assert os.stat(c.path).st_mtime > time.time() + 500
    sp.finish("default", c.name, "ack")
    assert c.renew(600) is False


def test_expired_lease_out_of_attempts_is_dead(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir), Config({"limits": {"max_attempts": 1}}))
    _fill_inbox(sp, [("once", 5)])
    [c] = sp.claim("default", 1, 300)
    backdate(c.path, 1)
    assert sp.claim("default", 1, 300) == []
    assert sp.in_status("web1", "once")[0] == "dead"


def test_two_consumers_never_get_the_same_message(spool_dir: Path) -> None:
    sp1, sp2 = Spool(str(spool_dir)), Spool(str(spool_dir))
    _fill_inbox(sp1, [(f"m{i}", i % 10) for i in range(20)])
    got1: list[str] = []
    got2: list[str] = []
    for _ in range(12):
        got1 += [c.ident for c in sp1.claim("default", 1, 300)]
        got2 += [c.ident for c in sp2.claim("default", 2, 300)]
    assert not set(got1) & set(got2)
    assert sorted(got1 + got2) == sorted(f"m{i}" for i in range(20))


def test_claimed_index(sp: Spool) -> None:
    _fill_inbox(sp, [("c1", 5)], channel="one")
    _fill_inbox(sp, [("c2", 5)], channel="two")
    sp.claim("one", 1, 300)
    sp.claim("two", 1, 300)
    idx = sp.claimed_index()
    assert set(idx) == {"c1", "c2", "web1,c1", "web1,c2"}
    assert [ch for ch, _ in idx["c1"]] == ["one"]
    assert [ch for ch, _ in idx["web1,c2"]] == ["two"]
    assert "web2,c2" not in idx


# -- outbox sender-side transitions ---------------------------------------------


def test_out_transitions_and_meta(sp: Spool) -> None:
    [i1, i2] = put(sp, [b"1", b"2"])
    n1, n2 = sp.find_out(i1)[0][2], sp.find_out(i2)[0][2]
    assert sp.mark_sent("a", [n1, n2]) == 2
    assert sp.mark_sent("a", [n1]) == 0, "already moved"
    assert sp.mark_processed("a", [n1]) == 1
    sp.record_failure("a", n2, "connection refused")
    assert sp.find_out(i2)[0][1] == "sent"
    assert sp.out_meta("a", i2)["attempts"] == 1
    sp.kill("a", [n2], "forbidden", state="sent")
    assert sp.find_out(i2)[0][1] == "dead"
    meta = sp.out_meta("a", i2)
    assert meta["attempts"] == 2 and meta["error"] == "forbidden"


def test_peer_state_round_trips(sp: Spool) -> None:
    put(sp, [b"x"])
    assert sp.peer_state("a") == {}
    sp.set_peer_state("a", {"until": 12.5, "last_error": "refused"})
    assert sp.peer_state("a") == {"until": 12.5, "last_error": "refused"}
    assert not os.path.exists(sp.path("out", "a", "peer.json.new"))


def test_read_header_detects_truncation_and_corrupt_moves_aside(sp: Spool) -> None:
    [ident] = put(sp, [b"0123456789"])
    name = sp.find_out(ident)[0][2]
    path = out_path(sp, "a", "queued", name)
    os.truncate(path, m.HEADER_SIZE + 4)
    with pytest.raises(ValueError):
        sp.read_header("a", "queued", name)
    dest = sp.corrupt(path, "payload is 4 bytes, header says 10")
    assert not os.path.exists(path) and os.path.exists(dest)
    assert os.path.dirname(dest) == sp.path("corrupt")
    assert sp.find_out(ident) == []


# -- wake-ups -----------------------------------------------------------------


@pytest.fixture
def waiter(sp: Spool) -> Iterator[spool_mod.Waiter]:
    w = sp.wakeups.sender()
    yield w
    w.close()


def test_put_wakes_a_waiting_sender(sp: Spool, waiter: spool_mod.Waiter) -> None:
    assert waiter.wait(0) is False
    put(sp, [b"x"])
    assert waiter.wait(5) is True
    assert waiter.wait(0) is False, "wake-ups were drained"


def test_put_wakes_the_sender_after_its_data_sync_and_before_the_queued_sync(
    sp: Spool, waiter: spool_mod.Waiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender's wake-up overlaps the fsync of queued/; it can only find messages
    # whose data is durable already.
    steps: list[str] = []
    sync = sp.sync

    def spy_sync(fds: Any = (), dirs: Any = (), many: bool = False) -> None:
        fds, dirs = list(fds), list(dirs)
        queued = sp.path("out", A.name, "queued")
        steps.append(f"sync {len(fds)} files, {len(os.listdir(queued))} queued")
        if waiter.wait(0):
            steps.append("sender woken")
        sync(fds, dirs, many)

    monkeypatch.setattr(sp, "sync", spy_sync)
    put(sp, [b"x"])
    assert steps == ["sync 1 files, 0 queued", "sync 0 files, 1 queued", "sender woken"]


def test_put_succeeds_when_the_wake_up_fails(
    sp: Spool, waiter: spool_mod.Waiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Any:
        raise OSError(errno.EMFILE, "too many open files")

    monkeypatch.setattr(wake_mod, "_wake_socket", broken)
    [ident] = put(sp, [b"x"])
    assert [state for _, state, _ in sp.find_out(ident)] == ["queued"]


def test_wake_counts_only_matching_waiters(sp: Spool, waiter: spool_mod.Waiter) -> None:
    with sp.wakeups.waiter(wake_mod.recv_sock("default", 1)) as r:
        assert sp.wakeups.wake("send") == 1
        assert sp.wakeups.wake_consumers("default") == 1
        assert sp.wakeups.wake_consumers("other") == 0
        assert r.wait(5) is True
    assert not os.path.exists(sp.path("wake", "recv-default-1.sock")), "close unbinds"


def test_store_wakes_consumers_of_the_channel(sp: Spool) -> None:
    with sp.wakeups.waiter(wake_mod.recv_sock("jobs", 42)) as w:
        _fill_inbox(sp, [("j", 5)], channel="jobs")
        assert w.wait(5) is True


def _record_store(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the store's syncs and wake-ups, in order."""
    steps: list[str] = []
    sync, wake = sp.sync, sp.wakeups.wake

    def spy_sync(fds: Any = (), dirs: Any = (), many: bool = False) -> None:
        dirs = list(dirs)
        steps.append("sync " + ",".join(os.path.basename(d) for d in dirs))
        sync(fds, dirs, many)

    def spy_wake(prefix: str) -> int:
        steps.append("wake")
        return wake(prefix)

    monkeypatch.setattr(sp, "sync", spy_sync)
    monkeypatch.setattr(sp.wakeups, "wake", spy_wake)
    return steps


def test_store_wakes_consumers_between_the_index_sync_and_the_ready_sync(
    sp: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their wake-up overlaps the fsync of ready/; the data and index entries are durable.
    steps = _record_store(sp, monkeypatch)
    _fill_inbox(sp, [("j", 5)])
    assert steps == ["sync web1", "wake", "sync ready"]


def test_store_syncs_ready_even_when_the_wake_up_fails(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise PermissionError(errno.EACCES, "wake/ unreadable")

    monkeypatch.setattr(sp.wakeups, "_waiting", broken)
    steps = _record_store(sp, monkeypatch)
    _fill_inbox(sp, [("j", 5)])
    assert steps == ["sync web1", "wake", "sync ready"]
    assert [c.ident for c in sp.claim("default", 5, 300)] == ["j"]


def test_wake_removes_the_socket_of_a_dead_waiter(sp: Spool) -> None:
    w = sp.wakeups.sender()
    w.sock.close()  # its owner died without unbinding
    assert sp.wakeups.wake("send") == 0
    assert not os.path.exists(sp.path("wake", "send.sock"))


def test_put_without_any_sender_costs_nothing(sp: Spool) -> None:
    assert sp.wakeups.wake("send") == 0
    t0 = time.monotonic()
    put(sp, [b"x"])
    assert time.monotonic() - t0 < 5


def test_wake_by_name_needs_no_listing(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_listing(path: str) -> list[str]:
        raise AssertionError(f"listed {path}")

    monkeypatch.setattr(os, "listdir", no_listing)
    assert sp.wakeups.wake_sender() == 0, "nobody waits"
    with sp.wakeups.sender() as w:
        assert sp.wakeups.wake_sender() == 1
        assert w.wait(5) is True


def _age(folder: str, seconds: float) -> int:
    mtime = time.time_ns() - int(seconds * 1e9)
    os.utime(folder, ns=(mtime, mtime))
    return mtime


def test_wake_reaches_a_waiter_that_came_after_a_kept_listing(sp: Spool) -> None:
    wake = sp.path("wake")
    _age(wake, 10)  # settled: the listing is kept
    assert sp.wakeups.wake_consumers("x") == 0
    with sp.wakeups.waiter(wake_mod.recv_sock("x", 1)) as w:
        assert sp.wakeups.wake_consumers("x") == 1, "the bind changed the folder: listed again"
        assert w.wait(5) is True


def test_wake_keeps_no_listing_of_a_folder_changed_just_now(sp: Spool) -> None:
    # A bind in the same clock tick as the listing leaves the folder's mtime as it was:
    # a listing of a folder that changed a moment ago must not be kept.
    wake = sp.path("wake")
    mtime = _age(wake, 0.01)
    assert sp.wakeups.wake_consumers("x") == 0
    with sp.wakeups.waiter(wake_mod.recv_sock("x", 1)) as w:
        os.utime(wake, ns=(mtime, mtime))  # the same mtime as at the listing
        assert sp.wakeups.wake_consumers("x") == 1
        assert w.wait(5) is True


def _store_with(sp: Spool, ident: str, created: int, channel: str = "default") -> str:
    hdr = m.Header(ident, channel, 3, created, 0, 1, m.crc32(b"p"))
    [result] = sp.store("web1", [_receive(sp, "web1", hdr, b"p")])
    return result


def test_generated_ids_are_indexed_by_a_hard_link(sp: Spool) -> None:
    ident, t = m.IdMaker().new()
    assert _store_with(sp, ident, t) == "stored"
    entry = sp.path("rcv", "web1", ident)
    assert not os.path.islink(entry), "the name follows from the id: no symlink, no new inode"
    assert os.path.samefile(entry, sp.path("in", "default", "ready", m.in_name(3, t, "web1", ident)))
    found = sp.find_in("web1", ident)
    assert found is not None and found[1] == "ready" and found[3] == t
    prefix = found[2].split(",", 1)[0]
    assert sp.find_in("web1", ident, prefix=prefix, channel="default") == found
    assert sp.in_status("web1", ident, prefix) == ("pending", "")
    assert _store_with(sp, ident, t) == "duplicate"
    assert _store_with(sp, ident, t, channel="other") == "duplicate", "any channel, any state"
    assert len(os.listdir(sp.path("in", "default", "ready"))) == 1


def test_generated_looking_id_with_another_time_is_indexed(sp: Spool) -> None:
    ident, t = m.IdMaker().new()
    assert _store_with(sp, ident, t + 5_000_000) == "stored"  # a sender whose id lies about its time
    assert os.path.islink(sp.path("rcv", "web1", ident))
    assert sp.find_in("web1", ident) is not None
    assert _store_with(sp, ident, t + 5_000_000) == "duplicate"


def test_no_index_entry_means_never_received(sp: Spool) -> None:
    ident, t = m.IdMaker().new()
    assert sp.find_in("web1", ident) is None
    assert sp.in_status("web1", ident) == ("unknown", "")


def test_status_of_generated_ids_through_their_states(sp: Spool) -> None:
    ids = [m.IdMaker().new() for _ in range(3)]
    for ident, t in ids:
        assert _store_with(sp, ident, t, channel="other") == "stored"
    sp.channel_dir("default")  # a second, empty channel to look through
    hints = {i: m.in_name(3, t, "web1", i).split(",", 1)[0] for i, t in ids}
    (a, _), (b, _), (c, _) = ids

    def states(ident: str) -> set[tuple[str, str]]:
        return {sp.in_status("web1", ident, hints[ident]), sp.in_status("web1", ident)}

    assert states(a) == {("pending", "")}
    claims = {cl.ident: cl for cl in sp.claim("other", 3, 60)}
    assert states(a) == {("pending", "")}, "claimed is pending too"
    assert sp.finish("other", claims[a].name, "ack")
    assert sp.finish("other", claims[b].name, "reject", reason="bad input")
    assert states(a) == {("processed", "")}
    assert states(b) == {("dead", "bad input")}
    assert states(c) == {("pending", "")}
    os.unlink(sp.path("in", "other", "claimed", claims[c].name))  # only rcv/ holds it now
    assert states(c) == {("unknown", "")}


def _stray_upload(sp: Spool, ident: str) -> str:
    """Leave what a receiver killed between the index link and the link into ready leaves:
    a tmp file of origin web1 and its hard link in rcv/; return the tmp path."""
    os.makedirs(sp.path("rcv", "web1"), exist_ok=True)
    stray = sp.tmp_name(f"rcv,web1,{ident}")
    with open(stray, "wb") as f:
        f.write(b"p")
    os.link(stray, sp.path("rcv", "web1", ident))
    return stray


def test_store_leftover_hard_link_is_replaced(sp: Spool) -> None:
    # a receiver killed between the two links: the entry holds a stray inode
    ident, t = m.IdMaker().new()
    _stray_upload(sp, ident)
    assert _store_with(sp, ident, t) == "stored"
    found = sp.find_in("web1", ident)
    assert found is not None and found[1] == "ready"
    assert os.path.samefile(sp.path("rcv", "web1", ident), sp.path("in", "default", "ready", found[2]))
    assert _store_with(sp, ident, t) == "duplicate"


def test_tmp_sweep_removes_the_index_link_of_a_stray_upload(sp: Spool) -> None:
    ident, _ = m.IdMaker().new()
    stray = _stray_upload(sp, ident)
    other, _ = m.IdMaker().new()
    assert _store_with(sp, other, m.generated_time(other) or 0) == "stored"
    assert sp.purge(now=time.time() + 37 * 3600) == 1
    assert not os.path.exists(stray) and not os.path.lexists(sp.path("rcv", "web1", ident))
    assert os.path.exists(sp.path("rcv", "web1", other)), "a stored message keeps its entry"


def test_tmp_sweep_keeps_the_index_of_a_message_that_reached_ready(sp: Spool) -> None:
    # a receiver killed between the link into ready and the unlink of its tmp name
    ident, t = m.IdMaker().new()
    assert _store_with(sp, ident, t) == "stored"
    ready = sp.path("in", "default", "ready", m.in_name(3, t, "web1", ident))
    stray = sp.tmp_name(f"rcv,web1,{ident}")
    os.link(ready, stray)
    assert sp.purge(now=time.time() + 37 * 3600) == 1
    assert not os.path.exists(stray)
    assert os.path.samefile(sp.path("rcv", "web1", ident), ready), "the index entry stays"
    assert _store_with(sp, ident, t) == "duplicate"


def _gen_header(payload: bytes = b"p") -> m.Header:
    ident, t = m.IdMaker().new()
    return m.Header(ident, "default", 3, t, 0, len(payload), m.crc32(payload))


def test_generated_id_is_written_as_its_index_entry(sp: Spool) -> None:
    hdr = _gen_header()
    item = _receive(sp, "web1", hdr, b"p")
    entry = sp.path("rcv", "web1", hdr.ident)
    assert item[0] == entry and os.fstat(item[2]).st_ino == os.stat(entry).st_ino
    assert sp.find_in("web1", hdr.ident) is None, "written but not stored: not received"
    assert sp.store("web1", [item]) == ["stored"]
    ready = sp.path("in", "default", "ready", m.in_name(3, hdr.created, "web1", hdr.ident))
    assert os.path.samefile(entry, ready) and Path(ready).read_bytes() == b"p"
    assert os.listdir(sp.tmp) == []
    assert not sp.unreceive("web1", entry, item[2]), "a stored message keeps its entry"
    assert os.path.exists(entry)


def test_other_ids_and_a_second_upload_of_an_id_are_written_to_tmp(sp: Spool) -> None:
    path, fd, entry = sp.receive_file("web1", m.Header("mine", "default", 3, m.now_us(), 0, 1, 0))
    os.close(fd)
    assert os.path.dirname(path) == sp.tmp and not entry
    assert sp.unreceive("web1", path) and os.listdir(sp.tmp) == []
    hdr = _gen_header()
    first = _receive(sp, "web1", hdr, b"p")
    second = _receive(sp, "web1", hdr, b"p")
    assert os.path.dirname(second[0]) == sp.tmp and second[2] == -1
    assert sp.store("web1", [first, second]) == ["stored", "duplicate"]
    assert os.listdir(sp.tmp) == []


def test_resend_takes_over_an_unstored_entry_and_the_first_upload_answers_duplicate(sp: Spool) -> None:
    # the first upload is still streaming (or its sender gave up on it) when a resend arrives
    hdr = _gen_header(b"one")
    first = _receive(sp, "web1", hdr, b"one")
    resend = _receive(sp, "web1", hdr, b"one")
    assert sp.store("web1", [resend]) == ["stored"]
    assert sp.store("web1", [first]) == ["duplicate"]
    assert not sp.unreceive("web1", first[0], first[2]), "the entry is the resend's now"
    found = sp.find_in("web1", hdr.ident)
    assert found is not None and found[1] == "ready"
    assert os.path.samefile(sp.path("rcv", "web1", hdr.ident), sp.path("in", "default", "ready", found[2]))
    assert len(sp.in_names("default", "ready")) == 1 and os.listdir(sp.tmp) == []


def test_first_upload_whose_entry_was_taken_by_a_failed_store_asks_for_a_retry(sp: Spool) -> None:
    hdr = _gen_header()
    first = _receive(sp, "web1", hdr, b"p")
    os.unlink(first[0])  # a resend took the entry over, then its store failed
    assert _receive(sp, "web1", hdr, b"p")[0] == first[0]
    with pytest.raises(OSError) as exc:
        sp.store("web1", [first])
    assert exc.value.errno == errno.EAGAIN
    assert sp.in_names("default", "ready") == []


def test_refused_part_written_as_its_entry_is_removed(sp: Spool) -> None:
    hdr = _gen_header()
    path, _, fd = _receive(sp, "web1", hdr, b"bad")
    assert sp.unreceive("web1", path, fd)
    assert not os.path.lexists(path)
    assert _store_with(sp, hdr.ident, hdr.created) == "stored", "the id is free again"


def test_store_replaces_an_entry_a_crash_left_mid_upload(sp: Spool) -> None:
    hdr = _gen_header()
    _receive(sp, "web1", hdr, b"partial")  # dropr-serve killed mid-upload: the entry alone
    assert sp.in_status("web1", hdr.ident) == ("unknown", ""), "so the sender sends again"
    assert _store_with(sp, hdr.ident, hdr.created) == "stored"
    found = sp.find_in("web1", hdr.ident)
    assert found is not None
    assert Path(sp.path("in", "default", "ready", found[2])).read_bytes() == b"p"


def test_purge_sweeps_entries_a_crash_left_mid_upload_twice_a_day(sp: Spool) -> None:
    stale = _gen_header()
    _receive(sp, "web1", stale, b"partial")
    stored = _gen_header()
    assert _store_with(sp, stored.ident, stored.created) == "stored"
    assert sp.purge() == 0, "too young: it may be an upload in flight"
    assert os.path.exists(sp.path("rcv", "web1", stale.ident))
    later = time.time() + spool_mod.TMP_MAX_AGE + 60
    os.utime(sp.path("lock", "rcv-swept"), (0, 0))  # as if the last sweep was long ago
    assert sp.purge(now=later) == 1
    assert not os.path.lexists(sp.path("rcv", "web1", stale.ident))
    assert os.path.exists(sp.path("rcv", "web1", stored.ident)), "a stored message keeps its entry"
    old = _receive(sp, "web1", _gen_header(), b"partial")[0]
    os.utime(old, (0, 0))
    assert sp.purge() == 0, "the stamp holds the next sweep off for RCV_SWEEP_EVERY"
    assert os.path.exists(old)


def test_mark_sent_finishes_a_move_a_crash_left_half_done(sp: Spool) -> None:
    [ident] = put(sp, [b"twice"])
    [(peer, _, name)] = sp.find_out(ident)
    queued, sent = sp.path("out", peer, "queued", name), sp.path("out", peer, "sent", name)
    os.link(queued, sent)  # killed between the link and the unlink
    assert sp.mark_sent(peer, [name]) == 1
    assert sp.find_out(ident) == [(peer, "sent", name)]
    assert Path(sent).read_bytes().endswith(b"twice")


# -- DirectWriter: large payloads past the page cache ---------------------------------------------


def _write_in_pieces(path: str, data: bytes, pieces: list[int]) -> spool_mod.DirectWriter:
    w = spool_mod.DirectWriter(path)
    at = 0
    for n in pieces:
        w.write(memoryview(data)[at : at + n])
        at += n
    w.write(data[at:])
    w.close()
    return w


@pytest.mark.parametrize(
    "size",
    [0, 1, _fs.DIRECT_BLOCK - 1, _fs.DIRECT_BLOCK, 3 * _fs.DIRECT_BLOCK + 12345],
)
def test_direct_writer_is_byte_exact(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = str(tmp_path / "big")
    # odd pieces: block boundaries fall inside writes, and some writes are empty
    _write_in_pieces(path, data, [7, 0, _fs.DIRECT_BLOCK + 3, 65536])
    assert Path(path).read_bytes() == data


def test_direct_writer_uses_o_direct_where_it_can(tmp_path: Path) -> None:
    w = spool_mod.DirectWriter(str(tmp_path / "f"))
    try:
        flags = fcntl.fcntl(w.fd, fcntl.F_GETFL)
        assert bool(flags & os.O_DIRECT) == w.direct
    finally:
        w.close()
    with pytest.raises(FileExistsError):
        spool_mod.DirectWriter(str(tmp_path / "f"))  # O_EXCL, like every tmp file


def test_direct_writer_on_tmpfs(tmp_path: Path) -> None:
    from helpers import tmpfs

    with tmpfs(tmp_path / "mnt", "size=16m") as mnt:
        data = os.urandom(2 * _fs.DIRECT_BLOCK + 99)
        _write_in_pieces(str(mnt / "big"), data, [_fs.DIRECT_BLOCK // 2])
        assert (mnt / "big").read_bytes() == data


def test_direct_writer_full_disk_raises(tmp_path: Path) -> None:
    from helpers import tmpfs

    with tmpfs(tmp_path / "mnt", "size=2m") as mnt:
        w = spool_mod.DirectWriter(str(mnt / "big"))
        with pytest.raises(OSError) as exc:
            w.write(os.urandom(4 * _fs.DIRECT_BLOCK))
            w.close()
        assert exc.value.errno == errno.ENOSPC
        if w.fd >= 0:
            os.close(w.fd)


# -- stray files in state folders -------------------------------------------------
# A file that is no message name (README, an editor's .swp, "zzz") put into a state
# folder by hand: never handed out as a message; moved to corrupt/ by the process
# working there, skipped by listings that change nothing.

STRAYS = ("README", ".hidden", "zzz", "0zzz", "5zzzzzzzzzzzzz,x,y")


def _touch_strays(folder: str, names: tuple[str, ...] = STRAYS) -> None:
    for name in names:
        Path(folder, name).write_bytes(b"not a message")


def _corrupt_names(sp: Spool) -> set[str]:
    return set(os.listdir(sp.path("corrupt")))


def test_claim_moves_strays_in_ready_to_corrupt(sp: Spool) -> None:
    _fill_inbox(sp, [("s1", 5), ("s2", 0)])
    _touch_strays(sp.path("in", "default", "ready"))
    claims = sp.claim("default", 10, 300)
    assert [c.ident for c in claims] == ["s2", "s1"]
    assert os.listdir(sp.path("in", "default", "ready")) == []
    assert sorted(os.listdir(sp.path("in", "default", "claimed"))) == sorted(c.name for c in claims)
    for name in STRAYS:
        dest = sp.path("corrupt", f"in=default=ready={name}")
        assert Path(dest).read_bytes() == b"not a message"
        assert Path(dest + ".why").read_text() == f"{spool_mod.STRAY_WHY}\n"


def test_strays_sorting_first_do_not_hide_ready_messages(sp: Spool) -> None:
    """More strays than the claim picks from a large listing, all sorting before it."""
    _fill_inbox(sp, [("only", 5)])
    ready = sp.path("in", "default", "ready")
    _touch_strays(ready, tuple(f".stray{i:04}" for i in range(1100)))
    [c] = sp.claim("default", 1, 300)
    assert c.ident == "only"
    assert len(_corrupt_names(sp)) == 2 * 1100  # each with its .why
    assert os.listdir(ready) == []


def test_read_only_listings_skip_strays_and_leave_them(sp: Spool) -> None:
    [ident] = put(sp, [b"x"])
    _fill_inbox(sp, [("r1", 5)])
    for folder in (sp.path("out", "a", "queued"), sp.path("in", "default", "ready")):
        _touch_strays(folder)
    strays: list[str] = []
    assert [m.parse_out_name(n)[2] for n in sp.out_names("a", "queued", strays=strays)] == [ident]
    assert sorted(strays) == sorted(STRAYS)
    strays = []
    assert [m.parse_in_name(n)[3] for n in sp.in_names("default", "ready", strays=strays)] == ["r1"]
    assert sorted(strays) == sorted(STRAYS)
    assert _corrupt_names(sp) == set(), "a read-only listing moves nothing"


def test_out_names_moves_strays_in_queued_to_corrupt(sp: Spool) -> None:
    [ident] = put(sp, [b"x"])
    _touch_strays(sp.path("out", "a", "queued"))
    for first in (0, 1):
        names = sp.out_names("a", "queued", first)
        assert [n.split(",", 1)[1] for n in names] == [ident]
    assert _corrupt_names(sp) == {f"out=a=queued={n}{w}" for n in STRAYS for w in ("", ".why")}
    assert sp.out_any("a", "queued")
    sp.mark_sent("a", names)
    _touch_strays(sp.path("out", "a", "queued"), ("LATER",))
    assert not sp.out_any("a", "queued"), "a stray is no queued message"


def test_strays_in_claimed_and_wait_do_not_stop_sweeps_or_acks(sp: Spool) -> None:
    _fill_inbox(sp, [("w", 5), ("c", 5)])
    [c] = sp.claim("default", 1, 300)
    _touch_strays(sp.path("in", "default", "claimed"), ("README",))
    _touch_strays(sp.path("in", "default", "wait"), ("README",))
    assert set(sp.claimed_index()) == {c.ident, f"web1,{c.ident}"}
    assert [x.ident for x in sp.claim("default", 5, 300)] == ["c"]
    assert {"in=default=claimed=README", "in=default=wait=README"} <= _corrupt_names(sp)


def test_purge_moves_old_strays_instead_of_failing(sp: Spool) -> None:
    put(sp, [b"x"])
    _fill_inbox(sp, [("p", 5)])
    for folder in (sp.path("out", "a", "dead"), sp.path("in", "default", "done")):
        _touch_strays(folder, ("README",))
    sp.purge(now=time.time() + FAR_FUTURE)
    assert {"out=a=dead=README", "in=default=done=README"} <= _corrupt_names(sp)


def test_a_stray_file_beside_peers_and_channels_is_none(sp: Spool) -> None:
    put(sp, [b"x"])
    _fill_inbox(sp, [("f", 5)])
    Path(sp.path("out", "README")).write_text("x")
    Path(sp.path("in", "README")).write_text("x")
    assert sp.out_peers() == ["a"]
    assert sp.channels() == ["default"]
    assert sp.in_names("README", "ready") == []
    assert [c.ident for c in sp.claim("default", 1, 300)] == ["f"]


def test_a_stray_that_cannot_be_moved_is_skipped(sp: Spool) -> None:
    _fill_inbox(sp, [("k", 5)])
    _touch_strays(sp.path("in", "default", "ready"), ("README",))
    os.makedirs(sp.path("corrupt", "in=default=ready=README", "in-the-way"))  # rename fails
    assert [c.ident for c in sp.claim("default", 5, 300)] == ["k"]
    assert os.listdir(sp.path("in", "default", "ready")) == ["README"]


# -- far-future lease and due times -----------------------------------------------


def test_a_huge_lease_is_clamped_not_an_overflow(sp: Spool) -> None:
    _fill_inbox(sp, [("l", 5)])
    [c] = sp.claim("default", 1, 1e20)
    assert c.expiry == _layout.MAX_STAMP
    assert os.stat(c.path).st_mtime > time.time() + FAR_FUTURE  # the filesystem may clamp further
    assert c.renew(1e20) is True
    assert sp.claim("default", 1, 300) == [], "the lease holds"


def test_a_huge_release_delay_is_clamped_not_an_overflow(sp: Spool) -> None:
    _fill_inbox(sp, [("d", 5)])
    [c] = sp.claim("default", 1, 300)
    assert sp.finish("default", c.name, "release", delay=1e20) is True
    assert sp.find_in("web1", "d")[1] == "wait"  # type: ignore[index]
    assert os.stat(sp.path("in", "default", "wait", c.name)).st_mtime > time.time() + FAR_FUTURE
    assert sp.in_meta("default", "web1", "d")["returns"] == 1


def test_a_release_whose_due_time_fails_changes_nothing(sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill_inbox(sp, [("f", 5)])
    [c] = sp.claim("default", 1, 300)

    def refuse(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EPERM, "no")

    monkeypatch.setattr(os, "utime", refuse)
    with pytest.raises(OSError):
        sp.finish("default", c.name, "release", delay=60)
    monkeypatch.undo()
    assert sp.find_in("web1", "f")[1] == "claimed"  # type: ignore[index]
    assert sp.in_meta("default", "web1", "f") == {}, "no return counted"


def test_a_release_of_a_lost_claim_counts_no_return(sp: Spool) -> None:
    _fill_inbox(sp, [("g", 5)])
    [c] = sp.claim("default", 1, 300)
    assert sp.finish("default", c.name, "ack") is True
    assert sp.finish("default", c.name, "release", delay=60) is False
    assert sp.in_meta("default", "web1", "g") == {}


NAMES = [
    "5660ec4ddde103,660ec4ddde1035a14c58abce", "0000000000000a,x", "9ffffffffffff0,web1,caller-id",
    "5660ec4ddde103,web1,a", "5660ec4ddde103,", "5660ec4ddde103,,x", "5660ec4ddde103,x,",
    "5660ec4ddde103,a,b,c",
    "5660EC4ddde103,x", "a660ec4ddde103,x", "5660ec4ddde10,xy", "5660ec4ddde1034,x", "5660ec4ddde10 ,x",
    "56-0ec4ddde103,x", "5660ec4ddde103,a\nb", "5660ec4ddde103,é,ü", "٥660ec4ddde103,x", "README", ".hidden",
    "zzz", "0zzz", "", ",", "5", "5660ec4ddde103",
]  # fmt: skip


def _check_both(box: str, name: str) -> None:
    """Few names are checked in Python (no `re` import at start-up), many by NAME_PATTERNS."""
    import re

    stray = re.fullmatch(m.NAME_PATTERNS[box], name) is None
    assert bool(spool_mod.stray_test(box, 1)(name)) == stray, name
    assert bool(spool_mod.stray_test(box, 10**6)(name)) == stray, name
    if not stray:
        (m.parse_out_name if box == "out" else m.parse_in_name)(name)  # a message name parses


@pytest.mark.parametrize("box", ["out", "in"])
@pytest.mark.parametrize("name", NAMES)
def test_the_python_and_regex_name_checks_agree(box: str, name: str) -> None:
    _check_both(box, name)


@pytest.mark.parametrize("box", ["out", "in"])
@settings(max_examples=2000, deadline=None)
@given(data=st.data())
def test_the_python_and_regex_name_checks_agree_on_any_name(box: str, data: st.DataObject) -> None:
    near = st.text(st.sampled_from("0123456789abcdefA,.z \n"), min_size=14, max_size=22)
    valid = st.from_regex(m.NAME_PATTERNS[box], fullmatch=True)
    _check_both(box, data.draw(st.one_of(near, valid)))
