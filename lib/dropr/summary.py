"""What dropr-send did, summed up: a line per peer and event, not per message.

    sent peer=b count=500 bytes=589312 in=0.06s
    sent peer=b count=61500 bytes=72486400 in=10.00s duplicate=2
    processed peer=b count=1000
    fetched peer=hub count=40 duplicate=40

A line sums up what came back since the last line of its event and peer. The first
batch after a quiet spell has its line at once (a message put by hand shows up as it
goes); while a peer stays busy, its batches are summed into one line at most every
LOG_EVERY seconds: the daemon wakes for the line that is due (``due``), and --once
writes what is left as it ends (``flush``). ``in`` spans from the first summed batch's
request to the last one's answer, so count/in is the rate; ``bytes`` are the bytes
uploaded (the messages and their framing).

The line per message (``sent id=…``) is a debug line (-v); a message that dies or is
refused, a peer backed off and a file set aside keep a warning line of their own, with
the id. Summing costs a few additions per batch: nothing is
formatted, and no logging call is made, per message unless debug lines are on
(callers ask ``log.isEnabledFor(DEBUG)`` once per batch).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

LOG_EVERY = 10.0  # seconds: at most one summed line per event and peer this often
SENT, PROCESSED, FETCHED = "sent", "processed", "fetched"


class _Sum:
    __slots__ = ("count", "duplicate", "size", "first", "last", "timed")

    def __init__(self, first: float) -> None:
        self.count = self.duplicate = self.size = 0
        self.first = self.last = first
        self.timed = False


class Summary:
    """The counts of one dropr-send not yet logged, per (event, peer)."""

    def __init__(self, log: Any, every: float = LOG_EVERY) -> None:
        self.log = log
        self.every = every
        self.sums: dict[tuple[str, str], _Sum] = {}
        self.written: dict[tuple[str, str], float] = {}  # when a line was last logged (monotonic)

    def add(
        self, event: str, peer: str, count: int, *, duplicate: int = 0, size: int = 0, took: float = -1.0
    ) -> None:
        """Count what one batch (or answer, or poll) of a peer did; took: its request's
        seconds (-1: untimed, no ``in=``)."""
        if count <= 0:
            return
        now = time.monotonic()
        key = (event, peer)
        s = self.sums.get(key)
        if s is None:
            s = self.sums[key] = _Sum(now - max(0.0, took))
        s.count += count
        s.duplicate += duplicate
        s.size += size
        s.last = now
        s.timed = s.timed or took >= 0
        if now - self.written.get(key, -self.every) >= self.every:
            self._write(key, now)

    def flush(self, everything: bool = False) -> None:
        """Log the summed lines that are due (everything: all of them, as the sender ends)."""
        if not self.sums:
            return
        now = time.monotonic()
        for key in list(self.sums):
            if everything or now - self.written.get(key, -self.every) >= self.every:
                self._write(key, now)

    def due(self) -> float:
        """Return the seconds until a summed line is due (inf if none waits)."""
        if not self.sums:
            return float("inf")
        at = min(self.written.get(key, 0.0) + self.every for key in self.sums)
        return max(0.0, at - time.monotonic())

    def _write(self, key: tuple[str, str], now: float) -> None:
        s = self.sums.pop(key)
        self.written[key] = now
        fmt, args = "%s peer=%s count=%d", [key[0], key[1], s.count]
        if s.size:
            fmt += " bytes=%d"
            args.append(s.size)
        if s.timed:
            fmt += " in=%.2fs"
            args.append(s.last - s.first)
        if s.duplicate:
            fmt += " duplicate=%d"
            args.append(s.duplicate)
        self.log.info(fmt, *args)
