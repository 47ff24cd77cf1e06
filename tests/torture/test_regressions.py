"""What the torture runs found, each kept as a test of its own (#16).

- A sender whose clock was stepped back after a failure kept the peer backed off for as
  long as the step (peer.json's backoff end is wall-clock time): an hour without a try.
- A dropr-send daemon whose spool's filesystem filled up exited (74) at the first
  write that failed, and with it every delivery, until something restarted it.
- So did `dropr-recv --exec`, at a claim or an ack that a full disk refused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import Node, fill_inbox, free_port, inbox_states, wait_until

from .disk import Disk


def test_a_backoff_set_before_the_clock_stepped_back_ends_within_backoff_max(tmp_path: Path) -> None:
    a, b = Node(tmp_path, "a"), Node(tmp_path, "b")
    try:
        url = b.serve()
        a.config(f'[peers.b]\nurl = "{url}"\n[send]\nbackoff_min = "100ms"\nbackoff_max = "1s"\n')
        ident = a.put("after the step", "--to", "b")
        # the failure was recorded while the clock was an hour ahead: its backoff ends in an hour
        now = time.time()
        state = {
            "failures": 4,
            "until": now + 3600,
            "last_error": "HTTP 503",
            "last_error_at": now + 3599,
            "failing_since": now + 3590,
        }
        (a.spool / "out" / "b" / "peer.json").write_text(json.dumps(state))
        a.start_sender()
        wait_until(lambda: ident in inbox_states(b.spool), 10, "delivery within backoff_max, not in an hour")
    finally:
        a.stop_all()
        b.stop_all()


def test_a_full_spool_does_not_end_the_sender_daemon(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a small loop-mounted filesystem")
    disk = Disk(tmp_path / "a.img", tmp_path / "a-fs", 16, 4096)
    disk.mount()
    a, b = Node(disk.mnt, "a"), Node(tmp_path, "b")
    a.send_log = tmp_path / "a-send.log"  # not on the full filesystem
    try:
        port = free_port()
        a.config(
            f'[peers.b]\nurl = "http://127.0.0.1:{port}/"\n'
            '[send]\nbackoff_min = "100ms"\nbackoff_max = "300ms"\n'
        )
        ident = a.put("while b is down", "--to", "b")
        sender = a.start_sender()
        wait_until(lambda: (a.spool / "out" / "b" / "peer.json").exists(), 10, "the first failure recorded")
        disk.fill()
        # the next failure's record cannot be written: the daemon waits, it does not exit
        wait_until(lambda: "spool full" in a.send_log.read_text(), 10, "the sender to meet the full disk")
        time.sleep(1.5)
        assert sender.poll() is None, a.send_log.read_text()
        disk.free()
        b.serve(listen=f"127.0.0.1:{port}")
        wait_until(lambda: ident in inbox_states(b.spool), 20, "delivery once the disk has room")
        assert sender.poll() is None, a.send_log.read_text()
    finally:
        a.stop_all()
        b.stop_all()
        disk.unmount()


def test_a_full_spool_does_not_end_the_exec_consumer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 for a small loop-mounted filesystem")
    disk = Disk(tmp_path / "b.img", tmp_path / "b-fs", 16, 4096)
    disk.mount()
    b = Node(disk.mnt, "b")
    log = tmp_path / "handled"
    try:
        monkeypatch.setenv("DROPR_NODE", "b")  # fill_inbox's spool is b's
        ids = fill_inbox(b.spool, [f"message {i}".encode() for i in range(200)])
        disk.fill()  # claimed/ and done/ cannot grow: claims and acks fail with ENOSPC
        with open(tmp_path / "recv.log", "wb") as err:
            handler = f"cat >/dev/null; echo $DROPR_ID >> {log}"
            recv = b.start("dropr-recv", "--exec", handler, "--lease", "2s", stderr=err)
        wait_until(lambda: "spool full" in (tmp_path / "recv.log").read_text(), 20, "the consumer to meet it")
        time.sleep(1.5)
        assert recv.poll() is None, (tmp_path / "recv.log").read_text()
        disk.free()
        wait_until(lambda: list(inbox_states(b.spool).values()) == ["done"] * 200, 60, "every message done")
        assert recv.poll() is None, (tmp_path / "recv.log").read_text()
        assert set(log.read_text().split()) == set(ids)
    finally:
        b.stop_all()
        disk.unmount()
