"""A progress bar on stderr, for the long passes of dropr-send --once and dropr-ls --verify."""

from __future__ import annotations

import sys
import time

EVERY = 0.2  # seconds between two drawings of the bar (but the last)
WIDTH = 30


class Bar:
    """``PROG: [#####     ] DONE/TOTAL WORD`` on one line, redrawn in place; off when not enabled
    (the commands enable it on a terminal, without -q)."""

    __slots__ = ("prog", "word", "enabled", "shown")

    def __init__(self, prog: str, word: str, enabled: bool) -> None:
        self.prog = prog
        self.word = word
        self.enabled = enabled
        self.shown = 0.0  # when last drawn (monotonic); 0: its line is not on the screen

    def show(self, done: int, total: int, final: bool = False) -> None:
        """Draw the bar, at most every EVERY seconds; final draws it and ends its line."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.shown < EVERY:
            return
        self.shown = now
        frac = min(done / total, 1.0) if total else 1.0
        sys.stderr.write(f"\r{self.prog}: [{'#' * int(WIDTH * frac):<{WIDTH}}] {done}/{total} {self.word}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def break_line(self) -> None:
        """End the bar's line before a log line (the bar is drawn again below it)."""
        if self.enabled and self.shown:
            sys.stderr.write("\n")
            self.shown = 0.0
