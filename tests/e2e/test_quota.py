"""limits.quota counted by a running total (spool/usage.py), not by a scan per put.

The total must equal report.spool_bytes (the scan it replaces) after every kind of
transition made by the real commands, under concurrency without any repair, and
after kill -9 at random points once the repair (a purge's check) has run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from dropr.config import load
from dropr.report import spool_bytes
from dropr.spool import Spool
from dropr.spool.usage import Record, Usage
from helpers import NOWHERE, Node, Nodes, expect_error, listdir, stop, wait_until

QUOTA = '[limits]\nquota = "1GiB"\nretention = "1s"\n'


def spool_of(node: Node) -> Spool:
    return Spool(str(node.spool), load(str(node.spool)), create=False)


def record(node: Node) -> Record:
    rec = Usage(spool_of(node)).read()
    assert rec is not None, f"no usage record at {node.name}"
    return rec


def assert_exact(node: Node) -> None:
    """No window left open, and the total is what a full scan counts."""
    rec = record(node)
    assert rec.opens == rec.closes, f"{node.name}: a window is open: {rec.pack()!r}"
    assert rec.total == spool_bytes(spool_of(node)), f"{node.name}: {rec.total} != the scan"


def quota_pair(nodes: Nodes) -> tuple[Node, Node]:
    a, b = nodes("a"), nodes("b")
    b.config(QUOTA)
    b.serve()
    wait_until((b.spool / "usage").exists, 20, "dropr-serve's first check to count b's spool")
    a.config(QUOTA + f'[peers.b]\nurl = "{b.url}"\n')
    return a, b


def test_total_follows_every_transition(nodes: Nodes) -> None:
    a, b = quota_pair(nodes)
    for i in range(5):
        a.put(f"single {i}" * (i + 1), "--to", "b")
    lines = "".join(f"line {i}\n" for i in range(40))
    a.run("dropr-put", "--lines", "--to", "b", "--to", NOWHERE, input=lines, check=True)  # multicast
    a.run("dropr-put", "--to", "b", "--file", __file__, check=True)
    assert record(a).total > 0
    assert_exact(a)
    a.send_once()  # queued -> sent at a, stored into ready at b; NOWHERE stays queued
    assert listdir(b.spool / "in" / "default" / "ready")
    assert_exact(a)
    assert_exact(b)
    claimed = b.run("dropr-recv", "-n", "30", check=True).stdout.decode().split("\n")
    ids = [line.split("\t")[0] for line in claimed if line]
    assert len(ids) == 30
    b.run("dropr-ack", *ids[:15], check=True)  # claimed -> done
    b.run("dropr-ack", "--reject", "--reason", "bad", *ids[15:20], check=True)  # -> dead
    b.run("dropr-ack", "--release", *ids[20:25], check=True)  # -> ready
    b.run("dropr-ack", "--release", "--delay", "1h", *ids[25:], check=True)  # -> wait
    assert_exact(b)
    b.run("dropr-ack", "--requeue", *ids[15:18], check=True)  # dead -> ready
    assert_exact(b)
    a.send_once()  # status poll: sent -> processed for the acked ones
    assert listdir(a.spool / "out" / "b" / "processed")
    assert_exact(a)
    time.sleep(1.2)  # past the retention: the purges drop done, processed, dead
    a.send_once()
    b.send_once()
    assert not listdir(b.spool / "in" / "default" / "done")
    assert_exact(a)
    assert_exact(b)


def test_parallel_puts_sender_and_consumer_need_no_repair(nodes: Nodes) -> None:
    a, b = quota_pair(nodes)
    sender = a.start_sender()
    consumer = b.start("dropr-recv", "--exec", "true", "--jobs", "2", stderr=subprocess.DEVNULL)
    puts = [
        a.start("dropr-put", "--lines", "--to", "b", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(6)
    ]
    for k, p in enumerate(puts):
        assert p.stdin is not None
        p.stdin.write("".join(f"put {k} line {i} " + "x" * (i % 50) + "\n" for i in range(300)).encode())
        p.stdin.close()
    for k in range(20):
        a.put(f"single {k}", "--to", "b")
    for p in puts:
        assert p.wait(120) == 0

    def all_done() -> bool:
        return len(listdir(b.spool / "in" / "default" / "done")) == 6 * 300 + 20

    wait_until(all_done, 120, "every message consumed at b")
    stop(consumer)
    stop(sender)
    assert_exact(a)
    assert_exact(b)


def test_kill_inside_a_window_is_repaired_by_the_next_check(nodes: Nodes) -> None:
    a = nodes("a")
    a.config(QUOTA)
    a.put("before", "--to", NOWHERE)
    # A put killed right after its first link into queued/: the name is there, the
    # total does not have it, and the window stays open (the fault comes from the FS seam).
    code = (
        "import os, signal, sys\n"
        "from dropr.config import load\n"
        "from dropr.spool import Spool\n"
        "sp = Spool(sys.argv[1], load(sys.argv[1]))\n"
        "real = sp.fs.link\n"
        "def link(src, dst):\n"
        "    real(src, dst)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "sp.fs.link = link\n"
        "b = sp.batch([sp.config.peer(sys.argv[2])])\n"
        "b.add(b'cut' * 100)\n"
        "b.commit()\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(a.spool), NOWHERE], env=a.env, timeout=60)
    assert p.returncode == -signal.SIGKILL
    rec = record(a)
    assert rec.opens == rec.closes + 1
    assert rec.total == spool_bytes(spool_of(a)) - 300
    a.send_once()  # its purge checks the total: OPENS != CLOSES, so it is counted anew
    assert_exact(a)


def test_kill_9_at_random_points_then_repair(nodes: Nodes) -> None:
    a, b = quota_pair(nodes)
    rng = random.Random(os.getpid())
    consumer = b.start("dropr-recv", "--exec", "true", stderr=subprocess.DEVNULL)
    for _ in range(8):
        sender = a.start_sender()
        put = a.start("dropr-put", "--lines", "--to", "b", "--to", NOWHERE, stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        assert put.stdin is not None
        try:
            for i in range(rng.randrange(50, 400)):
                put.stdin.write(f"line {i} {'y' * rng.randrange(100)}\n".encode())
            put.stdin.flush()
        except BrokenPipeError:
            pass
        time.sleep(rng.uniform(0, 0.3))
        for proc in rng.sample([put, sender, consumer], 2):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for proc in (put, sender):
            stop(proc)
        if consumer.poll() is not None:
            consumer = b.start("dropr-recv", "--exec", "true", stderr=subprocess.DEVNULL)
    stop(consumer)
    b.stop_serve(signal.SIGKILL)
    for node in (a, b):
        node.send_once()  # the repair: the purge's check rebuilds a total a crash left open
        assert_exact(node)


def test_over_quota_refused_with_one_line_and_nothing_stored(nodes: Nodes) -> None:
    a = nodes("a")
    a.config('[limits]\nquota = "100"\n')
    a.put("x" * 150, "--to", NOWHERE)
    queued = lambda: sorted(os.listdir(next((a.spool / "out").iterdir()) / "queued"))  # noqa: E731
    before = queued()
    line = expect_error(a.run("dropr-put", "--to", NOWHERE, input="y"), 75, "dropr-put")
    assert "over its quota (150 of 100 bytes)" in line
    assert queued() == before
    assert os.listdir(a.spool / "tmp") == []
    assert_exact(a)


def test_record_rebuilt_after_reboot_and_dropped_without_a_quota(nodes: Nodes) -> None:
    a = nodes("a")
    a.config(QUOTA)
    a.put("x" * 10, "--to", NOWHERE)
    path = a.spool / "usage"
    rec = record(a)
    path.write_bytes(Record(rec.total + 999, rec.opens, rec.closes, "another-boot").pack())
    a.send_once()  # not this kernel's record: a power loss may have lost its updates
    assert_exact(a)
    a.config("")  # no quota: the daemons' check removes the record nobody keeps now
    a.put("y" * 20, "--to", NOWHERE)
    a.send_once()
    assert not path.exists()
    a.config(QUOTA)
    a.put("z" * 30, "--to", NOWHERE)  # the first put with a quota counts the spool whole
    assert_exact(a)
    assert record(a).total == 60


@pytest.mark.parametrize("state", ["queued", "ready"])
def test_corrupt_move_leaves_the_total(nodes: Nodes, state: str) -> None:
    a = nodes("a")
    a.config(QUOTA)
    a.put("x" * 40, "--to", NOWHERE)
    sp = spool_of(a)
    folder = next((a.spool / "out").iterdir()) / "queued"
    [name] = os.listdir(folder)
    if state == "ready":
        from helpers import fill_inbox

        fill_inbox(a.spool, [b"y" * 70])
        folder = a.spool / "in" / "default" / "ready"
        [name] = os.listdir(folder)
        Usage(sp).rebuild()  # fill_inbox stores without a quota's Spool
    sp.retention.move_corrupt(str(folder / name), "test")
    assert_exact(a)


def test_relay_and_receipts_through_it_keep_every_total(nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    fast = '[send]\nbackoff_min = "100ms"\nbackoff_max = "1s"\n'
    c.config(QUOTA)
    c.serve()
    b.config(QUOTA + f'[serve]\nrelay = ["a"]\n[peers.c]\nurl = "{c.url}"\n' + fast)
    b.serve()
    a.config(QUOTA + f'[peers.b]\nurl = "{b.url}"\n[peers.c]\nvia = "b"\n' + fast)
    senders = [a.start_sender(), b.start_sender()]
    for i in range(8):
        a.put(f"through b {i}" * (i + 1), "--to", "c")
    ready = c.spool / "in" / "default" / "ready"
    wait_until(lambda: len(listdir(ready)) == 8, 60, "eight messages at c")
    c.run("dropr-recv", "--all", "--ack", check=True)

    def processed(node: Node) -> bool:
        return len(listdir(node.spool / "out" / "c" / "processed")) == 8

    wait_until(lambda: processed(a) and processed(b), 60, "receipts back at b and a")
    for p in senders:
        stop(p)
    for node in (a, b, c):
        assert_exact(node)
        assert record(node).total == 0
