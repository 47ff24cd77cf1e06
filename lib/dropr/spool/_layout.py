"""The spool's folders and names: the states, the limits, and listing state folders.

Listings only read; the strays a listing finds are moved aside by the caller
(``retention.Strays``).
"""

from __future__ import annotations

import os

from ..message import NAME_PATTERNS, not_in_name, not_out_name

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable

TOP = ("tmp", "ids", "out", "in", "rcv", "corrupt", "wake", "lock")  # the spool's folders
OUT_STATES = ("queued", "sent", "processed", "dead")
IN_STATES = ("ready", "wait", "claimed", "done", "dead")
FIND_ORDER = ("done", "ready", "claimed", "wait", "dead")  # most receipt polls end in done
TMP_MAX_AGE = 36 * 3600  # no writer keeps a tmp file untouched this long: puts and
# uploads write continuously, and a put whose tmp file was swept fails at its link.
DANGLING_AGE = 60  # an index symlink whose message is missing this long is a crash leftover
RCV_SWEEP_EVERY = 12 * 3600  # purge looks for rcv/ leftovers of crashed uploads this often
PURGE_EVERY = 600.0  # the daemons purge a spool at most this often (seconds), one at a time
PURGE_CHECK = 60.0  # and look whether a purge is due this often (Spool.purge_if_due)
TTL_MARK = "ttl"  # out/<peer>/ttl: messages with a TTL were put for the peer (the sender
# checks a backed-off peer's queue for expired ones only then)
VIA_MARK = "via"  # out/<peer>/via: the relay a peer is reached through (its url is the relay's)
SWEEP_EVERY = 1.0  # claimers look for expired leases and due retries at most this often
SYNC_EACH_MAX = 4  # up to this many files: fsync each; more: one syncfs
CHUNK = 1 << 20
DIRECT_MIN = 8 << 20  # messages at least this large are written past the page cache

MAX_STAMP = 253402300799.0  # 9999-12-31 23:59:59: the latest lease end or due time written;
# a later one overflows time_t (OverflowError), and the kernel clamps this one to what the
# filesystem holds (ext4: 2446, or 2038 with 128-byte inodes), without an error
STRAY_WHY = "not a message name"  # the .why of a stray file moved out of a state folder
REGEX_FROM = 20000  # names: fewer are checked in Python (0.4 µs a name) rather than by
# NAME_PATTERNS (0.15 µs), whose `re` import would add 6 ms to a dropr-recv or dropr-ack

_stray_tests: dict[str, Callable[[str], object]] = {}


def stamp(t: float) -> float:
    """Return a lease end or due time as a file can take it: at most MAX_STAMP."""
    return t if t < MAX_STAMP else MAX_STAMP  # not min(): a NaN becomes MAX_STAMP too


def sorted_names(path: str, first: int = 0, after: str = "") -> list[str]:
    """Return the names in a folder, sorted; with first, at least the first that many;
    with after, only those that sort after it."""
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if after:
        names = [n for n in names if n > after]
    if first and len(names) > 4 * first:
        import heapq

        return heapq.nsmallest(first, names)  # O(N), not a sort of a million names
    names.sort()
    return names


def sorted_dirs(path: str) -> list[str]:
    """Return the names of the folders in a folder, sorted (peers, channels): a stray
    file beside them is no peer or channel."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def stray_test(box: str, count: int = REGEX_FROM) -> Callable[[str], object]:
    """Return a test that is true for a name that is no message name of box ("out", "in"),
    for checking count names.

    Many names: one regular expression call each, 0.15 µs (Python took 0.4 µs). The
    expression fails on a message name, so the usual case makes no match object.
    """
    if count < REGEX_FROM:
        return not_out_name if box == "out" else not_in_name
    test = _stray_tests.get(box)
    if test is None:
        import re

        test = _stray_tests[box] = re.compile(rf"(?!{NAME_PATTERNS[box]}\Z)").match
    return test


def message_names(path: str, box: str, first: int = 0, after: str = "") -> tuple[list[str], list[str]]:
    """Return (message names, strays) of a state folder of box, listed as sorted_names does.

    Spool only ever names a file in a state folder with a message name (its tmp files
    are in tmp/, its records in meta/), so anything else there was put there by hand
    or by another program: a stray, which no caller may get as a message. With first,
    only the names picked are checked, unless one of them is a stray. The check runs
    before the sort: a million names take 0.15 s in the order listed, 0.35 s sorted
    (their strings are then scattered in memory).
    """
    if first:
        return _first_names(path, box, first, after)
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    if after:
        names = [n for n in names if n > after]
    bad = list(filter(stray_test(box, len(names)), names))
    if bad:
        gone = set(bad)
        names = [n for n in names if n not in gone]
        bad.sort()
    names.sort()
    return names, bad


def _first_names(path: str, box: str, first: int, after: str) -> tuple[list[str], list[str]]:
    """Return message_names with first: the first that many, read from the folder as a
    stream, so memory holds them and not the folder (a million names took ~100 MiB).

    The names picked so far are kept in a list of at most a quarter more than first:
    when it is full it is sorted and cut to first, and a name past the last one kept is
    skipped from then on. heapq.nsmallest held a tuple and an int beside each name: the
    listing of 100,000 names peaked at 20 MiB, 13 MiB so."""
    stray = stray_test(box)
    bad: list[str] = []
    picked: list[str] = []
    full = first + first // 4 + 1
    last = None  # once picked was cut: its last name; a name after it is not among the first
    try:
        with os.scandir(path) as it:
            for e in it:
                n = e.name
                if n <= after:
                    continue
                if stray(n):
                    bad.append(n)
                elif last is None or n < last:
                    picked.append(n)
                    if len(picked) >= full:
                        picked.sort()
                        del picked[first:]
                        last = picked[-1]
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    picked.sort()
    del picked[first:]
    return picked, sorted(bad)


def any_name(path: str, box: str) -> bool:
    """Return whether a state folder of box holds a message, reading no more than the first."""
    stray = stray_test(box, 1)
    try:
        with os.scandir(path) as it:
            return any(not stray(e.name) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False
