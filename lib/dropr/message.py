"""Ids, names and the on-disk message format: parse and format only.

An outbox message file is a fixed 256-byte envelope header followed by the
payload, byte for byte. The header is one line of ``key=value`` fields padded
with spaces and ended by a newline at byte 255::

    DROPR1 id=0190f3c2a1b4c5d6e7f8a9b0c1d2 ch=default p=5 c=<µs> d=<µs|0> s=<size> k=<crc32>
           [y=<crc32 of the put's --key>] [o=<origin> h=<hops>]

``y`` is written by ``dropr-put --key`` (a group's sender keeps one key on one
member); ``o`` and ``h`` by a relay, for the message's first origin and the hops
it has made (dropr.7, Relays). A reader skips a field it does not know, so a
receiver of an earlier release takes these headers and ignores them. The longest
header (64-character id, 40-character channel and origin, every field) is 251 bytes.

The same bytes travel on the wire: the sender uploads the spool file as it is
and the receiver reads the header from the stream, then writes only the
payload into its inbox, so a consumer's ``PATH`` is the payload alone.

File names sort by priority, then arrival::

    outbox  {p}{arrival:013x},{id}
    inbox   {p}{created:013x},{origin},{id}

Arrival is microseconds since the epoch on the local clock, 13 lowercase hex
digits; an inbox name carries the origin's creation time instead, so a
receiver keeps each origin's order whatever order batches arrive in. A
generated id starts with its creation time in the same form, so the
outbox name of a generated id is known from the id and one of ten priorities;
caller-chosen ids are found through a symlink index (see ``spool``).
"""

from __future__ import annotations

import os
import time
import zlib

HEADER_SIZE = 256
MAGIC = b"DROPR1"
MAX_ID = 64
MAX_NAME = 40
MAX_HOPS = 8  # a relayed message makes at most this many hops from origin to destination

NAME_PATTERNS = {"out": r"[0-9][0-9a-f]{13},[^,]+", "in": r"[0-9][0-9a-f]{13},[^,]+,[^,]+"}
# the message names in the state folders of each box: what not_out_name and not_in_name check
_DIGITS = frozenset("0123456789")
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_HEX = frozenset("0123456789abcdef")


def now_us() -> int:
    """Return the local clock in microseconds since the epoch."""
    return time.time_ns() // 1000


def _check(text: str, kind: str, limit: int) -> str:
    if not text or len(text) > limit:
        raise ValueError(f"{kind} must be 1 to {limit} characters")
    if text[0] in ".-" or not _ID_CHARS.issuperset(text):
        raise ValueError(f"{kind} may use only letters, digits, '_', '.', '-' and not start with '.' or '-'")
    return text


def check_id(text: str) -> str:
    """Return a message id unchanged, or raise ValueError saying why it is bad."""
    return _check(text, "an id", MAX_ID)


def check_name(text: str, kind: str = "a name") -> str:
    """Return a node, peer or channel name unchanged, or raise ValueError."""
    return _check(text, kind, MAX_NAME)


class IdMaker:
    """Generate time-sortable ids: 13 hex digits of µs time and 11 of a per-process counter.

    The counter starts at a random point so two processes (or hosts) that hit the
    same microsecond still differ; within a process ids strictly increase.
    """

    def __init__(self) -> None:
        self._seq = int.from_bytes(os.urandom(6), "big") >> 4
        self._last = 0

    def new(self) -> tuple[str, int]:
        """Return a fresh id and its time in µs."""
        t = now_us()
        if t <= self._last:
            t = self._last + 1
        self._last = t
        self._seq = (self._seq + 1) & 0xFFFFFFFFFFF
        return f"{t:013x}{self._seq:011x}", t


def generated_time(ident: str) -> int | None:
    """Return the µs time encoded in a generated id, or None for other ids."""
    if len(ident) == 24 and _HEX.issuperset(ident):
        return int(ident[:13], 16)
    return None


def out_name(priority: int, arrival: int, ident: str) -> str:
    """Return the outbox file name for a message."""
    return f"{priority}{arrival:013x},{ident}"


