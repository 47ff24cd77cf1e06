"""The requeue transitions (dropr-ack --requeue): inbox dead -> ready, outbox dead -> queued.

Each writes its record durably, then makes one rename; a fault at any step leaves the
message in exactly one state, and requeuing again finishes the job. The outbox's TTL
deadline after a requeue is the record's, the file is never changed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr import retry
from dropr.config import Peer
from dropr.requeue import requeue
from dropr.spool import Spool
from dropr.spool._trace import TracingFS
from helpers import fill_inbox

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

A = Peer("a", "http://127.0.0.1:9/a/")
B = Peer("b", "http://127.0.0.1:9/b/")


class Crash(Exception):
    """A fault injected at one step."""


def crash_at(k: int) -> Any:
    """A TracingFS hook that raises at the k-th primitive (0-based)."""
    seen = [0]

    def hook(name: str, args: tuple[Any, ...]) -> None:
        seen[0] += 1
        if seen[0] - 1 == k:
            raise Crash(name)

    return hook


def dead_inbox(spool_dir: Path) -> tuple[str, str]:
    """Store one message, claim it, reject it; return (id, inbox name)."""
    [ident] = fill_inbox(spool_dir, [b"poison"])
    sp = Spool(str(spool_dir))
    [c] = sp.claim("default", 1, 60)
    sp.finish(c.channel, c.name, "release")
    [c] = sp.claim("default", 1, 60)
    assert sp.finish(c.channel, c.name, "reject", reason="bad")
    return ident, c.name


def in_states(spool_dir: Path, name: str) -> list[str]:
    return [
        s
        for s in ("ready", "wait", "claimed", "done", "dead")
        if (spool_dir / "in/default" / s / name).exists()
    ]


def test_inbox_requeue_writes_the_record_durably_then_renames(spool_dir: Path) -> None:
    ident, name = dead_inbox(spool_dir)
    fs = TracingFS()
    sp = Spool(str(spool_dir), fs=fs)
    assert sp.leases.requeue("default", name)
    cdir = sp.path("in", "default")
    renames = [op for op in fs.ops if op[0] == "rename"]
    assert renames[-1] == ("rename", f"{cdir}/dead/{name}", f"{cdir}/ready/{name}")
    assert renames[0][2] == f"{cdir}/meta/web1,{ident}", "the record first"
    kinds = [op[0] for op in fs.ops]
    assert kinds.index("fsync") < kinds.index("rename") < kinds.index("fsync_dir")
    assert fs.ops[-1] == ("fsync_dir", f"{cdir}/ready")
    meta = sp.in_meta("default", "web1", ident)
    assert (meta["returns"], meta["failures"], meta["requeues"], meta["error"]) == (0, 0, 1, "bad")
    assert not sp.leases.requeue("default", name), "not dead any more"


@pytest.mark.parametrize("k", range(12))
def test_inbox_requeue_crash_at_any_step_leaves_one_state(spool_dir: Path, k: int) -> None:
    ident, name = dead_inbox(spool_dir)
    sp = Spool(str(spool_dir), fs=TracingFS(crash_at(k)))
    try:
        done = sp.leases.requeue("default", name)
    except Crash:
        done = False
    states = in_states(spool_dir, name)
    assert states in (["dead"], ["ready"]), states
    if not done and states == ["dead"]:
        assert Spool(str(spool_dir)).leases.requeue("default", name), "requeuing again finishes it"
    assert in_states(spool_dir, name) == ["ready"]
    [c] = Spool(str(spool_dir)).claim("default", 1, 60)
    assert c.info()["attempt"] == 1


def dead_outbox(sp: Spool, peers: list[Peer], ttl: float = 0, payload: bytes = b"x") -> tuple[str, str]:
    """Put one message to peers and kill it at each; return (id, outbox name)."""
    batch = sp.batch(peers, ttl=ttl)
    batch.add(payload)
    [ident] = batch.commit()
    [(_, _, name), *_] = sp.find_out(ident)
    for p in peers:
        sp.kill(p.name, [name], retry.TTL_EXPIRED)
    return ident, name


def out_states(sp: Spool, peer: str, name: str) -> list[str]:
    return [
        s for s in ("queued", "sent", "processed", "dead") if os.path.lexists(sp.path("out", peer, s, name))
    ]


def test_outbox_requeue_resets_attempts_and_sets_a_new_deadline(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    ident, name = dead_outbox(sp, [A], ttl=0.001)
    sp.out_note("a", ident, unknown_at=1)
    before = m.now_us()
    fs = TracingFS()
    sp2 = Spool(str(spool_dir), fs=fs)
    assert sp2.outbox.requeue("a", [name]) == [name]
    assert out_states(sp, "a", name) == ["queued"]
    meta = sp.out_meta("a", ident)
    assert meta["attempts"] == 0 and meta["requeues"] == 1 and "unknown_at" not in meta
    assert meta["error"] == retry.TTL_EXPIRED
    assert before <= meta["requeued_at"] and meta["deadline"] == meta["requeued_at"] + 1000
    base = sp.path("out", "a")
    renames = [op for op in fs.ops if op[0] == "rename"]
    assert renames[0][2] == f"{base}/meta/{ident}" and renames[-1] == (
        "rename",
        f"{base}/dead/{name}",
        f"{base}/queued/{name}",
    )
    # the rename is durable only with both of its folders synced (tests/crash_explorer.py's model)
    assert fs.ops[-2:] == [("fsync_dir", f"{base}/queued"), ("fsync_dir", f"{base}/dead")]


def test_peek_takes_the_deadline_of_a_requeue_when_the_header_s_has_passed(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    ident, name = dead_outbox(sp, [A], ttl=0.001)
    header = Path(sp.path("out", "a", "dead", name)).read_bytes()
    first = m.header_deadline(header[: m.HEADER_SIZE])
    sp.outbox.requeue("a", [name])
    assert Path(sp.path("out", "a", "queued", name)).read_bytes() == header, "the file is not changed"
    os.unlink(sp.path("out", "a", "meta", ident))
    assert sp.peek("a", name)[0] == first, "no record: the header's deadline"
    sp.out_note("a", ident, deadline=m.now_us() + 60_000_000)
    assert sp.peek("a", name)[0] > m.now_us()


def test_no_ttl_no_deadline(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    ident, name = dead_outbox(sp, [A])
    sp.outbox.requeue("a", [name])
    assert "deadline" not in sp.out_meta("a", ident)
    assert sp.peek("a", name)[0] == 0


@pytest.mark.parametrize("k", range(10))
def test_outbox_requeue_crash_at_any_step_leaves_one_state(spool_dir: Path, k: int) -> None:
    sp = Spool(str(spool_dir))
    ident, name = dead_outbox(sp, [A], ttl=0.001)
    crashing = Spool(str(spool_dir), fs=TracingFS(crash_at(k)))
    try:
        crashing.outbox.requeue("a", [name])
    except Crash:
        pass
    states = out_states(sp, "a", name)
    assert states in (["dead"], ["queued"]), states
    if states == ["dead"]:
        assert sp.outbox.requeue("a", [name]) == [name], "requeuing again finishes it"
    assert out_states(sp, "a", name) == ["queued"]
    meta = sp.out_meta("a", ident)
    assert meta["deadline"] - meta["requeued_at"] == 1000, "a queued requeue always has its new deadline"


def test_outbox_requeue_leaves_an_entry_that_is_queued_too(spool_dir: Path) -> None:
    """dead/N and queued/N both: the sender is between the link and the unlink of a kill."""
    sp = Spool(str(spool_dir))
    batch = sp.batch([A])
    batch.add(b"x")
    [ident] = batch.commit()
    [(_, _, name)] = sp.find_out(ident)
    os.link(sp.path("out", "a", "queued", name), sp.path("out", "a", "dead", name))
    assert sp.outbox.requeue("a", [name]) == []
    assert out_states(sp, "a", name) == ["queued", "dead"]


def test_requeue_out_prints_a_multicast_id_once(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    ident, name = dead_outbox(sp, [A, B])
    out, err = io.StringIO(), io.StringIO()
    assert requeue(sp, [ident], out=True, stdout=out, err=err) == 0
    assert (out.getvalue(), err.getvalue()) == (f"{ident}\n", "")
    assert out_states(sp, "a", name) == out_states(sp, "b", name) == ["queued"]
    assert requeue(sp, [ident], out=True, stdout=out, err=err) == 1
    assert "is not dead in the outbox" in err.getvalue()


def test_requeue_holds_off_purges(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    with sp.retention.hold():
        assert sp.retention.purge_if_due(every=0) == 0
