"""dropr-ls --verify's library: the checksums kept, checked, and failures moved to corrupt/."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr import verify as v
from dropr.config import Peer
from dropr.report import Filter, LsRequest
from dropr.spool import Spool
from dropr.spool._fs import FS, SUM_XATTR
from dropr.spool._trace import TracingFS
from helpers import fill_inbox

A = Peer("a", "http://127.0.0.1:9/a/")
B = Peer("b", "http://127.0.0.1:9/b/")


def put(sp: Spool, peers: list[Peer], *payloads: bytes) -> list[str]:
    batch = sp.batch(peers)
    for p in payloads:
        batch.add(p)
    return batch.commit()


def flip(path: Path, offset: int = -1) -> None:
    """Change one byte of a file in place (a bit rot, as the disk would)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def out_file(sp: Spool, ident: str, peer: str = "a") -> Path:
    [(p, state, name)] = [x for x in sp.find_out(ident) if x[0] == peer]
    return Path(sp.path("out", p, state, name))


def in_file(root: Path, ident: str, channel: str = "default") -> Path:
    [path] = [p for p in (root / "in" / channel).glob(f"*/*,{ident}")]
    return path


def corrupt(root: Path) -> dict[str, str]:
    """Return corrupt/'s files: name -> its .why."""
    d = root / "corrupt"
    return {p.name: (d / f"{p.name}.why").read_text() for p in d.iterdir() if not p.name.endswith(".why")}


# -- the store keeps the checksum ----------------------------------------------------


def test_the_store_keeps_the_checksum_and_size_in_the_inode(spool_dir: Path) -> None:
    [ident] = fill_inbox(spool_dir, [b"hello"])
    kept = os.getxattr(in_file(spool_dir, ident), SUM_XATTR)
    assert kept == b"k=%08x s=5" % m.crc32(b"hello")
    assert os.getxattr(spool_dir / "rcv" / "web1" / ident, SUM_XATTR) == kept  # one inode


def test_a_filesystem_without_xattrs_stores_all_the_same_and_says_so_once(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dropr import log

    class NoXattr(FS):
        def set_sum(self, file: int | str, value: bytes) -> None:
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    # a command run in this process earlier may have left its set-up for the first log line
    # (dropr.log.at_first_use): not here
    monkeypatch.setattr(log, "_first_use", None)
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    logger = logging.getLogger("dropr.spool.inbox")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    logger.addHandler(handler)
    try:
        sp = Spool(str(spool_dir), fs=NoXattr())
        for batch in ([b"one", b"two"], [b"three"]):
            items = []
            for p in batch:
                ident, created = sp.ids.new()
                hdr = m.Header(ident, "default", 5, created, 0, len(p), m.crc32(p))
                path, fd, _ = sp.receive_file("web1", hdr, entry=False)
                os.write(fd, p)
                os.close(fd)
                items.append((path, hdr, -1))
            assert sp.store("web1", items) == ["stored"] * len(batch)
    finally:
        logger.removeHandler(handler)
    [record] = said
    assert (
        record.getMessage().startswith("checksums not kept path=") and "not supported" in record.getMessage()
    )
    counts = v.verify(sp, Filter())
    assert (counts.checked, counts.ok, counts.unchecked, counts.corrupt) == (3, 0, 3, 0)


# -- verify ---------------------------------------------------------------------------


def test_an_intact_spool_verifies_clean(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    put(sp, [A, B], b"multicast")
    put(sp, [A], b"x" * (3 << 20), b"")  # more than one read, and an empty payload
    fill_inbox(spool_dir, [b"in1", b"in2"])
    counts = v.verify(sp, Filter())
    assert counts.as_dict() == {
        "checked": 6, "ok": 6, "corrupt": 0, "unchecked": 0,
        "bytes": (256 + 9) + 256 + (3 << 20) + 256 + 6,  # the multicast file read once
    }  # fmt: skip
    assert not corrupt(spool_dir)


def test_a_flipped_outbox_byte_is_moved_for_every_peer_and_read_once(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    [multi] = put(sp, [A, B], b"multicast payload")
    [other] = put(sp, [A], b"fine")
    path = out_file(sp, multi)
    flip(path)
    counts = v.verify(sp, Filter())
    assert (counts.checked, counts.ok, counts.corrupt) == (3, 1, 2)
    assert counts.bytes == 2 * 256 + len(b"multicast payload") + len(b"fine")  # the shared file once
    moved = corrupt(spool_dir)
    assert sorted(moved) == [f"out=a=queued={path.name}", f"out=b=queued={path.name}"]
    assert all("checksum" in why and "the header says k=" in why for why in moved.values())
    assert not sp.find_out(multi) and sp.find_out(other)
    assert v.verify(sp, Filter()).corrupt == 0  # what is left is whole


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-3]), "payload of 13 bytes, the header says s=16"),
        (lambda p: p.write_bytes(p.read_bytes() + b"!"), "payload of 17 bytes, the header says s=16"),
        (lambda p: flip(p, 3), "unreadable header: not a dropr message header"),
        (lambda p: p.write_bytes(b""), "unreadable header: not a dropr message header"),
    ],
)
def test_outbox_damage_is_named_in_the_why(spool_dir: Path, damage: Any, why: str) -> None:
    sp = Spool(str(spool_dir))
    [ident] = put(sp, [A], b"sixteen bytes!!!")
    path = out_file(sp, ident)
    damage(path)
    assert v.verify(sp, Filter(box="out")).corrupt == 1
    assert corrupt(spool_dir) == {f"out=a=queued={path.name}": why + "\n"}