def in_name(priority: int, created: int, origin: str, ident: str) -> str:
    """Return the inbox file name for a message."""
    return f"{priority}{created:013x},{origin},{ident}"


def split_out_name(name: str) -> tuple[str, str]:
    """Return (prefix, id) of an outbox name: its "{p}{arrival:013x}" and its id (no checks)."""
    prefix, _, ident = name.partition(",")
    return prefix, ident


def split_in_name(name: str) -> tuple[str, str, str]:
    """Return (prefix, origin, id) of an inbox name: its "{p}{created:013x}", origin and id
    (no checks)."""
    prefix, origin, ident = name.split(",", 2)
    return prefix, origin, ident


def in_name_of(prefix: str, origin: str, ident: str) -> str:
    """Return the inbox name of a message from its prefix "{p}{created:013x}"."""
    return f"{prefix},{origin},{ident}"


def prefix_time(prefix: str) -> int:
    """Return the µs time of a name's prefix "{p}{time:013x}"."""
    return int(prefix[1:], 16)


def not_out_name(name: str) -> bool:
    """Whether name is no outbox name: NAME_PATTERNS["out"] in Python (0.4 µs a name)."""
    return (
        len(name) < 16 or name[14] != "," or name[0] not in _DIGITS
        or not _HEX.issuperset(name[1:14]) or name.count(",") != 1
    )  # fmt: skip


def not_in_name(name: str) -> bool:
    """Whether name is no inbox name: NAME_PATTERNS["in"] in Python."""
    return (
        len(name) < 18 or name[14] != "," or name[0] not in _DIGITS
        or not _HEX.issuperset(name[1:14]) or name.count(",") != 2
        or ",," in name or name[-1] == ","
    )  # fmt: skip


def parse_out_name(name: str) -> tuple[int, int, str]:
    """Return (priority, arrival µs, id) of an outbox name; ValueError if it is not one."""
    head, sep, ident = name.partition(",")
    if not sep or len(head) != 14 or not head[0].isdigit() or "," in ident:
        raise ValueError(f"not an outbox name: {name!r}")
    return int(head[0]), int(head[1:], 16), ident


def parse_in_name(name: str) -> tuple[int, int, str, str]:
    """Return (priority, created µs, origin, id) of an inbox name; ValueError otherwise."""
    parts = name.split(",")
    if len(parts) != 3 or len(parts[0]) != 14 or not parts[0][0].isdigit():
        raise ValueError(f"not an inbox name: {name!r}")
    return int(parts[0][0]), int(parts[0][1:], 16), parts[1], parts[2]


def header_deadline(raw: bytes) -> int:
    """Return the deadline (µs, 0 for none) of a raw header, checking only the magic and
    that field: the sender's fast path (the receiver checks the whole header); ValueError
    if raw is not a header."""
    if len(raw) != HEADER_SIZE or not raw.startswith(MAGIC):
        raise ValueError("not a dropr message header")
    at = raw.find(b" d=")
    end = raw.find(b" ", at + 3)
    try:
        return int(raw[at + 3 : end])
    except ValueError:
        raise ValueError("bad message header: no deadline field") from None


