"""The installed dropr-put and dropr-ls as subprocesses, the way users run them."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr.spool import Spool
from helpers import MSG_FIELDS, NOWHERE, ROW_FIELDS


def payload(spool: Path, ident: str) -> tuple[m.Header, bytes]:
    sp = Spool(str(spool), create=False)
    [(peer, state, name)] = sp.find_out(ident)
    hdr = sp.read_header(peer, state, name)
    with open(sp.path("out", peer, state, name), "rb") as f:
        f.seek(m.HEADER_SIZE)
        return hdr, f.read()


def test_put_stdin_then_ls(cmd: Any, spool_dir: Path) -> None:
    res = cmd.run(
        "dropr-put",
        "--to",
        NOWHERE,
        "--channel",
        "e2e",
        "--priority",
        "2",
        input=b"hello e2e",
        spool=spool_dir,
    )
    assert res.returncode == 0, res.stderr
    [ident] = res.stdout.decode().split()
    hdr, data = payload(spool_dir, ident)
    assert data == b"hello e2e" and hdr.channel == "e2e" and hdr.priority == 2

    res = cmd.run("dropr-ls", spool=spool_dir)
    assert res.returncode == 0 and res.stderr == b""
    assert any(line.split()[2:4] == ["queued", "1"] for line in res.stdout.decode().splitlines())

    res = cmd.run("dropr-ls", "--json", spool=spool_dir)
    rows = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [list(r) for r in rows] == [ROW_FIELDS]
    assert (rows[0]["box"], rows[0]["state"], rows[0]["count"], rows[0]["bytes"]) == (
        "out",
        "queued",
        1,
        9,
    )

    res = cmd.run("dropr-ls", "-l", "--json", spool=spool_dir)
    [rec] = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert list(rec) == MSG_FIELDS
    assert (
        rec["id"],
        rec["state"],
        rec["priority"],
        rec["size"],
        rec["attempts"],
        rec["error"],
    ) == (ident, "queued", 2, 9, 0, None)
    assert abs(rec["created"] - time.time()) < 60

    res = cmd.run("dropr-ls", "-l", spool=spool_dir)
    assert res.stdout.decode().split()[:4] == [ident, "out", rec["name"], "queued"]

    res = cmd.run("dropr-ls", ident, spool=spool_dir)
    assert res.returncode == 0
    text = res.stdout.decode()
    for key in ("id", "state", "attempts", "path", "channel", "error"):
        assert any(line.split()[:1] == [key] for line in text.splitlines()), key
    assert rec["path"] in text

    res = cmd.run("dropr-ls", "--prom", spool=spool_dir)
    assert f'dropr_messages{{box="out",name="{rec["name"]}",state="queued"}} 1' in res.stdout.decode()


def test_put_many_peers_and_ls_counts(cmd: Any, spool_dir: Path) -> None:
    for i in range(3):
        res = cmd.run(
            "dropr-put",
            "--to",
            NOWHERE,
            "--to",
            "http://127.0.0.1:9/b/",
            input=f"m{i}",
            spool=spool_dir,
        )
        assert res.returncode == 0
    res = cmd.run("dropr-ls", "--json", "--out", spool=spool_dir)
    rows = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert sorted(r["count"] for r in rows if r["state"] == "queued") == [3, 3]


def test_file_of_50mib_streams_in_flat_memory(cmd: Any, spool_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(50):
            f.write(block[i:] + block[:i])  # 50 distinct MiB
    # a wrapper measures the peak RSS of exactly one child: ours
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "sys.stderr.buffer.write(r.stderr)\n"
        "sys.stdout.write(r.stdout.decode() + '%d %d' % (r.returncode,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, cmd.path("dropr-put"), "--to", NOWHERE, "--file", str(src)],
        capture_output=True,
        env=cmd.env(spool_dir),
        timeout=120,
        check=False,
    )
    *ids, code, maxrss_kib = res.stdout.decode().split()
    assert int(code) == 0, res.stderr
    assert int(maxrss_kib) < 64 * 1024 * 0.75, f"peak RSS {int(maxrss_kib) // 1024} MiB for a 50 MiB file"
    [ident] = ids
    sp = Spool(str(spool_dir), create=False)
    [(peer, state, name)] = sp.find_out(ident)
    hdr = sp.read_header(peer, state, name)
    crc = 0
    with open(sp.path("out", peer, state, name), "rb") as f:
        f.seek(m.HEADER_SIZE)
        while chunk := f.read(1 << 20):
            crc = m.crc32(chunk, crc)
    assert hdr.size == 50 << 20 and hdr.crc == crc
    with open(src, "rb") as f:
        want = 0
        while chunk := f.read(1 << 20):
            want = m.crc32(chunk, want)
    assert crc == want


def _read_line(proc: subprocess.Popen[bytes], buf: bytearray, deadline: float) -> str | None:
    """Read one line from proc's stdout before the deadline, without blocking past it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def test_lines_from_a_slow_pipe_commit_without_eof(cmd: Any, spool_dir: Path) -> None:
    proc = subprocess.Popen(
        [cmd.path("dropr-put"), "--lines", "--to", NOWHERE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cmd.env(spool_dir),
    )
    assert proc.stdin is not None
    buf = bytearray()
    ids = []
    try:
        # the first line also waits for the interpreter to start; later ones get 1 s
        for text, limit in ((b"first line", 5.0), (b"second line", 1.0), (b"third", 1.0)):
            proc.stdin.write(text + b"\n")
            proc.stdin.flush()
            ident = _read_line(proc, buf, time.monotonic() + limit)
            assert ident is not None, f"no id for {text!r} within {limit}s: the commit waits for EOF"
            ids.append(ident)
            assert payload(spool_dir, ident)[1] == text, "the id is printed only once durable"
        proc.stdin.write(b"partial")  # no newline: not a record until EOF
        proc.stdin.flush()
        assert _read_line(proc, buf, time.monotonic() + 0.3) is None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        rest = _read_line(proc, buf, time.monotonic() + 5)
        assert rest is not None
        ids.append(rest)
        assert payload(spool_dir, rest)[1] == b"partial"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(set(ids)) == 4


@pytest.mark.parametrize("n", [2000])
def test_bulk_lines_share_commits(cmd: Any, spool_dir: Path, n: int) -> None:
    data = b"".join(b"line %d\n" % i for i in range(n))
    t0 = time.monotonic()
    res = cmd.run("dropr-put", "--lines", "--to", NOWHERE, input=data, spool=spool_dir)
    assert res.returncode == 0, res.stderr
    ids = res.stdout.decode().split()
    assert len(ids) == n == len(set(ids))
    assert time.monotonic() - t0 < 30
    sp = Spool(str(spool_dir), create=False)
    [peer] = sp.out_peers()
    names = sp.out_names(peer, "queued")
    assert [m.parse_out_name(x)[2] for x in names] == ids, "arrival order is input order"
    for i in (0, n // 2, n - 1):
        assert payload(spool_dir, ids[i])[1] == b"line %d" % i
