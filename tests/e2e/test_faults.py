"""Faults with real processes: kill -9 of dropr-send and dropr-serve mid-transfer, a full disk.

The kills land at random moments (random delays, or right after the receiver's
inbox reached a random count: the window where a batch is stored at the peer
but not yet recorded by the sender). Afterwards every message must be in the
peer's inbox exactly once, byte for byte, and the outbox must show all sent.
Only processes these tests started are killed, by pid.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Node, Nodes, alive, free_port, kill_server_tree, listdir, tmpfs, unstored, wait_until

N = 3000
PAYLOAD = 1000  # bytes per message: a transfer of a few MB, long enough to be cut
DEADLINE = 120.0  # generous for the slow virtual disk; a healthy run needs a few seconds
FAST_RETRY = '[send]\nbackoff_min = "50ms"\nbackoff_max = "300ms"\n'

pytestmark = pytest.mark.slow


def payloads() -> list[bytes]:
    return [f"m{i:05d} ".encode() + bytes([97 + i % 26]) * (PAYLOAD - 7) for i in range(N)]


def put_all(a: Node, url: str) -> dict[str, bytes]:
    """Put N distinct messages in one dropr-put --lines; return id -> payload."""
    data = payloads()
    p = a.run(
        "dropr-put",
        "--lines",
        "--to",
        url,
        input=b"\n".join(data) + b"\n",
        check=True,
        timeout=DEADLINE,
    )
    ids = p.stdout.decode().split()
    assert len(ids) == N
    return dict(zip(ids, data, strict=True))


def ready(b: Node) -> Path:
    return b.spool / "in" / "default" / "ready"


def check_exactly_once(a: Node, b: Node, expected: dict[str, bytes]) -> None:
    """Every message once in b's inbox, byte for byte; a's outbox shows all of them sent."""
    names = listdir(ready(b))
    ids = [n.split(",")[2] for n in names]
    dup = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
    assert not dup, f"stored more than once: {sorted(dup)[:5]}"
    assert set(ids) == set(expected), f"missing {len(set(expected) - set(ids))}"
    for n in names:
        assert (ready(b) / n).read_bytes() == expected[n.split(",")[2]], n
    for state in ("wait", "claimed", "done", "dead"):
        assert listdir(b.spool / "in" / "default" / state) == []
    recs = a.ls("-l", "--out")
    assert len(recs) == N
    assert {r["state"] for r in recs} == {"sent"}


def finish(a: Node) -> None:
    """Run dropr-send --once --now until nothing is left queued."""

    def done() -> bool:
        p = a.send_once("--now", timeout=DEADLINE)
        assert p.returncode in (0, 75), p.stderr.decode()
        return p.returncode == 0

    wait_until(done, DEADLINE, "the last pass to deliver everything")


def test_kill_sender_at_random_moments(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    url = b.serve()
    a.config(FAST_RETRY)
    expected = put_all(a, url)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    kills = 0
    for rnd in range(8):
        stored = len(listdir(ready(b)))
        if stored >= N:
            break
        sender = a.start_sender("--batch", "20", wait=False)
        if rnd % 2:
            # right after the peer stored a batch: the "lost answer" window
            target = min(N, stored + rng.randint(1, 400))
            wait_until(
                lambda t=target, s=sender: len(listdir(ready(b))) >= t or s.poll() is not None,
                DEADLINE,
                "the peer to store more",
                interval=0.002,  # kill as soon as the count is reached
            )
        else:
            # at a random moment, possibly mid-upload
            time.sleep(rng.uniform(0.05, 0.3))  # the fault's timing, not a synchronization
        if sender.poll() is None:
            sender.send_signal(signal.SIGKILL)
            kills += 1
        sender.wait(30)
    assert kills >= 3, f"only {kills} kills landed (seed {seed}); the transfer was too quick"
    finish(a)
    check_exactly_once(a, b, expected)
    wait_until(lambda: not unstored(b.spool), 30, "b's unstored files to be removed")


def kill_server(b: Node) -> None:
    """kill -9 the dropr-serve master and its workers at once; wait until they are gone."""
    master = b.serve_proc
    assert master is not None
    pids = kill_server_tree(master.pid)
    master.wait(30)
    b.serve_proc = None
    wait_until(lambda: not any(alive(p) for p in pids), 30, "the killed server processes to exit")


def test_kill_server_at_random_moments(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    port = free_port()
    listen = f"127.0.0.1:{port}"
    url = b.serve(listen=listen)
    a.config(FAST_RETRY)
    expected = put_all(a, url)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    a.start_sender("--batch", "20", wait=False)  # 50 a batch stored all 3,000 within the first sleep
    kills = 0
    for rnd in range(6):
        stored = len(listdir(ready(b)))
        if stored >= N:
            break
        if rnd % 2:
            target = min(N, stored + rng.randint(1, 400))
            wait_until(
                lambda t=target: len(listdir(ready(b))) >= t,
                DEADLINE,
                "the peer to store more",
                interval=0.002,  # kill as soon as the count is reached
            )
        else:
            time.sleep(rng.uniform(0.02, 0.2))  # the fault's timing, not a synchronization
        kill_server(b)
        kills += 1
        assert b.serve(listen=listen) == url  # the same port: the sender's peer URL stays valid
    assert kills >= 3, f"only {kills} kills (seed {seed})"
    outq = a.spool / "out"

    def all_sent() -> bool:
        return all(not listdir(outq / p / "queued") for p in listdir(outq))

    wait_until(all_sent, DEADLINE, "the daemon to deliver everything after the last restart")
    check_exactly_once(a, b, expected)
    # tmp/ may hold files of killed workers: crash leftovers, swept by age, never in the inbox


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at tmp_path/b (node b's spool); unmounted afterwards."""
    with tmpfs(tmp_path / "b", "size=4m") as mnt:
        yield mnt


