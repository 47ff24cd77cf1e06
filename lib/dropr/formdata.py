"""A multipart/form-data parser for the uploads libcurl sends, python-multipart's on the rest.

python-multipart (``MultipartParser``) cost dropr-serve ~16 µs of CPU per message part of an
upload of 1 KiB messages: a dozen callbacks per part through its dispatcher, and its header
state machine. ``FormParser`` takes the same callbacks and gives them the same calls, for
what every dropr client sends: the body starts with the first boundary line, each part's
headers are well-formed lines of a token, a colon and a value, within python-multipart's
limits. A part's headers are parsed whole (bytes.find and split), and its payload runs to
the next delimiter (one find per part). Anything else at the start of the body or in a
part's headers hands the body, from that part's boundary line on, to python-multipart,
which then answers as it always did (the part's callbacks start there); the data of a part
and what follows a delimiter are read as python-multipart reads them (RFC 2046 5.1.1: a
delimiter not followed by CRLF, "--" or padding is data).
"""

from __future__ import annotations

from typing import cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    TOKEN_CHARS,
    MultipartParser,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

START, HEADERS, DATA, PADDING, END = range(5)


class FormParser:
    """Parse a multipart/form-data body written in chunks; call back as MultipartParser does
    (on_part_begin, on_header_field, on_header_value, on_header_end, on_part_data,
    on_part_end, on_end). Raises what MultipartParser raises; FormParserError for a
    boundary it cannot take."""

    def __init__(self, boundary: bytes, callbacks: dict[str, Any]) -> None:
        self.slow = MultipartParser(boundary, cast("Any", callbacks))  # checks the boundary; a fallback
        self.handed = False  # the body went to self.slow
        self.cb = callbacks
        self.first = b"--" + boundary + b"\r\n"
        self.delim = b"\r\n--" + boundary
        self.state = START
        self.rest = b""  # bytes not parsed yet: a part's headers, or a possible delimiter's start

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Parse the next chunk of the body."""
        if self.handed:
            self.slow.write(bytes(data))
            return
        buf = self.rest + data if self.rest else data if isinstance(data, bytes) else bytes(data)
        self.rest = b""
        i = 0
        while i < len(buf) and self.state != END:
            i = STEPS[self.state](self, buf, i)
            if i < 0:  # needs more data: keep the unparsed bytes
                self.rest = buf[-i - 1 :]
                return

    def _start(self, buf: bytes, i: int) -> int:
        if len(buf) < len(self.first) and self.first.startswith(buf):
            return -1 - i  # wait for the whole first boundary line
        if not buf.startswith(self.first):
            return self._hand_over(buf, i, b"")
        self.state = HEADERS
        self.cb["on_part_begin"]()  # as python-multipart: at the end of the boundary line
        return len(self.first)

    def _headers(self, buf: bytes, i: int) -> int:
        fields: list[tuple[bytes, int, int]] = []
        j = i
        while not buf.startswith(b"\r\n", j):  # an empty line ends the headers
            nl = buf.find(b"\r\n", j)
            line = buf[j:] if nl < 0 else buf[j:nl]
            colon = line.find(b":")
            if nl < 0:  # the line so far: hand over as soon as python-multipart could object
                if line.endswith(b"\r"):
                    line = line[:-1]
                name = line if colon < 0 else line[:colon]
            else:
                name = line[:colon] if colon > 0 else b"?"
            if (len(fields) >= DEFAULT_MAX_HEADER_COUNT or len(line) > DEFAULT_MAX_HEADER_SIZE
                    or b"\r" in line or colon == 0 or name.translate(None, TOKEN_CHARS)):  # fmt: skip
                return self._hand_over(buf, i, self.first)
            if nl < 0:
                return -1 - i  # wait for the rest of the headers
            value = colon + 1
            while value < len(line) and line[value] == 32:  # python-multipart skips spaces only
                value += 1
            fields.append((line, colon, value))
            j = nl + 2
        if len(buf) - j < 2:
            return -1 - i
        cb = self.cb
        for line, colon, value in fields:
            cb["on_header_field"](line, 0, colon)
            cb["on_header_value"](line, value, len(line))
            cb["on_header_end"]()
        self.state = DATA
        return j + 2

    def _data(self, buf: bytes, i: int) -> int:
        delim = self.delim
        at = buf.find(delim, i)
        if at < 0:  # keep back what may start a delimiter: only at a CR, which it has only first
            keep = buf.rfind(b"\r", max(i, len(buf) - len(delim) + 1))
            if keep < 0 or not delim.startswith(buf[keep:]):
                keep = len(buf)
            if keep > i:
                self.cb["on_part_data"](buf, i, keep)
            return -1 - keep if keep < len(buf) else len(buf)
        after = at + len(delim)
        two = buf[after : after + 2]
        if len(two) < 2 and (two in (b"", b"\r", b"-") or two in b" \t"):
            if at > i:
                self.cb["on_part_data"](buf, i, at)
            return -1 - at  # what follows the delimiter decides
        if two == b"\r\n" or two == b"--" or two[:1] in b" \t":
            if at > i:
                self.cb["on_part_data"](buf, i, at)
            if two == b"--":
                self.cb["on_part_end"]()
                self.cb["on_end"]()
                self.state = END
                return len(buf)  # the epilogue is discarded
            if two == b"\r\n":
                self.cb["on_part_end"]()
                self.state = HEADERS
                self.cb["on_part_begin"]()
                return after + 2
            self.state = PADDING
            return after
        # not a delimiter: data, up to the byte that broke the match, read again from there
        stop = after + 1 if two[:1] in (b"\r", b"-") else after
        self.cb["on_part_data"](buf, i, stop)
        return stop

    def _padding(self, buf: bytes, i: int) -> int:
        while i < len(buf) and buf[i] in b" \t":
            i += 1
        if len(buf) - i < 2:
            if buf[i:] in (b"", b"\r"):
                return -1 - i
        elif buf.startswith(b"\r\n", i):
            self.cb["on_part_end"]()
            self.state = HEADERS
            self.cb["on_part_begin"]()
            return i + 2
        raise MultipartParseError(f"Did not find CRLF after boundary padding at {i}", offset=i)

    def _hand_over(self, buf: bytes, i: int, line: bytes) -> int:
        """Give the rest of the body, from its part's boundary line, to python-multipart; the
        part's on_part_begin, already called (at its boundary line), is not called again."""
        self.handed = True
        slow: Any = self.slow
        if line:

            def begun() -> None:
                slow.callbacks["on_part_begin"] = self.cb["on_part_begin"]

            slow.callbacks = dict(self.cb, on_part_begin=begun)
        slow.write(line + buf[i:])
        return len(buf)


STEPS: dict[int, Callable[[FormParser, bytes, int], int]] = {
    START: FormParser._start,
    HEADERS: FormParser._headers,
    DATA: FormParser._data,
    PADDING: FormParser._padding,
}
