"""Fuzz every HTTP endpoint of a real dropr-serve with seeded, structurally mutated requests.

    python tests/fuzz/wire.py --inputs 100000 --seed 0 [--json PATH]

One dropr-serve (a process, 127.0.0.1 only, a bearer token for node "a") in a sandbox
directory; each input is one request written on its own connection with a raw socket:
uploads to v1/messages (and v1/relay, v1/fetch where they exist) of good and broken parts
(bad CRC, size lies, truncated or flipped headers, oversize payloads, duplicates, replays)
in good and broken bodies (weird or mismatched boundaries, truncation, Content-Length
lies, chunked framing, preamble and epilogue), status polls of arbitrary JSON, health and
metrics probes, random paths and methods, with a valid, wrong, malformed or no token.

The oracles, checked for every answer and, after every batch, for the sandbox:
  - no 5xx answer but 503 with Retry-After (the documented try-later);
  - every answer but 200 (and HEAD's) is JSON {"error": words}, no Python exception name;
  - an answer "stored" only for an id a well-formed part carried, and it is in the inbox;
  - the inbox, out/ and rcv/ only gain ids of well-formed parts of authenticated uploads,
    each inbox payload with that part's CRC-32;
  - no file is written outside the spool (the sandbox tree before and after);
  - no leftover upload files (tmp/, unlinked rcv/ entries), health answers, and the
    worker processes are the same ones (none died and was replaced).

Prints one summary line (the README's Reliability section quotes it) and exits 1 on a
finding; --json writes the counts to a file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: helpers

from dropr import message as m  # noqa: E402
from helpers import children, command_path, serve_url, stop, unstored, wait_until  # noqa: E402

TOKEN = "fuzz-token-of-a"
MAX_SIZE = 4096  # --max-size: oversize parts are cheap to make
PYTHON_NAMES = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b|\bErrno\b|File \"")
ROUTES = [
    "/v1/messages", "/v1/status", "/v1/health", "/", "/metrics",
    "/v1/relay", "/v1/relay/status", "/v1/fetch",
]  # fmt: skip
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "FOO"]
CHANNELS = ["default", "ch1", "a.b", "x_y-z", "C" * 40]
# dropr-serve's own: the prometheus_client files of its workers (dropr-serve.8, METRICS), in TMPDIR
METRICS_DIR = re.compile(r"tmpdir/dropr-serve-metrics\.\w+(/(counter|histogram|gauge_\w+)_\d+\.db)?")
BATCH = 250  # inputs between two sandbox checks


@dataclass
class Req:
    """One request: its bytes, what the oracle knows of it."""

    target: str
    method: str
    raw: bytes
    half_close: bool = False  # shut our side after the request: a body shorter than announced
    good: list[tuple[str, int]] = field(default_factory=list)  # an authenticated upload's well-formed parts
    intact: bool = False  # authenticated, framed right: its good parts must be answered stored


@dataclass
class Tally:
    """What a run tried and found."""

    inputs: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    files_checked: int = 0
    stored: int = 0
    batches: int = 0
    findings: list[str] = field(default_factory=list)

    def line(self, seed: int, secs: float) -> str:
        total = sum(self.inputs.values())
        per = " ".join(f"{k}={v}" for k, v in sorted(self.inputs.items()))
        ans = " ".join(f"{k}={v}" for k, v in sorted(self.answers.items()))
        return (
            f"fuzz wire: {total} inputs ({per}); answers {ans}; {self.stored} stored and verified;"
            f" {self.files_checked} files checked in {self.batches} batches; {len(self.findings)} findings;"
            f" seed {seed}, {secs:.0f} s"
        )

    def as_json(self, seed: int, secs: float) -> dict[str, Any]:
        return {
            "target": "wire", "seed": seed, "seconds": round(secs, 1),
            "inputs": sum(self.inputs.values()), "inputs_by_target": dict(self.inputs),
            "answers": dict(self.answers), "stored": self.stored, "files_checked": self.files_checked,
            "batches": self.batches, "findings": self.findings,
        }  # fmt: skip


# -- making requests ------------------------------------------------------------------------


class Maker:
    """Seeded requests; remembers the good parts it sent, for replays."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.ids = m.IdMaker()
        self.sent: list[tuple[str, bytes]] = []  # earlier well-formed parts, for replays
        self.held: list[str] = []  # the outbox names of the messages held for a (fetch)
        self.n = 0

    def request(self) -> Req:
        r = self.r
        kind = r.choices(["upload", "status", "probe", "random"], [55, 18, 10, 17])[0]
        if kind == "upload":
            route = r.choices(["/v1/messages", "/v1/relay", "/v1/fetch"], [85, 8, 7])[0]
            return self.fetch() if route == "/v1/fetch" and r.random() < 0.8 else self.upload(route)
        if kind == "status":
            return self.status(r.choice(["/v1/status", "/v1/status", "/v1/relay/status"]))
        if kind == "probe":
            path = r.choice(["/v1/health", "/", "/metrics", "/v1/health/", "/v1/health?x=1"])
            method = r.choice(["GET", "HEAD"])
            return Req(
                path.split("?")[0].rstrip("/") or "/", method, self.head(method, path, self.auth(), b"")
            )
        return self.random_request()

    # -- the parts of a request

    def auth(self) -> dict[str, str]:
        r = self.r
        h: dict[str, str] = {}
        pick = r.choices(["good", "none", "wrong", "scheme", "junk"], [70, 8, 8, 7, 7])[0]
        if pick == "good":
            h["Authorization"] = r.choice([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
        elif pick == "wrong":
            h["Authorization"] = f"Bearer {TOKEN[:-1]}{r.choice('bcd')}"
        elif pick == "scheme":
            h["Authorization"] = r.choice([f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer ", f"Token {TOKEN}"])
        elif pick == "junk":
            h["Authorization"] = self.text(r.randint(0, 80))
        if r.random() < 0.1:  # a relay's destination: a peer, itself, no peer, anything
            h["X-Dropr-To"] = r.choice(["c", "c", "b", "a", "zz", "", "../c", self.text(r.randint(0, 50))])
        if r.random() < 0.25:
            h["X-Dropr-Origin"] = r.choice(["a", "a", "b", "", "../a", self.text(r.randint(0, 50))])
        return h

    def authenticated(self, h: dict[str, str]) -> bool:
        auth = h.get("Authorization", "")
        good = auth[:7].lower() == "bearer " and auth[7:].strip() == TOKEN
        return good and h.get("X-Dropr-Origin", "a") in ("a", "")

    def text(self, n: int) -> str:
        """Printable latin-1 text without CR or LF (header-safe), any other byte."""
        alphabet = [chr(c) for c in range(32, 256) if c != 127]
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def blob(self, n: int) -> bytes:
        return self.r.randbytes(n)

    def head(self, method: str, path: str, headers: dict[str, str], body: bytes, *,
             length: str | None = None, extra: list[str] | None = None) -> bytes:  # fmt: skip
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if length is None and (body or method == "POST"):
            length = str(len(body))
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += extra or []
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    # -- uploads

    def part(self) -> tuple[bytes, tuple[str, int] | None]:
        """Return a part's content (header + payload) and (id, crc) if it is well-formed."""
        r = self.r
        if self.sent and r.random() < 0.04:  # a replay: answered duplicate
            ident, content = r.choice(self.sent)
            return content, (ident, m.crc32(content[m.HEADER_SIZE :]))
        size = r.choice([0, 1, r.randint(0, 300), r.randint(0, MAX_SIZE), MAX_SIZE])
        payload = self.blob(size)
        if r.random() < 0.8:
            ident, created = self.ids.new()
        else:  # a caller-chosen id (dropr-put --id)
            self.n += 1
            ident, created = f"fz{self.r.getrandbits(32):x}.{self.n}", m.now_us()
        hdr = m.Header(ident, r.choice(CHANNELS), r.randint(0, 9), created, 0, size, m.crc32(payload))
        if r.random() < 0.1:
            hdr.key = r.getrandbits(32)
        if r.random() < 0.05:
            hdr.origin, hdr.hops = r.choice(["a", "c", "web1"]), r.randint(0, 9)
        head = bytearray(hdr.pack())
        how = r.choices(["good", "crc", "size", "cut", "more", "flip", "junk", "big", "short", "text"],
                        [50, 6, 6, 6, 5, 9, 4, 5, 4, 5])[0]  # fmt: skip
        if how == "crc":
            head = bytearray(hdr.pack().replace(f"k={hdr.crc:08x}".encode(), f"k={hdr.crc ^ 1:08x}".encode()))
        elif how == "size":
            hdr.size = max(0, size + r.choice([-1, 1, 1000, -size]))
            head = bytearray(hdr.pack())
        elif how == "cut" and payload:
            payload = payload[: r.randint(0, len(payload) - 1)]
        elif how == "more":
            payload += self.blob(r.randint(1, 10))
        elif how == "flip":
            for _ in range(r.randint(1, 4)):
                head[r.randrange(m.HEADER_SIZE)] = r.choice(b"= \n\x00\xffaz09,./-")
        elif how == "junk":
            head = bytearray(self.blob(r.choice([0, 10, 255, 256, 257])))
        elif how == "big":
            payload = self.blob(MAX_SIZE + r.randint(1, 100))
            hdr.size, hdr.crc = len(payload), m.crc32(payload)
            head = bytearray(hdr.pack())
        elif how == "short":
            head = head[: r.randint(0, m.HEADER_SIZE - 1)]
        elif how == "text":
            head = bytearray(self.header_text(hdr).encode("utf-8"))
        content = bytes(head) + payload
        return content, well_formed(content)

    def header_text(self, hdr: m.Header) -> str:
        """A hand-written header: fields dropped, doubled, out of range or odd."""
        r = self.r
        fields = [f"id={hdr.ident}", f"ch={hdr.channel}", f"p={hdr.priority}", f"c={hdr.created}",
                  f"d={hdr.deadline}", f"s={hdr.size}", f"k={hdr.crc:08x}"]  # fmt: skip
        odd = [
            "p=10", "p=-1", "c=99999999999999999999", "s=-5", "s=0x10", "k=ABCDEF01", "id=../../x",
            "id=a/b", "ch=../in", "ch=", "id=", "o=a", "h=5", "o=a h=100", "y=xyz", "zz=1", "=",
            "d=1", "s=1_0", "id=" + "x" * 65, "ch=" + "y" * 41, "p=\u0661",
        ]  # fmt: skip
        for _ in range(r.randint(1, 3)):
            op = r.random()
            if op < 0.3 and fields:
                fields.pop(r.randrange(len(fields)))
            elif op < 0.5 and fields:
                fields.insert(r.randrange(len(fields) + 1), r.choice(fields))
            else:
                fields.insert(r.randrange(len(fields) + 1), r.choice(odd))
        line = "DROPR1 " + " ".join(fields)
        return line[: m.HEADER_SIZE - 1].ljust(m.HEADER_SIZE - 1) + "\n"

    def upload(self, route: str) -> Req:
        r = self.r
        headers = self.auth()
        contents, good = [], []
        for _ in range(r.choice([0, 1, 1, 2, 3, r.randint(1, 12)])):
            content, ok = self.part()
            if ok and r.random() < 0.05:  # the same part twice in one upload
                contents.append(content)
            contents.append(content)
            if ok:
                good.append(ok)
        boundary = r.choice(["dropr-b", "x" * 70, "a'b(c)+_,-./:=?", "B" * r.randint(1, 200), "--", "z z"])
        segments = self.multipart(contents, boundary)
        ctype = f"multipart/form-data; boundary={boundary}"
        how = r.choices(["good", "ctype", "flip", "cut", "long", "lies", "chunked", "noise"],
                        [55, 7, 8, 7, 5, 6, 7, 5])[0]  # fmt: skip
        length: str | None = None
        extra: list[str] = []
        half = False
        if how == "ctype":
            ctype = r.choice([
                "multipart/form-data", "multipart/form-data; boundary=", "text/plain",
                f'multipart/form-data; boundary="{boundary}"', f"multipart/mixed; boundary={boundary}",
                f"multipart/form-data; boundary={boundary}x", f"multipart/form-data; boundary={'q' * 5000}",
                self.text(r.randint(0, 60)),
            ])  # fmt: skip
        elif how == "flip":  # bytes of the framing only: a part's content keeps its meaning
            frames = [i for i, (framing, _) in enumerate(segments) if framing and segments[i][1]]
            for _ in range(r.randint(1, 3)) if frames else ():
                i = r.choice(frames)
                seg = bytearray(segments[i][1])
                seg[r.randrange(len(seg))] = r.choice(b'-\r\n"; =x\x00\xff')
                segments[i] = (True, bytes(seg))
        elif how == "noise":
            segments.insert(0, (True, self.blob(r.randint(1, 100))))
            segments.append((True, self.blob(r.randint(1, 100))))
        body = b"".join(s for _, s in segments)
        if how == "cut" and body:
            body = body[: r.randrange(len(body))]
        elif how == "long":  # a Content-Length past the body: it ends when we shut our side
            length, half = str(len(body) + r.randint(1, 10000)), True
        elif how == "lies":
            length = r.choice(["-1", "abc", "1e3", "+5", " 12", "99999999999999999999999", "0x10",
                               str(max(0, len(body) - r.randint(1, 50))), ""])  # fmt: skip
            if r.random() < 0.3:
                extra.append(f"Content-Length: {len(body) + 1}")
            half = True
        elif how == "chunked":
            body = self.chunked(body)
            codings = ["chunked", "gzip, chunked", "chunked, chunked", "identity"]
            extra.append(f"Transfer-Encoding: {r.choice(codings)}")
            length = str(len(body)) if r.random() < 0.15 else None
            half = True
            raw = self.head(
                "POST", route, {**headers, "Content-Type": ctype}, b"", length=length or "", extra=extra
            )
            raw = raw.replace(b"Content-Length: \r\n", b"") + body
            return Req(route, "POST", raw, half, good if self.authenticated(headers) else [])
        raw = self.head("POST", route, {**headers, "Content-Type": ctype}, body, length=length, extra=extra)
        self.sent += [(ok[0], c) for c in contents if (ok := well_formed(c))]
        self.sent = self.sent[-500:]
        # the parts of any upload may be stored if it parses in the end: the oracle allows every
        # well-formed part, and requires those of an intact upload to be answered stored
        intact = how == "good" and self.authenticated(headers) and route == "/v1/messages"
        return Req(route, "POST", raw, half, good if self.authenticated(headers) else [], intact)

    def multipart(self, contents: list[bytes], boundary: str) -> list[tuple[bool, bytes]]:
        """The body as (framing?, bytes) segments."""
        r = self.r
        out: list[tuple[bool, bytes]] = []
        b = boundary.encode("latin-1")
        for content in contents:
            disp = r.choices([
                'form-data; name="m"; filename="{}"', 'form-data; name="x"; filename="{}"',
                'form-data; name="m"', "form-data; filename={}; name=m", 'attachment; filename="../../{}"',
                'form-data; name="m"; filename="' + "\u00e9" * 3 + '"',
            ], [70, 5, 5, 8, 6, 6])[0].format(self.n)  # fmt: skip
            framing = b"--" + b + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n"
            if r.random() < 0.8:
                framing += b"Content-Type: application/octet-stream\r\n"
            if r.random() < 0.05:
                framing += b"X-Junk: " + self.text(r.randint(0, 2000)).encode("latin-1") + b"\r\n"
            out += [(True, framing + b"\r\n"), (False, content), (True, b"\r\n")]
        out.append((True, b"--" + b + b"--\r\n"))
        return out

    def chunked(self, body: bytes) -> bytes:
        """The body in chunks; in one of three, the chunk sizes, their ends or the last one broken."""
        r = self.r
        broken = r.random() < 0.35
        out = bytearray()
        i = 0
        while i < len(body):
            n = r.randint(1, max(1, len(body) // 3 + 1))
            size, end = f"{n:x}", b"\r\n"
            if broken and r.random() < 0.2:
                size = r.choice(["zz", "-1", "", f"{n + 5:x}", "fffffffffffffffffff", f"{n:X}"])
            if broken and r.random() < 0.1:
                end = r.choice([b"", b"\n", b"xx"])
            ext = r.choice(["", "", ";x=1", ";" + "e" * 300])
            out += f"{size}{ext}\r\n".encode() + body[i : i + n] + end
            i += n
        if not broken or r.random() < 0.5:
            out += b"0\r\n\r\n"
        return bytes(out)

    # -- fetches

    def fetch(self) -> Req:
        """POST v1/fetch: JSON of numbers, names, results and receipts, right and wrong."""
        r = self.r
        names = self.held + ["0" * 14 + ",x", "5661e068710504,../x", "a,b", "", self.text(20)]

        def num(top: int) -> Any:  # no wait above 0.05 s: a held fetch would stall the run
            if r.random() < 0.85:
                return r.choice([0, 1, 2, 5, top, 1.5])
            return r.choice([-1, "5", None, True, [], 2**70, 1e300])

        data: dict[str, Any] = {
            "wait": r.choice([0, 0.01, 0.05]) if r.random() < 0.85 else r.choice([-1, "1", None, 2**70]),
            "max": num(1000), "max_bytes": num(1 << 20),
        }  # fmt: skip
        if r.random() < 0.3:
            data["after"] = r.choice([*names, 5, None])
        for key, words in (("results", ["stored", "duplicate", "retry", "refused", "x"]),
                           ("receipts", ["processed", "dead", "pending", "unknown", "x"])):  # fmt: skip
            if r.random() < 0.4:
                word = "status" if key == "results" else "state"
                data[key] = [
                    {"name": r.choice(names), word: r.choice(words), "reason": self.text(r.randint(0, 30))}
                    if r.random() < 0.8 else r.choice([None, 1, "x", [], {}])
                    for _ in range(r.randint(0, 6))
                ]  # fmt: skip
        if r.random() < 0.1:
            data = r.choice([[], None, "x", {"results": "x"}, {"receipts": {}}])  # type: ignore[assignment]
        body = json.dumps(data, allow_nan=True).encode()
        if r.random() < 0.1:
            body = r.choice([body[: r.randint(0, len(body))], self.blob(100), b"[" * 100000, b"{" * 5000])
        headers = {**self.auth(), "Content-Type": "application/json"}
        return Req("/v1/fetch", "POST", self.head("POST", "/v1/fetch", headers, body), False)

    # -- status polls and the rest

    def status(self, route: str) -> Req:
        r = self.r
        headers = {**self.auth(), "Content-Type": r.choice(["application/json", "text/plain", ""])}
        ids = [r.choice(self.sent)[0] if self.sent and r.random() < 0.5 else self.text(r.randint(0, 70))
               for _ in range(r.randint(0, 5))]  # fmt: skip
        shapes: list[Any] = [
            {"ids": ids}, {"ids": ids, "prefixes": ["0" * 14] * len(ids)},
            {"ids": ids, "prefixes": [1, None]}, {"ids": ids, "origins": [""] * len(ids)},
            {"ids": "abc"}, {"ids": [[], {}, 1.5, None, True]},
            {"ids": [1] * 10000}, [], {}, None, "ids", 12, {"ids": ids, "prefixes": "x"}, {"x": {"ids": ids}},
            {"ids": ["a" * 100000]}, {"ids": ids * 200},
        ]  # fmt: skip
        body = json.dumps(r.choice(shapes)).encode()
        if r.random() < 0.2:
            body = r.choice([
                body[: r.randint(0, len(body))], self.blob(r.randint(0, 200)), b"{" * 5000, b"[" * 100000,
                b'{"ids": ["\\ud800"]}', b"\xff\xfe{}", b"NaN", b"1e999999",
            ])  # fmt: skip
        length = None
        half = False
        if r.random() < 0.1:
            length, half = r.choice([str(len(body) + 10), "-3", "x", str(2**40)]), True
        return Req(route, "POST", self.head("POST", route, headers, body, length=length), half)

    def random_request(self) -> Req:
        r = self.r
        method = r.choice(METHODS)
        pick = r.random()
        if pick < 0.5:
            path = r.choice(ROUTES)
        elif pick < 0.7:
            path = r.choice(ROUTES) + r.choice(["/", "//", "/..", "/%2e%2e", "?a=b", "/x", "%00", ";x"])
        elif pick < 0.85:
            path = "/" + "/".join(
                self.text(r.randint(0, 8)).replace(" ", "%20") for _ in range(r.randint(0, 5))
            )
        else:
            path = r.choice(["*", "http://127.0.0.1/v1/health", "../../etc/passwd", "/" + "a" * 9000, ""])
        body = self.blob(r.randint(0, 300)) if r.random() < 0.5 else b""
        raw = self.head(method, path, self.auth(), body)
        if r.random() < 0.15:  # a broken request line or header
            raw = r.choice([
                b"GET\r\n\r\n", b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", self.blob(r.randint(1, 300)),
                b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", b"GET / HTTP/1.0\n\n",
                b"GET /v1/health HTTP/1.1\r\n Folded: x\r\n\r\n",
            ])  # fmt: skip
        return Req(path.split("?")[0], method, raw, True)


def well_formed(content: bytes) -> tuple[str, int] | None:
    """(id, crc) if a part's content is a message the receiver must take, else None."""
    try:
        hdr = m.Header.parse(content[: m.HEADER_SIZE])
    except ValueError:
        return None
    payload = content[m.HEADER_SIZE :]
    if len(payload) != hdr.size or m.crc32(payload) != hdr.crc or hdr.size > MAX_SIZE:
        return None
    if hdr.origin not in (None, "a"):  # relayed for another origin by "a", whom b does not
        return None  # trust (serve.trust_relays): refused, as dropr.7 says
    return hdr.ident, hdr.crc


# -- the server and the oracles ----------------------------------------------------------------


class Sandbox:
    """A dropr-serve for node "b" with spool ROOT/b; TMPDIR and HOME are under ROOT too, so
    every file it may write is in the tree the checks compare."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self.spool = root / "b"
        self.spool.mkdir(parents=True)
        (root / "home").mkdir()
        (root / "tmpdir").mkdir()
        (self.spool / "dropr.toml").write_text(
            f'node = "b"\n[serve]\nmin_free = 0\nrelay = ["a"]\n[serve.tokens]\n"{TOKEN}" = "a"\n'
            '[peers.c]\nurl = "http://127.0.0.1:9/"\n[peers.a]\nhold = true\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
        env.update(DROPR_SPOOL=str(self.spool), HOME=str(root / "home"), TMPDIR=str(root / "tmpdir"))
        self.log = root / "serve.log"
        self.held = self.put_held(env)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [command_path("dropr-serve"), "--listen", "127.0.0.1:0", "--workers", str(workers),
                 "--max-size", str(MAX_SIZE), "--read-timeout", "2s"],
                env=env, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        url = serve_url(self.proc, self.log, 30)
        self.port = int(url.rstrip("/").rsplit(":", 1)[1])
        self.workers = set(wait_until(lambda: _enough(children(self.proc.pid), workers), 30, "the workers"))

    def put_held(self, env: dict[str, str], n: int = 8) -> dict[str, int]:
        """Put n messages for the held peer a (v1/fetch answers them); return id -> crc."""
        held = {}
        for p in [b"held %d" % i for i in range(n)]:
            res = subprocess.run([command_path("dropr-put"), "--to", "a"], input=p, env=env,
                                 capture_output=True, check=True)  # fmt: skip
            held[res.stdout.decode().split()[-1]] = m.crc32(p)
        return held

    def send(self, req: Req) -> tuple[str, dict[str, str], bytes]:
        """Write a request; return the answer's status ("closed" if none), headers, body."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        try:
            try:
                s.sendall(req.raw)
                if req.half_close:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered (and closed) before it read all: the answer may still be there
            resp = http.client.HTTPResponse(s, method=req.method if req.method in ("GET", "HEAD") else "POST")
            try:
                resp.begin()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead):
                return "closed", {}, b""
            return str(resp.status), {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            s.close()

    def health(self) -> bool:
        status, _, body = self.send(Req("/v1/health", "GET", b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"))
        return self.proc.poll() is None and status == "200" and json.loads(body).get("ok") is True

    def tree(self) -> set[str]:
        out = set()
        for dirpath, dirs, files in os.walk(self.root):
            for n in dirs + files:
                out.add(os.path.relpath(os.path.join(dirpath, n), self.root))
        return out - {"serve.log"}

    def stop(self) -> None:
        stop(self.proc)


def _enough(pids: list[int], n: int) -> list[int] | None:
    return pids if len(pids) >= n else None


def check_answer(req: Req, status: str, headers: dict[str, str], body: bytes, tally: Tally,
                 answered: dict[str, int]) -> list[str]:  # fmt: skip
    """The oracles of one answer; answered gains the ids answered stored (-> crc)."""
    bad = []
    what = f"{req.method} {req.target} -> {status}"
    if status == "closed":  # a connection closed without an answer: only for a broken request
        return [f"{what}: an intact upload got no answer"] if req.intact else []
    if status.startswith("5") and (status != "503" or "retry-after" not in headers):
        bad.append(f"{what}: a 5xx that is not the try-later 503: {body[:200]!r}")
    if status != "200" and req.method != "HEAD":
        try:
            err = json.loads(body)[("error")]
            assert isinstance(err, str) and err
        except (ValueError, KeyError, TypeError, AssertionError):
            return bad + [f"{what}: the answer is not JSON with an error in words: {body[:200]!r}"]
        if PYTHON_NAMES.search(err):
            bad.append(f"{what}: the error names Python's internals: {err!r}")
    if status == "200" and req.target == "/v1/fetch" and "multipart" in headers.get("content-type", ""):
        return bad  # the held messages: out/ is checked after the batch
    if status == "200" and req.target in ("/v1/messages", "/v1/relay", "/v1/fetch") and req.method == "POST":
        good = dict(req.good)
        try:
            results = json.loads(body)["results"]
            said = {r["id"]: r["status"] for r in results}
        except (ValueError, KeyError, TypeError):
            return bad + [f"{what}: an upload's 200 without results: {body[:200]!r}"]
        for ident, st in said.items():
            if st == "stored":
                if ident not in good:
                    bad.append(f"{what}: id {ident!r} answered stored, but no well-formed part carried it")
                else:
                    answered[ident] = good[ident]
                    tally.stored += 1
        if req.intact:
            for ident in good:
                if said.get(ident) not in ("stored", "duplicate"):
                    bad.append(
                        f"{what}: well-formed {ident!r} of an intact upload answered {said.get(ident)}"
                    )
    return bad


def check_sandbox(box: Sandbox, before: set[str], allowed: dict[str, set[int]],
                  answered: dict[str, int], tally: Tally) -> list[str]:  # fmt: skip
    """The oracles of the sandbox after a batch."""
    bad = []
    if not box.health():
        return [f"health does not answer; log: {box.log.read_text()[-2000:]}"]
    now = set(children(box.proc.pid))
    if now != box.workers:
        bad.append(f"workers changed: {sorted(box.workers)} -> {sorted(now)} (one died)")
        box.workers = now
    try:
        wait_until(lambda: not unstored(box.spool), 20, "no leftover upload files")
    except AssertionError:
        bad.append(f"leftover upload files: {unstored(box.spool)[:10]}")
    tree = box.tree()
    outside = {
        p
        for p in tree - before
        if p != "b" and not p.startswith("b" + os.sep) and not METRICS_DIR.fullmatch(p)
    }
    if outside:
        bad.append(f"files written outside the spool: {sorted(outside)[:10]}")
    tally.files_checked += len(tree)
    seen = set()
    for rel in sorted(tree):
        path = box.root / rel
        parts = rel.split(os.sep)
        if len(parts) == 5 and parts[:2] == ["b", "in"] and not path.is_dir():
            _, origin, ident = m.split_in_name(parts[4])
            seen.add(ident)
            if origin != "a" or ident not in allowed:
                bad.append(f"inbox file {rel}: no well-formed part of a's carried it")
            elif m.crc32(path.read_bytes()) not in allowed[ident]:
                bad.append(f"inbox file {rel}: its payload is no well-formed part's (CRC)")
        elif len(parts) == 4 and parts[:2] == ["b", "rcv"] and (parts[2] != "a" or parts[3] not in allowed):
            bad.append(f"rcv entry {rel}: no well-formed part of a's carried it")
        elif len(parts) == 5 and parts[:2] == ["b", "out"] and not m.not_out_name(parts[4]):
            ident = m.split_out_name(parts[4])[1]
            seen.add(ident)  # a relayed part: stored in the relay's outbox, not its inbox
            if ident not in allowed and ident not in box.held:
                bad.append(f"outbox file {rel}: no well-formed part carried it")
    missing = [i for i in answered if i not in seen]
    if missing:
        bad.append(f"answered stored, in neither the inbox nor the outbox: {missing[:5]}")
    return bad


def run(inputs: int, seed: int, work: Path, log_every: float = 30.0) -> Tally:
    """Fuzz a fresh server in work with inputs requests; return the tally."""
    tally = Tally()
    maker = Maker(seed)
    box = Sandbox(work)
    allowed: dict[str, set[int]] = {}
    answered: dict[str, int] = {}
    reported: set[str] = set()
    try:
        before = box.tree()
        maker.held = sorted(os.listdir(box.spool / "out" / "a" / "queued"))
        last = time.monotonic()
        for i in range(inputs):
            req = maker.request()
            tally.inputs[_target(req)] += 1
            for ident, crc in req.good:
                allowed.setdefault(ident, set()).add(crc)
            status, headers, body = box.send(req)
            tally.answers[status] += 1
            for f in check_answer(req, status, headers, body, tally, answered):
                tally.findings.append(f"input {i} (seed {seed}): {f}; request {req.raw[:300]!r}")
            if (i + 1) % BATCH == 0 or i + 1 == inputs:
                tally.batches += 1
                new = [f for f in check_sandbox(box, before, allowed, answered, tally) if f not in reported]
                reported.update(new)  # a bad file stays: reported once
                tally.findings += [f"after input {i}: {f}" for f in new]
            if len(tally.findings) >= 20:
                break
            if time.monotonic() - last > log_every:
                last = time.monotonic()
                print(f"fuzz wire: {i + 1} of {inputs} inputs, {len(tally.findings)} findings", flush=True)
    finally:
        box.stop()
    return tally


def _target(req: Req) -> str:
    t = req.target if req.target in ROUTES else "other"
    return t.strip("/").replace("v1/", "") or "base"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts to this file")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server (finally) on a kill too
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dropr-fuzz-") as work:
        tally = run(args.inputs, args.seed, Path(work))
    secs = time.monotonic() - start
    for f in tally.findings:
        print(f, end="\n\n")
    print(tally.line(args.seed, secs))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(tally.as_json(args.seed, secs), indent=1) + "\n")
    return 1 if tally.findings else 0


if __name__ == "__main__":
    sys.exit(main())