SIZE = 300 << 10


def put_big(a: Node, url: str, n: int = 20) -> dict[str, bytes]:
    data = {}
    for i in range(n):
        payload = bytes([65 + i]) * SIZE
        data[a.put(payload, "--to", url)] = payload
    return data


def check_inbox_intact(b: Node, data: dict[str, bytes]) -> list[str]:
    """Assert every inbox file is a complete message; return their ids."""
    names = listdir(ready(b))
    for n in names:
        got = (ready(b) / n).read_bytes()
        assert len(got) == SIZE, f"{n}: {len(got)} of {SIZE} bytes stored"
        assert got == data[n.split(",")[2]], n
    return [n.split(",")[2] for n in names]


def test_disk_full_at_receiver(nodes: Nodes, small_fs: Path) -> None:
    """Below serve.min_free the server answers 503; the sender defers, then completes."""
    a, b = nodes("a"), nodes("b")
    assert b.spool == small_fs
    # the floor is larger than one request (one 300 KiB message at a time), so the floor,
    # not a full disk, stops the transfer
    b.config('[serve]\nmin_free = "512KiB"\n')
    try:
        url = b.serve()
        data = put_big(a, url)
        p = a.send_once("--batch", "1", "--concurrency", "1", timeout=DEADLINE)
        assert p.returncode == 75, p.stderr.decode()
        text = a.run("dropr-ls", "--out", check=True).stdout.decode()
        assert "503" in text and "disk" in text, text
        states = a.states("out")
        assert "queued" in states.values(), "everything fitted: the disk was not full"
        stored = check_inbox_intact(b, data)
        assert 0 < len(stored) < len(data)
        assert set(stored) == {i for i, s in states.items() if s == "sent"}
        wait_until(lambda: not unstored(b.spool), 30, "b's unstored files to be removed")
        assert b.serve_proc is not None and b.serve_proc.poll() is None
        # the backoff holds: a plain pass does not hammer the full peer
        p = a.send_once(timeout=DEADLINE)
        assert p.returncode == 75
        assert len(listdir(ready(b))) == len(stored)

        # make room: the deferred messages go through, each exactly once
        r = subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        p = a.send_once("--now", timeout=DEADLINE)
        assert p.returncode == 0, p.stderr.decode()
        assert sorted(check_inbox_intact(b, data)) == sorted(data)
        assert set(a.states("out").values()) == {"sent"}
    finally:
        b.stop_all()


def test_disk_full_mid_request_stores_nothing_truncated(nodes: Nodes, small_fs: Path) -> None:
    """A request larger than the free space: refused (503) or stored whole, never cut."""
    a, b = nodes("a"), nodes("b")
    b.config('[serve]\nmin_free = "256KiB"\n')
    try:
        url = b.serve()
        data = put_big(a, url)
        p = a.send_once("--batch", "2", timeout=DEADLINE)
        assert p.returncode == 75, p.stderr.decode()
        stored = check_inbox_intact(b, data)
        assert set(stored) == {i for i, s in a.states("out").items() if s == "sent"}
        wait_until(lambda: not unstored(b.spool), 30, "b's unstored files to be removed")
    finally:
        b.stop_all()


def test_disk_full_during_a_large_message(nodes: Nodes, small_fs: Path, tmp_path: Path) -> None:
    """A message large enough for the server's direct writer (its blocks are written on a
    helper thread) fills the disk midway: 503, nothing stored, tmp/ clean; with room, once."""
    from dropr.spool import DIRECT_MIN

    a, b = nodes("a"), nodes("b")
    b.config('[serve]\nmin_free = "64KiB"\n')
    src = tmp_path / "big.bin"
    payload = os.urandom(1 << 20) * ((DIRECT_MIN >> 20) + 4)  # larger than the 4 MiB disk
    src.write_bytes(payload)
    try:
        url = b.serve()
        ident = a.run("dropr-put", "--to", url, "--file", str(src), check=True).stdout.decode().strip()
        p = a.send_once(timeout=DEADLINE)
        assert p.returncode == 75, p.stderr.decode()
        text = a.run("dropr-ls", "--out", check=True).stdout.decode()
        assert "503" in text and "disk full" in text, text
        assert listdir(ready(b)) == []
        wait_until(lambda: not unstored(b.spool), 30, "b's unstored files to be removed")
        assert b.serve_proc is not None and b.serve_proc.poll() is None

        r = subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], capture_output=True)
        assert r.returncode == 0, r.stderr.decode()
        p = a.send_once("--now", timeout=DEADLINE)
        assert p.returncode == 0, p.stderr.decode()
        names = listdir(ready(b))
        assert [n.split(",")[2] for n in names] == [ident]
        assert (ready(b) / names[0]).read_bytes() == payload
    finally:
        b.stop_all()
