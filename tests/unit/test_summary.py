"""dropr-send's summed lines (summary.py): one per batch after a quiet spell, then at most
one per event and peer every LOG_EVERY seconds; the clock is the only thing mocked."""

from __future__ import annotations

import logging

import pytest
from dropr import summary
from dropr.summary import FETCHED, PROCESSED, SENT, Summary

LOG = logging.getLogger("dropr.test_summary")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(summary.time, "monotonic", c)
    return c


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == LOG.name]
    caplog.clear()
    return out


def test_the_first_batch_has_its_line_at_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    s = Summary(LOG)
    s.add(SENT, "b", 500, size=589312, took=0.0612)
    assert lines(caplog) == ["sent peer=b count=500 bytes=589312 in=0.06s"]
    assert s.due() == float("inf")  # nothing waits


def test_a_busy_peer_is_summed_into_one_line_per_interval(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    s = Summary(LOG, every=10.0)
    s.add(SENT, "b", 500, size=1000, took=0.05)
    lines(caplog)
    for i in range(1, 21):  # 20 more batches over the next 4 s, the second with a duplicate
        clock.now += 0.2
        s.add(SENT, "b", 500, size=1000, took=0.05, duplicate=int(i == 2))
    assert lines(caplog) == []
    assert s.due() == pytest.approx(6.0)  # the daemon sleeps at most until the line is due
    clock.now += 6.0
    s.flush()
    # from the first summed batch's request (0.2 s after the first line, less its 0.05 s) to now
    assert lines(caplog) == ["sent peer=b count=10000 bytes=20000 in=3.85s duplicate=1"]
    s.flush()
    assert lines(caplog) == []


def test_the_end_of_a_run_writes_what_is_left(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    s = Summary(LOG)
    s.add(SENT, "b", 3, size=10, took=0.01)
    s.add(SENT, "c", 2, size=10, took=0.01)
    clock.now += 1
    s.add(SENT, "b", 7, size=30, took=0.5)
    s.add(PROCESSED, "b", 4)
    s.add(FETCHED, "hub", 40, duplicate=40)
    s.add(PROCESSED, "b", 0)  # nothing: no line
    lines(caplog)
    s.flush()  # not due yet
    assert lines(caplog) == []
    s.flush(everything=True)
    assert lines(caplog) == ["sent peer=b count=7 bytes=30 in=0.50s"]


def test_events_and_peers_are_summed_apart(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    s = Summary(LOG)
    s.add(SENT, "b", 1, size=10, took=0.01)
    s.add(SENT, "c", 2, size=20, took=0.02)
    s.add(PROCESSED, "b", 1)
    s.add(FETCHED, "hub", 40, duplicate=40)
    assert lines(caplog) == [
        "sent peer=b count=1 bytes=10 in=0.01s",
        "sent peer=c count=2 bytes=20 in=0.02s",
        "processed peer=b count=1",
        "fetched peer=hub count=40 duplicate=40",
    ]


def test_quiet_after_an_interval_a_batch_has_its_line_at_once_again(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    s = Summary(LOG, every=10.0)
    s.add(PROCESSED, "b", 1)
    clock.now += 10.0
    s.add(PROCESSED, "b", 2)
    assert lines(caplog) == ["processed peer=b count=1", "processed peer=b count=2"]
