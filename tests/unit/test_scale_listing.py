"""A big queue is listed a window at a time (#17): the sender's memory holds the window."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dropr import peerrun as pr
from dropr.config import Peer
from dropr.spool import Spool, _layout

PEER = Peer("p", "http://127.0.0.1:9/")


def test_first_names_are_the_smallest_and_strays_are_reported(tmp_path: Path) -> None:
    sp = Spool(str(tmp_path / "spool"))
    batch = sp.batch([PEER])
    for i in range(30):
        batch.add(b"%d" % i)
    batch.commit()
    folder = f"{sp.peer_dir(PEER)}/queued"
    (Path(folder) / "stray.txt").write_text("x")
    everything, bad = _layout.message_names(folder, "out")
    assert len(everything) == 30 and bad == ["stray.txt"]
    first, bad = _layout.message_names(folder, "out", 7)
    assert first == everything[:7] and bad == ["stray.txt"]
    after, _ = _layout.message_names(folder, "out", 7, everything[20])
    assert after == everything[21:28]
    assert _layout.message_names(str(tmp_path / "none"), "out", 7) == ([], [])


def test_sender_takes_a_queue_bigger_than_its_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pr, "LIST_WINDOW", 10)
    sp = Spool(str(tmp_path / "spool"))
    batch = sp.batch([PEER])
    for i in range(25):
        batch.add(b"%d" % i)
    batch.commit()
    run = pr.PeerRun(PEER, sp, once=True)
    taken: list[str] = []
    while items := run.next_batch(4, 1 << 20):
        assert len(run.queue) <= 10
        taken += [name for _, _, name in items]
    queued = sorted(os.listdir(f"{sp.peer_dir(PEER)}/queued"))
    assert taken == queued and len(taken) == 25  # in order, every one, none twice
