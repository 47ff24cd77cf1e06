"""A big queue is listed a window at a time (#17): the sender's memory holds the window."""

from __future__ import annotations

import gc
import os
import random
import sys
import tracemalloc
import weakref
from pathlib import Path

import pytest
from dropr import peerrun as pr
from dropr import transport as tp
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


def _names_in(folder: Path, count: int) -> list[str]:
    """Make count empty files named as queued messages, in a shuffled order; return the names."""
    folder.mkdir(parents=True)
    names = [f"5{1_700_000_000_000_000 + i * 7919 % count:013x},id{i:08d}" for i in range(count)]
    random.Random(17).shuffle(names)
    for n in names:
        (folder / n).touch()
    return sorted(names)


def test_first_names_of_a_big_folder_in_any_order(tmp_path: Path) -> None:
    everything = _names_in(tmp_path / "q", 3000)
    folder = str(tmp_path / "q")
    for first in (1, 2, 10, 333, 2999, 3000, 5000):
        assert _layout.message_names(folder, "out", first) == (everything[:first], [])
    after = everything[1234]
    assert _layout.message_names(folder, "out", 500, after)[0] == everything[1235:1735]


def test_first_names_hold_little_more_than_the_names_picked(tmp_path: Path) -> None:
    """The listing's peak is the names picked and a quarter more: heapq.nsmallest held a
    tuple and an int beside each (a window of 100,000 names peaked at 20 MiB, 13 so)."""
    folder = str(tmp_path / "q")
    everything = _names_in(tmp_path / "q", 12_000)
    first = 6000  # more than the 2,000 tuples Python keeps for reuse
    size = sum(sys.getsizeof(n) + 8 for n in everything[:first])  # the strings and the list
    tracemalloc.start()
    try:
        names, _ = _layout.message_names(folder, "out", first)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert names == everything[:first]
    assert peak < 1.5 * size, (peak, size)


def test_a_closed_upload_frees_its_form_at_once() -> None:
    """A form and its parts refer to each other: left to the cycle collector, 25-30 forms
    (a copy of each message of a batch in each) were alive at once in a drain of a
    million, and the sender's peak RSS was 87 MiB, 55 so (#17)."""
    t = tp.upload(PEER, [("a", b"x" * 1000), ("b", b"y")], "n", tp.Timeouts())
    assert t.form is not None
    form = weakref.ref(t.form)
    gc.disable()
    try:
        t.close()
        del t
        assert form() is None
    finally:
        gc.enable()
