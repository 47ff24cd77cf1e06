"""The spool's I/O seam: every write, sync, link and unlink of a put or a store goes
through Spool.fs, in the order the state table says; a fault at any of them leaves
the spool as it was."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr import spool as spool_mod
from dropr.config import Peer
from dropr.errors import DroprError
from dropr.spool import Spool
from dropr.spool._trace import TracingFS

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

A = Peer("a", "http://127.0.0.1:9/a/")


def traced(spool_dir: Path, hook: Any = None) -> tuple[Spool, TracingFS]:
    """A spool whose outbox for A exists, opened again with a recording FS."""
    Spool(str(spool_dir)).batch([A])  # folders made: the record holds the put alone
    fs = TracingFS(hook)
    return Spool(str(spool_dir), fs=fs), fs


def put_one(sp: Spool, payload: bytes = b"x") -> str:
    batch = sp.batch([A])
    batch.add(payload)
    [ident] = batch.commit()
    return ident


def snapshot(sp: Spool) -> dict[str, list[str]]:
    """Every name in the spool's tmp/, ids/ and out/a/ folders."""
    folders = ["tmp", "ids", *(f"out/a/{s}" for s in ("queued", "sent", "processed", "dead", "meta"))]
    return {f: sorted(os.listdir(sp.path(*f.split("/")))) for f in folders}


def test_a_put_is_recorded_write_fsync_link_unlink_fsync_dir(spool_dir: Path) -> None:
    sp, fs = traced(spool_dir)
    ident = put_one(sp)
    [(_, _, name)] = sp.find_out(ident)
    queued = sp.path("out", "a", "queued")
    [(_, tmp)] = fs.ops[:1]
    assert tmp.startswith(sp.tmp + "/")
    assert fs.ops == [
        ("create", tmp),
        ("write", tmp),
        ("fsync", tmp),
        ("close", tmp),
        ("link", tmp, f"{queued}/{name}"),
        ("unlink", tmp),
        ("fsync_dir", queued),
    ]


def test_a_store_is_recorded_entry_sum_fsync_link_into_ready_fsync(spool_dir: Path) -> None:
    sp, fs = traced(spool_dir)
    Spool(str(spool_dir)).channel_dir("default")
    ident, created = sp.ids.new()
    hdr = m.Header(ident, "default", 5, created, 0, 1, m.crc32(b"p"))
    part = sp.open_part("web1", hdr)
    part.write(b"p")
    part.close()
    assert part.entry, "a generated id is written as its rcv/ entry"
    try:
        assert sp.store("web1", [(part.path, hdr, part.fd)]) == ["stored"]
    finally:
        os.close(part.fd)
    rcv = sp.path("rcv", "web1")
    ready = sp.path("in", "default", "ready")
    name = m.in_name(5, created, "web1", ident)
    assert [op for op in fs.ops if op[0] != "mkdir"] == [
        ("fsync_dir", sp.path("rcv")),  # rcv/web1 made
        ("create", f"{rcv}/{ident}"),
        ("write", f"{rcv}/{ident}"),
        ("set_sum", f"{rcv}/{ident}"),  # the checksum, in the inode: dropr-ls --verify
        ("fsync", f"{rcv}/{ident}"),
        ("fsync_dir", rcv),
        ("link", f"{rcv}/{ident}", f"{ready}/{name}"),
        ("fsync_dir", ready),
    ]


def _reference_ops(tmp_path: Path) -> list[tuple[str, ...]]:
    sp, fs = traced(tmp_path / "reference")
    put_one(sp)
    return fs.ops


@pytest.mark.parametrize("at", [0, 1, 2, 4, 5, 6])  # the steps of _reference_ops but the close
def test_a_fault_at_any_step_of_a_put_leaves_the_spool_unchanged(
    spool_dir: Path, tmp_path: Path, at: int
) -> None:
    ops = _reference_ops(tmp_path)
    calls = 0

    def fail_once(name: str, args: tuple[Any, ...]) -> None:
        nonlocal calls
        calls += 1
        if calls == at + 1:
            raise OSError(errno.EIO, f"injected at {name}")

    sp, fs = traced(spool_dir, fail_once)
    before = snapshot(sp)
    with pytest.raises(DroprError):
        put_one(sp)
    assert fs.ops[at][0] == ops[at][0]
    assert snapshot(sp) == before
    put_one(sp, b"after")  # and the spool still works


