"""Retention: purge old entries, sweep crash leftovers, move unreadable files and strays aside.

What goes, and why no live writer can own it:

- done, processed and dead entries older than the retention (their ctime: when
  they reached that state), with their meta records and index entries;
- tmp/ files untouched for TMP_MAX_AGE (every writer writes continuously; a put
  whose tmp file was swept fails at its link), and an rcv/ hard link only such a
  tmp file shared;
- rcv/ entries of uploads cut by a crash: one link (in no inbox state), untouched
  for TMP_MAX_AGE, looked for every RCV_SWEEP_EVERY.
"""

from __future__ import annotations

import os

from .. import log as _log
from .. import message as m
from ._layout import PURGE_EVERY, RCV_SWEEP_EVERY, STRAY_WHY, TMP_MAX_AGE, sorted_names, stray_test

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterator

    from . import Spool
    from ._fs import Flock

log = _log.get(__name__)


class Retention:
    """Purges and sweeps of one spool, and the corrupt/ folder."""

    def __init__(self, spool: Spool) -> None:
        self.sp = spool
        self.fs = spool.fs

    # -- corrupt/ ---------------------------------------------------------------

    def corrupt(self, path: str, why: str) -> str:
        """Move an unreadable file aside into corrupt/; return its new path."""
        try:
            return self.move_corrupt(path, why)
        except FileNotFoundError:
            return self.sp.path("corrupt", os.path.relpath(path, self.sp.root).replace("/", "="))

    def move_corrupt(self, path: str, why: str) -> str:
        """The corrupt transition: rename a file to corrupt/ (its spool path, "/" written
        "="), then write why beside it as .why; return the new path. FileNotFoundError
        when the file is no longer at path (a sender or consumer moved it on)."""
        dest = self.sp.path("corrupt", os.path.relpath(path, self.sp.root).replace("/", "="))
        self.fs.rename(path, dest)
        self.fs.write_file(dest + ".why", why + "\n", sync=False, flags=os.O_TRUNC)
        return dest

    def strays(self, folder: str, names: list[str], keep: list[str] | None = None) -> None:
        """Move files of a state folder that are no messages into corrupt/, or, for a caller
        that changes nothing, add their names to keep. Never fails: a stray that cannot be
        moved (a folder in the way in corrupt/) is logged and stays, skipped by every listing."""
        if keep is not None:
            keep.extend(names)
            return
        for name in names:
            path = f"{folder}/{name}"
            try:
                dest = self.corrupt(path, STRAY_WHY)
            except OSError as exc:
                log.error("stray path=%s reason=%s; cannot move it to corrupt/: %s", path, STRAY_WHY, exc)
                continue
            log.error("corrupt path=%s moved=%s reason=%s", path, dest, STRAY_WHY)

    # -- purge ------------------------------------------------------------------

    def purge_if_due(self, every: float = PURGE_EVERY) -> int:
        """Purge unless another process of this spool is purging, or did in the last
        ``every`` seconds (the stamp lock/purged); return how many entries went. For the
        daemons: dropr-send, and every dropr-serve worker, so that a node that only
        receives purges too."""
        stamp = self.sp.path("lock", "purged")
        try:
            with self.fs.lock(self.sp.path("lock", "purge.lock"), wait=False):
                self.sp.usage.check()  # a quota's total after a crash or a reboot (usage.py)
                if not _due(stamp, every, m.now_us() / 1e6):
                    return 0
                removed = self._purge(None)
                self.fs.touch(stamp)
                return removed
        except BlockingIOError:
            return 0  # the other purge does the work

    def hold(self) -> Flock:
        """Hold off purges while a with block moves dead entries (dropr-ack --requeue), which
        a purge would unlink, with their records, under the mover's hands."""
        return self.fs.lock(self.sp.path("lock", "purge.lock"))

    def purge(self, now: float | None = None) -> int:
        """Remove done, processed and dead entries older than the retention, and old tmp files."""
        with self.fs.lock(self.sp.path("lock", "purge.lock")):
            self.sp.usage.check()  # a quota's total after a crash or a reboot (usage.py)
            return self._purge(now)

    def _purge(self, now: float | None) -> int:
        now = now if now is not None else m.now_us() / 1e6
        before = now - self.sp.config.retention
        removed = self._sweep_tmp(now) + self._sweep_rcv(now)
        removed += self._purge_out(before) + self._purge_in(before)
        if os.path.isdir(self.sp.path("relay")):  # a relay's index (spool/relay.py), after _purge_out
            removed += self.sp.relays.purge(before)
        return removed

    def _sweep_tmp(self, now: float) -> int:
        """Remove tmp/ files untouched for TMP_MAX_AGE, and an rcv/ entry only one shared."""
        sp = self.sp
        removed = 0
        for name in sorted_names(sp.tmp):
            p = os.path.join(sp.tmp, name)
            try:
                st = os.lstat(p)
                if now - st.st_mtime > TMP_MAX_AGE:
                    self.fs.unlink(p)
                    removed += 1
                    received = sp.inbox.rcv_tmp_id(name)
                    if st.st_nlink == 2 and received:  # only tmp/ and rcv/ held it
                        origin, ident = received
                        sp.inbox.drop_entry(origin, sp.path("rcv", origin, ident), st.st_ino)
            except FileNotFoundError:
                pass
        return removed

    def _purge_out(self, before: float) -> int:
        sp = self.sp
        removed = 0
        gone: set[str] = set()
        for peer in sp.outbox.peers():
            for state in ("processed", "dead"):
                folder = sp.path("out", peer, state)
                for name in _old(folder, before):
                    if stray_test("out")(name):
                        self.strays(folder, [name])
                        continue
                    ident = m.parse_out_name(name)[2]
                    self.fs.unlink_quiet(f"{folder}/{name}")
                    self.fs.unlink_quiet(sp.path("out", peer, "meta", ident))
                    gone.add(ident)
                    removed += 1
        for ident in gone:
            if not sp.outbox.find(ident):
                self.fs.unlink_quiet(sp.path("ids", ident))
        return removed

    def _purge_in(self, before: float) -> int:
        """Remove old done and dead entries, then, once their removal is durable, their
        rcv/ entries: a power loss that kept an index unlink alone left a message in the
        inbox without its index entry, which a resend would then store a second time."""
        sp = self.sp
        removed = 0
        for ch in sp.inbox.channels():
            for state in ("done", "dead"):
                folder = sp.path("in", ch, state)
                index = []
                for name in _old(folder, before):
                    if stray_test("in")(name):
                        self.strays(folder, [name])
                        continue
                    _, _, origin, ident = m.parse_in_name(name)
                    self.fs.unlink_quiet(f"{folder}/{name}")
                    self.fs.unlink_quiet(sp.path("in", ch, "meta", f"{origin},{ident}"))
                    index.append(sp.path("rcv", origin, ident))
                if index:
                    self.fs.fsync_dir(folder)
                for path in index:
                    self.fs.unlink_quiet(path)
                removed += len(index)
        return removed

    def _sweep_rcv(self, now: float) -> int:
        """Remove rcv/ entries that a crash left mid-upload; return how many.

        Such an entry is a file that no inbox state links (one link) and that nobody
        wrote for TMP_MAX_AGE, as the tmp sweep judges tmp/. Looking costs a stat per
        received id, so it runs at most every RCV_SWEEP_EVERY (a stamp in lock/).
        """
        sp = self.sp
        stamp = sp.path("lock", "rcv-swept")
        if not _due(stamp, RCV_SWEEP_EVERY, now):
            return 0
        removed = 0
        before = now - TMP_MAX_AGE
        for origin in sorted_names(sp.path("rcv")):
            stale: list[tuple[str, int]] = []
            try:
                with os.scandir(sp.path("rcv", origin)) as it:
                    for e in it:
                        if e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            if st.st_nlink == 1 and st.st_mtime < before:
                                stale.append((e.path, st.st_ino))
            except (FileNotFoundError, NotADirectoryError):
                continue
            removed += sum(sp.inbox.drop_entry(origin, path, ino, before) for path, ino in stale)
        self.fs.touch(stamp)
        return removed


def _old(folder: str, before: float) -> Iterator[str]:
    """Yield the names in folder whose ctime is before a time."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                try:
                    ct = e.stat(follow_symlinks=False).st_ctime
                except FileNotFoundError:
                    continue
                if ct < before:
                    yield e.name
    except (FileNotFoundError, NotADirectoryError):
        return


def _due(stamp: str, every: float, now: float) -> bool:
    """Whether the task a stamp file times is due: its mtime says when it last ran."""
    try:
        return now - os.stat(stamp).st_mtime >= every
    except FileNotFoundError:
        return True
