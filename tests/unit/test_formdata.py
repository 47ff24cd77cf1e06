"""formdata.FormParser against python-multipart's MultipartParser: the same calls, in the same
order, with the same bytes, and the same error, for well-formed bodies cut anywhere and for
bodies mutated byte by byte (the parser that dropr-serve ran before)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from dropr.formdata import FormParser
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser

BOUNDARY = b"------------------------d74496d66958873e"
EVENTS = ("part_begin", "header_end", "part_end", "end")
DATA = ("header_field", "header_value", "part_data")


def _record(make: Any, body: bytes, cuts: list[int]) -> list[Any]:
    """Feed body in the pieces cuts make; return the calls (data joined) and how it ended."""
    calls: list[Any] = []

    def data(name: str) -> Any:
        def cb(buf: Any, start: int, end: int) -> None:
            piece = bytes(buf[start:end])
            if calls and calls[-1][0] == name:
                calls[-1] = (name, calls[-1][1] + piece)
            elif piece:
                calls.append((name, piece))

        return cb

    def event(name: str) -> Any:
        return lambda: calls.append((name,))

    callbacks = {f"on_{n}": event(n) for n in EVENTS} | {f"on_{n}": data(n) for n in DATA}
    parser = make(BOUNDARY, callbacks)
    at = 0
    try:
        for cut in [*cuts, len(body)]:
            parser.write(body[at:cut])
            at = cut
    except MultipartParseError as exc:
        calls.append(("error", type(exc)))
    return calls


def _body(rng: random.Random, parts: int) -> bytes:
    out = []
    for i in range(parts):
        payload = bytes(rng.choice(b"ab\r\n-" + BOUNDARY[-4:]) for _ in range(rng.randrange(0, 300)))
        if rng.random() < 0.2:  # a delimiter-like run inside the payload
            payload += (
                b"\r\n--" + BOUNDARY[: rng.randrange(len(BOUNDARY) + 1)] + rng.choice([b"x", b"-x", b"\rx"])
            )
        out.append(
            b"--" + BOUNDARY + b"\r\n"
            b'Content-Disposition: form-data; name="m"; filename="%d"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" % i + payload + b"\r\n"
        )
    return b"".join(out) + b"--" + BOUNDARY + b"--\r\n"


def _cuts(rng: random.Random, n: int) -> list[int]:
    return sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(0, 12)))) if n > 1 else []


def _same(body: bytes, cuts: list[int]) -> None:
    want, got = _record(MultipartParser, body, cuts), _record(FormParser, body, cuts)
    if want and want[-1][0] == "error":
        # python-multipart calls back with the header bytes of a chunk before it finds the
        # bad one in the next; FormParser hands it the part whole: it errs before those calls.
        # They change nothing (Upload keeps a name and a value until the header's end).
        want, got = _no_partial_header(want), _no_partial_header(got)
    assert got == want, (body, cuts)


def _no_partial_header(calls: list[Any]) -> list[Any]:
    """Drop the header calls of the unfinished header an error cut short."""
    end = len(calls) - 1
    while end > 0 and calls[end - 1][0] in ("header_field", "header_value"):
        end -= 1
    return calls[:end] + calls[-1:]


@pytest.mark.parametrize("seed", range(40))
def test_well_formed_bodies_cut_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    body = _body(rng, rng.randrange(1, 6))
    _same(body, _cuts(rng, len(body)))
    _same(body, list(range(1, len(body))))  # a byte at a time


@pytest.mark.parametrize("seed", range(300))
def test_mutated_bodies(seed: int) -> None:
    rng = random.Random(seed)
    body = bytearray(_body(rng, rng.randrange(1, 4)))
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(body))
        what = rng.randrange(3)
        if what == 0:
            body[at] = rng.choice(b" \t\r\n-:;=x\x00")
        elif what == 1:
            del body[at : at + rng.randrange(1, 8)]
        else:
            body[at:at] = rng.choice([b"\r\n", b" ", b"--", b"\r\n--" + BOUNDARY, b"X-A: b\r\n", b"\r\n\r\n"])
    _same(bytes(body), _cuts(rng, len(body)))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"--" + BOUNDARY + b"--\r\n",
        b"\r\n--" + BOUNDARY + b"\r\nA: b\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        b"--" + BOUNDARY + b"\r\n\r\nno headers\r\n--" + BOUNDARY + b"--epilogue",
        b"--"
        + BOUNDARY
        + b"\r\nA:b\r\nB:  c d\r\n\r\nx\r\n--"
        + BOUNDARY
        + b" \t\r\nA: b\r\n\r\ny\r\n--"
        + BOUNDARY
        + b"--",
        b"--" + BOUNDARY + b"\r\nA: b\r\n\r\nx\r\n--" + BOUNDARY + b" x",
        b"--" + BOUNDARY + b"\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(9)) + b"\r\nx",
        b"--" + BOUNDARY + b"\r\nA: " + b"v" * 5000 + b"\r\n\r\nx",
        b"--" + BOUNDARY + b"\r\nBad Name: v\r\n\r\nx",
        b"--" + BOUNDARY + b"\r\n: v\r\n\r\nx",
        b"--" + BOUNDARY + b"\r\nA: v\rw\r\n\r\nx",
        b"--" + BOUNDARY + b"\r\nA: v\nw\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        b"--" + BOUNDARY + b"x",
    ],
)
def test_edges(body: bytes) -> None:
    _same(body, [])
    _same(body, list(range(1, len(body))))


def test_a_boundary_too_long_is_refused_as_by_python_multipart() -> None:
    with pytest.raises(FormParserError):
        MultipartParser(b"b" * 100_000, {})
    with pytest.raises(FormParserError):
        FormParser(b"b" * 100_000, {})