def test_an_fsync_that_fails_mid_put_leaves_the_spool_unchanged(spool_dir: Path) -> None:
    def fail_fsync(name: str, args: tuple[Any, ...]) -> None:
        if name == "fsync":
            raise OSError(errno.EIO, "injected")

    sp, fs = traced(spool_dir, fail_fsync)
    before = snapshot(sp)
    with pytest.raises(DroprError, match="cannot commit to spool"):
        put_one(sp)
    assert snapshot(sp) == before
    assert ("fsync", fs.ops[0][1]) in fs.ops and not any(op[0] == "link" for op in fs.ops)


# -- the facade ----------------------------------------------------------------


def test_a_put_loads_no_inbox_lease_or_retention_code(tmp_path: Path) -> None:
    # Start-up counts for dropr-put (a process per message in shell loops): the
    # concerns it never uses are imported at their first use.
    code = (
        "import sys\n"
        "from dropr.config import Peer\n"
        "from dropr.spool import Spool\n"
        f"b = Spool({str(tmp_path / 'spool')!r}).batch([Peer('a', 'http://127.0.0.1:9/')])\n"
        "b.add(b'x')\n"
        "b.commit()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('dropr.spool'))))\n"
    )
    lib = Path(__file__).resolve().parents[2] / "lib"
    env = {"DROPR_NODE": "t", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)}
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.split() == [
        b"dropr.spool",
        b"dropr.spool._fs",
        b"dropr.spool._layout",
        b"dropr.spool.outbox",
        b"dropr.spool.wake",
    ]


def test_the_facade_binds_each_late_name_to_its_concern(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    for name, (concern, attr) in spool_mod._LAZY.items():
        assert getattr(sp, name) == getattr(getattr(sp, concern), attr), name
        assert name in vars(sp), f"{name} is bound once, not looked up on every call"
    with pytest.raises(AttributeError):
        sp.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    assert spool_mod.Claim.__module__ == "dropr.spool.leases"


def _claims_synced_before_their_ends(ops: list[tuple[str, ...]]) -> int:
    """Check that every rename out of claimed/ follows fsyncs of claimed/ and ready/ made
    after the rename that claimed it; return how many such ends there were."""
    claimed_at: dict[str, int] = {}
    ends = 0
    for i, op in enumerate(ops):
        if op[0] == "rename" and "/ready/" in op[1] and "/claimed/" in op[2]:
            claimed_at[os.path.basename(op[2])] = i
        elif op[0] == "rename" and "/claimed/" in op[1]:
            at = claimed_at[os.path.basename(op[1])]
            later = {os.path.basename(o[1]) for o in ops[at:i] if o[0] == "fsync_dir"}
            assert {"claimed", "ready"} <= later, (op, ops[at:i])
            ends += 1
    return ends


def test_claims_are_durable_before_anyone_hears_of_them(spool_dir: Path) -> None:
    # An ack's rename (into done/, synced) could otherwise reach the disk without the
    # claim's: after a power loss the message was in ready/ and done/ at once (#16).
    from helpers import fill_inbox

    fill_inbox(spool_dir, [b"one", b"two", b"three"])
    fs = TracingFS()
    sp = Spool(str(spool_dir), fs=fs)
    heard: list[int] = []
    got = sp.claim("default", 3, 60, each=lambda c: heard.append(len(fs.ops)))
    assert len(got) == 3 and heard
    first_heard = heard[0]
    assert [os.path.basename(o[1]) for o in fs.ops[:first_heard] if o[0] == "fsync_dir"] == [
        "claimed",
        "ready",
    ]
    for c in got:
        sp.finish(c.channel, c.name, "ack")
    assert _claims_synced_before_their_ends(fs.ops) == 3


def test_exec_handlers_end_no_claim_before_it_is_durable(spool_dir: Path) -> None:
    from dropr.consume import HandlerOptions, Handlers
    from helpers import fill_inbox

    fill_inbox(spool_dir, [b"%d" % i for i in range(12)])
    fs = TracingFS()
    sp = Spool(str(spool_dir), fs=fs)
    assert Handlers(sp, HandlerOptions(command="exit 0", jobs=3, once=True)).run() == 0
    assert _claims_synced_before_their_ends(fs.ops) == 12
    assert len(os.listdir(spool_dir / "in" / "default" / "done")) == 12