def test_a_flipped_inbox_byte_is_moved_and_the_rest_stays(spool_dir: Path) -> None:
    bad, good = fill_inbox(spool_dir, [b"payload one", b"payload two"])
    path = in_file(spool_dir, bad)
    flip(path, 0)
    sp = Spool(str(spool_dir))
    counts = v.verify(sp, Filter(box="in"))
    assert (counts.checked, counts.ok, counts.corrupt) == (2, 1, 1)
    now, then = m.crc32(bytes([ord("p") ^ 1]) + b"ayload one"), m.crc32(b"payload one")
    want = f"checksum {now:08x}, {then:08x} was stored"
    assert corrupt(spool_dir) == {f"in=default=ready={path.name}": want + "\n"}
    assert in_file(spool_dir, good).exists()


def test_an_inbox_message_without_a_checksum_is_unchecked_not_corrupt(spool_dir: Path) -> None:
    [old] = fill_inbox(spool_dir, [b"stored by an earlier release"])
    os.removexattr(in_file(spool_dir, old), SUM_XATTR)
    counts = v.verify(Spool(str(spool_dir)), Filter())
    assert (counts.checked, counts.ok, counts.unchecked, counts.corrupt) == (1, 0, 1, 0)
    assert in_file(spool_dir, old).exists()


def test_filters_narrow_what_is_read(spool_dir: Path) -> None:
    sp = Spool(str(spool_dir))
    put(sp, [A], b"a")
    put(sp, [B], b"b")
    fill_inbox(spool_dir, [b"x"], channel="jobs")
    fill_inbox(spool_dir, [b"y"])
    assert v.verify(sp, Filter(box="out")).checked == 2
    assert v.verify(sp, Filter(peer="b")).checked == 1
    assert v.verify(sp, Filter(channel="jobs")).checked == 1
    assert v.verify(sp, Filter(box="in", state="done")).checked == 0


def test_a_message_moved_on_while_read_is_moved_from_where_it_went(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ident] = fill_inbox(spool_dir, [b"claimed while verified"])
    flip(in_file(spool_dir, ident))
    sp = Spool(str(spool_dir))
    real = v.check_in

    def check_then_claim(path: str) -> tuple[str, int]:
        result = real(path)
        assert sp.claim("default", 1, 600)  # a consumer takes it: ready -> claimed
        return result

    monkeypatch.setattr(v, "check_in", check_then_claim)
    assert v.verify(sp, Filter()).corrupt == 1
    [name] = corrupt(spool_dir)
    assert name.startswith("in=default=claimed=")
    assert not list((spool_dir / "in" / "default").glob("*/*"))


def test_a_message_gone_before_it_is_read_is_not_counted(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ident] = fill_inbox(spool_dir, [b"acknowledged and purged meanwhile"])
    path = in_file(spool_dir, ident)
    sp = Spool(str(spool_dir))
    real = v.check_in

    def gone(p: str) -> tuple[str, int]:
        path.unlink()
        return real(p)

    monkeypatch.setattr(v, "check_in", gone)
    assert v.verify(sp, Filter()).as_dict() == {
        "checked": 0,
        "ok": 0,
        "corrupt": 0,
        "unchecked": 0,
        "bytes": 0,
    }


def test_the_move_goes_through_the_seam(spool_dir: Path) -> None:
    [ident] = fill_inbox(spool_dir, [b"abc"])
    path = in_file(spool_dir, ident)
    flip(path)
    fs = TracingFS()
    sp = Spool(str(spool_dir), fs=fs)
    v.verify(sp, Filter())
    dest = f"{sp.root}/corrupt/in=default=ready={path.name}"
    assert ("rename", str(path), dest) in fs.ops
    assert ("create", f"{dest}.why") in fs.ops


def test_the_request_exits_1_on_corruption_and_prints_counts(spool_dir: Path) -> None:
    import io

    sp = Spool(str(spool_dir))
    [ident] = put(sp, [A], b"one")
    out = io.StringIO()
    assert LsRequest(verify=True).run(sp, out) == 0
    assert out.getvalue() == (
        "verified 1 message (259B): 1 ok, 0 corrupt (moved to corrupt/), 0 unchecked (no checksum kept)\n"
    )
    flip(out_file(sp, ident))
    out = io.StringIO()
    assert LsRequest(verify=True, as_json=True).run(sp, out) == 1
    assert out.getvalue() == '{"checked": 1, "ok": 0, "corrupt": 1, "unchecked": 0, "bytes": 259}\n'


def test_a_read_error_is_damage_a_permission_error_is_not(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ident] = fill_inbox(spool_dir, [b"on a bad sector"])
    path = in_file(spool_dir, ident)
    sp = Spool(str(spool_dir))

    def denied(p: str) -> tuple[str, int]:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)

    monkeypatch.setattr(v, "check_in", denied)
    with pytest.raises(PermissionError):
        v.verify(sp, Filter())
    assert path.exists() and not corrupt(spool_dir)

    def eio(p: str) -> tuple[str, int]:
        raise OSError(errno.EIO, os.strerror(errno.EIO), p)

    monkeypatch.setattr(v, "check_in", eio)
    assert v.verify(sp, Filter()).corrupt == 1
    assert corrupt(spool_dir) == {f"in=default=ready={path.name}": "unreadable: Input/output error\n"}