class Header:
    """The envelope of an outbox message; ``pack`` and ``parse`` are exact inverses.

    origin, hops: set by a relay (its client's origin, and the hops made so far,
    counting the upload that reached the relay); key: the CRC-32 of dropr-put --key."""

    __slots__ = (
        "ident", "channel", "priority", "created", "deadline", "size", "crc", "key", "origin", "hops",
    )  # fmt: skip

    def __init__(
        self,
        ident: str,
        channel: str,
        priority: int,
        created: int,
        deadline: int,
        size: int,
        crc: int,
        *,
        key: int | None = None,
        origin: str | None = None,
        hops: int = 0,
    ) -> None:
        self.ident = ident
        self.channel = channel
        self.priority = priority
        self.created = created
        self.deadline = deadline
        self.size = size
        self.crc = crc
        self.key = key
        self.origin = origin
        self.hops = hops

    def pack(self) -> bytes:
        """Return the 256-byte header."""
        line = (
            f"DROPR1 id={self.ident} ch={self.channel} p={self.priority} c={self.created}"
            f" d={self.deadline} s={self.size} k={self.crc:08x}"
        )
        if self.key is not None:
            line += f" y={self.key:08x}"
        if self.origin is not None:
            line += f" o={self.origin} h={self.hops}"
        return line.encode("ascii").ljust(HEADER_SIZE - 1) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> Header:
        """Parse a header; raise ValueError with the reason if it is not a valid one.

        As strict as dropr.7 (WIRE PROTOCOL) says: p, c, d and s ASCII digits only (no
        sign, "_" or "0x", which int() takes), k 8 lowercase hex digits; a name not known
        is skipped. Every reason is in words, never Python's."""
        if len(raw) != HEADER_SIZE or raw[-1:] != b"\n" or not raw.startswith(MAGIC + b" "):
            raise ValueError("not a dropr message header")
        if not raw.isascii():
            raise ValueError("bad message header: not ASCII")
        words = raw[7:].decode("ascii").split()
        try:
            fields = dict(word.split("=", 1) for word in words)
        except ValueError:  # a word without "=": name it
            bad = next(word for word in words if "=" not in word)
            raise ValueError(f"bad message header: {bad[:16]!r} is not a key=value field") from None
        if len(fields) != len(words):
            names = [word.split("=", 1)[0] for word in words]
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"bad message header: field {twice} given twice")
        try:
            ident, channel, k = fields["id"], fields["ch"], fields["k"]
            p, c, d, s = fields["p"], fields["c"], fields["d"], fields["s"]
        except KeyError as exc:
            raise ValueError(f"bad message header: no {exc.args[0]}= field") from None
        if not (p.isdigit() and c.isdigit() and d.isdigit() and s.isdigit()):  # ASCII: 0-9 only
            bad = next(f for f in "pcds" if not fields[f].isdigit())
            raise ValueError(f"bad message header: field {bad} is not decimal digits")
        if len(k) != 8 or not _HEX.issuperset(k):
            raise ValueError("bad message header: field k is not 8 lowercase hex digits")
        if len(p) != 1:
            raise ValueError("bad message header: field p out of range: one digit, 0 to 9")
        if int(c) >= 16**13:
            raise ValueError("bad message header: field c out of range: below 16^13")
        try:
            ident, channel = check_id(ident), check_name(channel, "a channel")
        except ValueError as exc:  # in words
            raise ValueError(f"bad message header: {exc}") from None
        hdr = cls(ident, channel, int(p), int(c), int(d), int(s), int(k, 16))
        if len(fields) > 7:  # y, o, h: only where --key or a relay wrote them
            _network_fields(hdr, fields)
        return hdr


def _network_fields(hdr: Header, fields: dict[str, str]) -> None:
    """Read the optional fields y (key), o (origin) and h (hops) into hdr, checked."""
    y, o, h = fields.get("y"), fields.get("o"), fields.get("h")
    if y is not None:
        if len(y) != 8 or not _HEX.issuperset(y):
            raise ValueError("bad message header: field y is not 8 lowercase hex digits")
        hdr.key = int(y, 16)
    if (o is None) != (h is None):
        raise ValueError("bad message header: fields o and h go together")
    if o is not None and h is not None:
        try:
            hdr.origin = check_name(o, "an origin")
        except ValueError as exc:
            raise ValueError(f"bad message header: {exc}") from None
        if not h.isdigit() or len(h) > 2:
            raise ValueError("bad message header: field h is not a number of hops, 0 to 99")
        hdr.hops = int(h)


def key_hash(key: str) -> int:
    """Return the y= field of a dropr-put --key: the CRC-32 of the key's UTF-8 bytes."""
    return zlib.crc32(key.encode("utf-8"))


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """Continue a CRC-32 over data (zlib's, as gzip and PNG use)."""
    return zlib.crc32(data, value)
