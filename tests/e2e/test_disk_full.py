"""A full disk: dropr-put exits 75 with one line, nothing partial is visible, and it recovers.

The spool lives on a 2 MiB tmpfs mounted for the test (needs root; skipped otherwise).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr.spool import OUT_STATES, Spool
from helpers import NOWHERE, tmpfs

LINE = 3000  # header + line fit one 4 KiB page: a write either fits whole or fails


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at the end whatever happens."""
    with tmpfs(tmp_path / "small", "size=2m,mode=0755") as mnt:
        yield mnt


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_consistent(spool: Path, expected: dict[str, bytes]) -> list[str]:
    """Every queued file is whole and expected, every expected id is queued, tmp/ is empty."""
    sp = Spool(str(spool), create=False)
    names = []
    for peer in sp.out_peers():
        for state in OUT_STATES:
            for name in sp.out_names(peer, state):
                hdr = sp.read_header(peer, state, name)  # ValueError if the payload is short
                with open(sp.path("out", peer, state, name), "rb") as f:
                    f.seek(m.HEADER_SIZE)
                    data = f.read()
                assert m.crc32(data) == hdr.crc, f"{name}: checksum"
                assert hdr.ident in expected, f"{name}: a message no put reported"
                assert data == expected[hdr.ident]
                names.append(name)
    for ident in expected:
        assert sp.find_out(ident), f"{ident} was printed but is not on disk"
    assert len(names) == len(expected)
    assert os.listdir(sp.tmp) == [], "a failed put left tmp files"
    return names


def test_disk_full_exits_75_and_recovers(cmd: Any, small_fs: Path) -> None:
    spool = small_fs / "spool"
    expected: dict[str, bytes] = {}
    failure = None
    for batch in range(100):
        lines = [(b"%d-%d-" % (batch, i)).ljust(LINE, b"x") for i in range(40)]
        res = cmd.run("dropr-put", "--lines", "--to", NOWHERE, input=b"\n".join(lines), spool=spool)
        ids = res.stdout.decode().split()
        expected.update(zip(ids, lines, strict=False))  # ids are printed in line order
        if res.returncode != 0:
            failure = res
            break
        assert len(ids) == len(lines)
    assert failure is not None, "2 MiB never filled up"
    assert failure.returncode == 75, failure.stderr
    line = cmd.one_error_line(failure.stderr, "dropr-put")
    assert "space" in line
    check_consistent(spool, expected)

    # single puts on the full disk fail the same way and leave nothing behind (one page
    # each: larger ones can hit the short-write bug, see the xfail test below)
    for _ in range(3):
        data = os.urandom(LINE)
        res = cmd.run("dropr-put", "--to", NOWHERE, input=data, spool=spool)
        if res.returncode == 0:  # a small one may fit in the pages the aborted batch freed
            expected[res.stdout.decode().strip()] = data
            continue
        assert "space" in cmd.expect_error(res, 75, "dropr-put")
    queued = check_consistent(spool, expected)

    res = cmd.run("dropr-ls", "--json", spool=spool)
    assert res.returncode == 0, res.stderr

    # free space the way the spool frees it: delivered, processed, purged after retention
    sp = Spool(str(spool), create=False)
    [peer] = sp.out_peers()
    half = queued[: len(queued) // 2]
    sp.mark_sent(peer, half)
    sp.mark_processed(peer, half)
    assert sp.purge(now=time.time() + 30 * 86400) == len(half)
    assert free_bytes(small_fs) > 300_000

    data = os.urandom(250_000)
    res = cmd.run("dropr-put", "--to", NOWHERE, input=data, spool=spool)
    assert res.returncode == 0, res.stderr
    ident = res.stdout.decode().strip()
    [(p, state, name)] = sp.find_out(ident)
    assert sp.read_header(p, state, name).size == len(data)


def test_file_larger_than_free_space_is_75_not_truncated(cmd: Any, small_fs: Path, tmp_path: Path) -> None:
    spool = small_fs / "spool"
    assert cmd.run("dropr-put", "--to", NOWHERE, input=b"first", spool=spool).returncode == 0
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (free_bytes(small_fs) - 200 * 1024))  # leave ~200 KiB
    src = tmp_path / "big"
    src.write_bytes(os.urandom(300_000))  # one read, one write: the write comes up short
    res = cmd.run("dropr-put", "--to", NOWHERE, "--file", str(src), spool=spool)
    sp = Spool(str(spool), create=False)
    for peer in sp.out_peers():
        for name in sp.out_names(peer, "queued"):
            sp.read_header(peer, "queued", name)  # raises on the truncated message
    assert res.returncode == 75
