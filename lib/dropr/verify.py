"""dropr-ls --verify: read every stored message and check it against its checksum.

An outbox file carries its checksum in its header: k, the CRC-32 of the payload, and
s, its size. An inbox file is the payload alone; the store keeps the checked k and s
of each new message in the file's inode (the extended attribute spool._fs.SUM_XATTR),
which follows it through every state. A message without one (stored by an earlier
release, or on a filesystem or a copy without user extended attributes) is read, so
that an I/O error still shows, and counted unchecked: never called corrupt.

A message that fails is moved to corrupt/ with a .why (the spool's corrupt
transition). No file is modified after its final rename, so a mismatch is damage,
not a writer at work. Several peers' names of one outbox file (hard links) are read
once. A message a sender or consumer moves on while it is read is looked for in the
other states of its folder when it has to be moved, and left alone when gone.
"""

from __future__ import annotations

import errno
import logging
import os
import zlib
from typing import Any

from . import message as m
from .progress import Bar
from .report import Filter
from .spool import IN_STATES, OUT_STATES, Spool
from .spool._fs import SUM_XATTR

log = logging.getLogger(__name__)
CHUNK = 1 << 20
OK, UNCHECKED = "", "unchecked"  # results of a check besides a reason for corrupt/


class Counts:
    """What a verification found: messages checked, ok, corrupt, unchecked; bytes read."""

    __slots__ = ("checked", "ok", "corrupt", "unchecked", "bytes")

    def __init__(self) -> None:
        self.checked = self.ok = self.corrupt = self.unchecked = self.bytes = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counts as a JSON object's fields."""
        return {k: getattr(self, k) for k in self.__slots__}

    def text(self) -> str:
        """Return the counts as one line for a person."""
        from .report import human_bytes

        messages = "1 message" if self.checked == 1 else f"{self.checked} messages"
        return (
            f"verified {messages} ({human_bytes(self.bytes)}): {self.ok} ok, "
            f"{self.corrupt} corrupt (moved to corrupt/), {self.unchecked} unchecked (no checksum kept)\n"
        )


def check_out(path: str) -> tuple[str, int]:
    """Check an outbox file against its header; return (OK or why it failed, bytes read)."""
    with open(path, "rb", buffering=0) as f:
        raw = f.read(m.HEADER_SIZE)
        try:
            hdr = m.Header.parse(raw)
        except ValueError as exc:
            return f"unreadable header: {exc}", len(raw)
        crc, size = _crc_rest(f)
    if size != hdr.size:
        return f"payload of {size} bytes, the header says s={hdr.size}", size + len(raw)
    if crc != hdr.crc:
        return f"checksum {crc:08x}, the header says k={hdr.crc:08x}", size + len(raw)
    return OK, size + len(raw)


def check_in(path: str) -> tuple[str, int]:
    """Check an inbox file against the checksum the store kept; (UNCHECKED, n) if none."""
    try:
        kept = os.getxattr(path, SUM_XATTR, follow_symlinks=False).decode("ascii", "replace")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise
        kept = ""  # ENODATA: none kept; ENOTSUP: the filesystem keeps none
    with open(path, "rb", buffering=0) as f:
        crc, size = _crc_rest(f)
    if not kept:
        return UNCHECKED, size
    fields = dict(w.split("=", 1) for w in kept.split() if "=" in w)
    try:
        want_crc, want_size = int(fields["k"], 16), int(fields["s"])
    except (KeyError, ValueError):
        return f"unreadable checksum record {kept[:40]!r}", size
    if size != want_size:
        return f"payload of {size} bytes, {want_size} were stored", size
    if crc != want_crc:
        return f"checksum {crc:08x}, {want_crc:08x} was stored", size
    return OK, size


def _crc_rest(f: Any) -> tuple[int, int]:
    """Return the CRC-32 and size of what is left in a file opened unbuffered."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    crc = size = 0
    while n := f.readinto(buf):
        crc = zlib.crc32(view[:n], crc)
        size += n
    return crc, size


class Verifier:
    """One run of dropr-ls --verify over the folders a Filter names."""

    def __init__(self, spool: Spool, *, progress: bool = False) -> None:
        self.sp = spool
        self.bar = Bar("dropr-ls", "verified", progress)
        self.counts = Counts()
        self.total = 0
        self._seen: dict[tuple[int, int], str] = {}  # outbox files with several names: result

    def run(self, flt: Filter) -> Counts:
        """Check every message in the matching folders; move the corrupt ones aside."""
        places = list(flt.places(self.sp))
        if self.bar.enabled:  # the bar's total: one more listing of each folder, only for the bar
            self.total = sum(len(self._names(box, name, state)) for box, name, state in places)
        for box, name, state in places:
            folder = self.sp.path(box, name, state)
            for fn in self._names(box, name, state):
                self._one(box, name, folder, fn)
                self.bar.show(self.counts.checked, self.total)
        self.bar.show(self.counts.checked, self.total, final=True)
        return self.counts

    def _names(self, box: str, name: str, state: str) -> list[str]:
        keep: list[str] = []  # strays stay where they are (dropr-ls reports them)
        if box == "out":
            return self.sp.out_names(name, state, strays=keep)
        return self.sp.in_names(name, state, strays=keep)

    def _one(self, box: str, name: str, folder: str, fn: str) -> None:
        """Check one message and count it; move it to corrupt/ if it failed."""
        path = f"{folder}/{fn}"
        try:
            why = self._check(box, path)
        except FileNotFoundError:
            return  # moved on (sent, acknowledged, purged) since the listing: not counted
        c = self.counts
        c.checked += 1
        if why == OK:
            c.ok += 1
        elif why == UNCHECKED:
            c.unchecked += 1
        else:
            c.corrupt += 1
            self._move(box, name, fn, path, why)

    def _check(self, box: str, path: str) -> str:
        """Return OK, UNCHECKED or why the file at path failed; read errors fail it too."""
        key = None
        if box == "out":
            st = os.lstat(path)
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in self._seen:
                    return self._seen[key]
        try:
            why, n = check_out(path) if box == "out" else check_in(path)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(path) from None
        except PermissionError:
            raise  # not damage: this user may not read the spool (exit 74, one line)
        except OSError as exc:
            why, n = f"unreadable: {exc.strerror or exc}", 0
        self.counts.bytes += n
        if key is not None:
            self._seen[key] = why
        return why

    def _move(self, box: str, name: str, fn: str, path: str, why: str) -> None:
        """Move a failed message to corrupt/: from where it was read, else from the state
        a sender or consumer moved it to meanwhile (its name is the same in every state)."""
        places = [path] + [
            self.sp.path(box, name, s, fn) for s in (OUT_STATES if box == "out" else IN_STATES)
        ]
        for p in dict.fromkeys(places):
            try:
                dest = self.sp.retention.move_corrupt(p, why)
            except FileNotFoundError:
                continue
            self.bar.break_line()
            log.error("corrupt path=%s moved=%s reason=%s", p, dest, why)
            return
        self.bar.break_line()
        log.error("corrupt path=%s reason=%s; gone before it could be moved", path, why)


def verify(spool: Spool, flt: Filter, *, progress: bool = False) -> Counts:
    """Check every stored message of the matching folders; move failures to corrupt/."""
    return Verifier(spool, progress=progress).run(flt)
