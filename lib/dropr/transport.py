"""pycurl batch upload: in, a peer and (id, path) pairs; out, a result per message.

Each batch is one multipart POST whose parts libcurl reads straight from the
spool files (no Python read of a payload). Several batches, to several peers,
run at once on one CurlMulti. This module never sees spool directories.

The wire's words, routes and headers are protocol.py's (documented in dropr.7).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import pycurl

from . import protocol as wire
from .config import Peer

MAX_IDLE = 16  # at least this many idle connections are kept for reuse (Pool)
STALL = 0.25  # s without a byte moved either way: a transfer stops holding a slot (Pool.stalled);
# at 1 s, ten hung peers among 1,000 each held a slot for a second: 10,000 messages 4.0 -> 2.4 s
NO_EXPECT = f"{wire.EXPECT}:".encode()  # libcurl then sends no Expect: 100-continue (a round trip)
JSON_BODY = f"{wire.CONTENT_TYPE}: {wire.JSON}".encode()


class Timeouts:
    """Per-transfer limits: connect, low speed (bytes/s over a window) and total."""

    __slots__ = ("connect", "low_speed", "low_speed_time", "total")

    def __init__(
        self, *, connect: float = 10, low_speed: int = 1, low_speed_time: float = 30, total: float = 600
    ) -> None:
        self.connect = connect
        self.low_speed = low_speed
        self.low_speed_time = low_speed_time
        self.total = total


class Transfer:
    """One HTTP request in flight: a batch upload or a status poll."""

    def __init__(self, peer: Peer, kind: str, items: list[tuple[str, str | bytes]], ids: list[str]) -> None:
        self.peer = peer
        self.kind = kind  # "send", "status", "fetch" or "health" (a group member's probe)
        self.items = items  # (id, path or the file's bytes) for send
        self.ids = ids  # for status
        self.curl = pycurl.Curl()
        self.form: pycurl.CurlMime | None = None  # a batch upload's body (upload)
        self.body = BytesIO()
        self.error = ""
        self.code = 0
        self.curl_errno = 0  # libcurl's error number of a failed transfer (groups.ambiguous)
        self.request_bytes = 0  # bytes of request libcurl sent: 0, nothing can have been stored
        self.results: dict[str, tuple[str, str]] = {}
        self.tag: Any = None
        self.moved = (-1, 0.0)  # bytes moved either way when last looked at, and when (Pool.stalled)

    def took(self) -> tuple[float, int]:
        """Return a finished transfer's seconds and bytes uploaded (before close)."""
        return float(self.curl.getinfo(pycurl.TOTAL_TIME)), int(self.curl.getinfo(pycurl.SIZE_UPLOAD_T))

    def close(self) -> None:
        """Free the curl handle, then the upload's form. A form and its parts refer to each
        other: unclosed, the form and its copies of the messages waited for the cycle
        collector, 25-30 forms at once (~1 MiB each) in a drain of a big queue (#17)."""
        self.curl.close()
        if self.form is not None:
            self.form.close()


def _setup(t: Transfer, node: str, timeouts: Timeouts, path: str) -> pycurl.Curl:
    """Set the options common to every request; a URL or header libcurl cannot take
    fails the transfer (t.error), never the sender."""
    c = t.curl
    try:
        headers = [NO_EXPECT, _header(wire.ORIGIN_HEADER, node, "the node name")]
        if t.peer.token:
            headers.append(_header(wire.AUTH_HEADER, f"{wire.BEARER} {t.peer.token}", "the peer's token"))
    except ValueError as exc:
        t.error = str(exc)
        return c
    if t.kind != "send":  # a status poll or a fetch
        headers.append(JSON_BODY)
    if t.peer.to:  # reached through a relay (via): v1/relay and v1/relay/status name the destination
        path = wire.RELAY_STATUS if t.kind == "status" else wire.RELAY
        headers.append(f"{wire.TO_HEADER}: {t.peer.to}".encode("ascii"))
    url = t.peer.url + path
    if not url.isascii() or "\0" in url:  # dropr-put and the config refuse them; an older outbox
        t.error = "cannot use the peer's URL: it has non-ASCII characters or a NUL; percent-encode them"
        return c
    c.setopt(pycurl.URL, url)
    c.setopt(pycurl.WRITEDATA, t.body)
    c.setopt(pycurl.NOSIGNAL, 1)
    c.setopt(pycurl.CONNECTTIMEOUT_MS, int(timeouts.connect * 1000))
    c.setopt(pycurl.LOW_SPEED_LIMIT, timeouts.low_speed)
    c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(timeouts.low_speed_time)))
    c.setopt(pycurl.TIMEOUT_MS, int(timeouts.total * 1000))
    c.setopt(pycurl.TCP_NODELAY, 1)
    c.setopt(pycurl.HTTPHEADER, headers)
    if t.peer.cafile:
        c.setopt(pycurl.CAINFO, os.fsencode(t.peer.cafile))
    return c


def _header(name: str, value: str, what: str) -> bytes:
    """Return one header line as bytes; ValueError if the value cannot be sent.

    pycurl encodes str as ASCII (and raises on anything else); a CR or LF would
    inject headers. The reason never quotes the value: it may be a secret.
    """
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"cannot send {name} header: {what} has a line break or NUL; fix it in the config")
    try:
        return f"{name}: {value}".encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"cannot send {name} header: {what} has a character HTTP cannot carry; fix it in the config"
        ) from None


def upload(peer: Peer, items: list[tuple[str, str | bytes]], node: str, timeouts: Timeouts) -> Transfer:
    """Prepare a batch upload of (id, path) pairs, or (id, the file's bytes) for a small
    message the caller has read already; add it to a Pool to run it."""
    t = Transfer(peer, "send", items, [])
    c = _setup(t, node, timeouts, wire.MESSAGES)
    if peer.group is not None:  # a group member: "could not connect" must mean nothing was sent
        c.setopt(pycurl.FRESH_CONNECT, 1)  # (groups.ambiguous): libcurl resends a request on a
        # new connection when a kept-alive one, used < 1 s ago and not checked, is dead
    form = t.form = pycurl.CurlMime(c)  # freed by t.close()
    for ident, src in items:
        part = form.addpart()
        part.name(wire.PART_FIELD)
        if isinstance(src, bytes):
            part.data(src)  # libcurl copies it
        else:
            try:
                part.filedata(os.fsencode(src))  # libcurl reads the file as it sends it
            except pycurl.error as exc:  # it looks the file up now: gone (acked, expired) since listed
                t.error = f"cannot read the file of message {ident}: {exc.args[-1]}"
                break
        part.filename(ident)  # after filedata, which names the part after the file
        part.type(wire.PART_TYPE)
    c.setopt(pycurl.MIMEPOST, form)
    return t


def status(
    peer: Peer,
    ids: list[str],
    node: str,
    timeouts: Timeouts,
    prefixes: list[str] | None = None,
    origins: list[str] | None = None,
) -> Transfer:
    """Prepare a status poll for ids (with their "{p}{created}" name prefixes, and the first
    origin of each relayed one, "" for this node's own) at a peer."""
    t = Transfer(peer, "status", [], ids)
    c = _setup(t, node, timeouts, wire.STATUS)
    body: dict[str, list[str]] = {wire.IDS: ids}
    if prefixes is not None:
        body[wire.PREFIXES] = prefixes
    if origins is not None:
        body[wire.ORIGINS] = origins
    c.setopt(pycurl.POSTFIELDS, json.dumps(body))
    return t


def fetch(
    peer: Peer, body: bytes, node: str, timeouts: Timeouts, sink: Callable[[str, bytes], object], hold: float
) -> Transfer:
    """Prepare a fetch (v1/fetch) of body from a holder that may hold it hold seconds.

    A 200 answer's body goes to sink(content type, chunk) as it arrives (it returns
    False to abort the transfer); any other answer's to t.body, whose "error" _parse reads."""
    t = Transfer(peer, "fetch", [], [])
    c = _setup(t, node, timeouts, wire.FETCH)
    head = {"code": 0, "type": ""}

    def header(line: bytes) -> None:
        if line.startswith(b"HTTP/"):  # a new status line: a new answer's headers
            head["code"], head["type"] = int(line.split()[1]), ""
        elif line[:13].lower() == b"content-type:":
            head["type"] = line[13:].decode("latin-1").strip()

    def write(data: bytes) -> int | None:
        if head["code"] != 200:
            t.body.write(data)
            return None
        return 0 if sink(str(head["type"]), data) is False else None

    c.setopt(pycurl.HEADERFUNCTION, header)
    c.setopt(pycurl.WRITEFUNCTION, write)
    c.setopt(pycurl.POSTFIELDS, body)
    c.setopt(pycurl.LOW_SPEED_TIME, max(1, int(timeouts.low_speed_time + hold)))  # a held fetch is quiet
    return t


def health(peer: Peer, node: str, timeouts: Timeouts) -> Transfer:
    """Prepare a GET v1/health probe of a peer (a group member whose backoff is over)."""
    t = Transfer(peer, "health", [], [])
    _setup(t, node, timeouts, wire.HEALTH)
    return t


class Pool:
    """Transfers running concurrently on one CurlMulti."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        """max_idle: the connections libcurl keeps open for reuse. Its default grows with the
        handles ever added: one kept per host ever sent to, for a sender of a thousand hosts."""
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, max(MAX_IDLE, max_idle))
        self.running: dict[int, Transfer] = {}
        self.failed: list[Transfer] = []  # failed before they started: the next poll reports them

    def add(self, t: Transfer) -> None:
        """Start a transfer."""
        if t.error:
            self.failed.append(t)
            return
        self.running[id(t.curl)] = t
        self.multi.add_handle(t.curl)

    def __len__(self) -> int:
        return len(self.running) + len(self.failed)

    def stalled(self) -> tuple[int, set[str]]:
        """Return how many running transfers (but fetches, held by design) moved no byte
        either way for STALL seconds, and their peers' names: a peer that took the connection
        and never answers, or a connect that gets no answer. They wait out their timeouts
        holding no slot of --concurrency for other peers, or ten hung peers would stop the
        delivery to a thousand others."""
        now = time.monotonic()
        count, peers = 0, set()
        for t in self.running.values():
            if t.kind == "fetch":
                continue
            c = t.curl
            moved = (
                c.getinfo(pycurl.SIZE_UPLOAD_T)
                + c.getinfo(pycurl.SIZE_DOWNLOAD_T)
                + c.getinfo(pycurl.HEADER_SIZE)
            )
            if moved != t.moved[0]:
                t.moved = (moved, now)
            elif now - t.moved[1] >= STALL:
                count += 1
                peers.add(t.peer.name)
        return count, peers

    def poll(self, timeout: float) -> Iterator[Transfer]:
        """Drive transfers for up to timeout seconds; yield each one that finished."""
        if self.failed:
            failed, self.failed = self.failed, []
            yield from failed
            return
        if not self.running:
            return
        while True:
            ret, _ = self.multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        done = self._collect()
        if not done:
            self.multi.select(timeout)
            while True:
                ret, _ = self.multi.perform()
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
            done = self._collect()
        yield from done

    def wait(self, timeout: float, fd: int) -> bool:
        """Wait up to timeout for the transfers' sockets, their next timer, or fd; return
        whether fd is readable (then drive them with poll(0))."""
        import select

        r, w, x = self.multi.fdset()
        due = self.multi.timeout()  # ms; -1: no timer set
        if due >= 0:
            timeout = min(timeout, due / 1000)
        return fd in select.select([*r, fd], w, x, max(0.0, timeout))[0]

    def _collect(self) -> list[Transfer]:
        finished = []
        while True:
            _, ok, failed = self.multi.info_read()
            for c in ok:
                finished.append(self._finish(c, ""))
            for c, errno, msg in failed:
                finished.append(self._finish(c, msg or f"curl error {errno}", errno))
            if not ok and not failed:
                break
        return finished

    def _finish(self, c: pycurl.Curl, error: str, errno: int = 0) -> Transfer:
        t = self.running.pop(id(c))
        self.multi.remove_handle(c)
        t.code = int(c.getinfo(pycurl.RESPONSE_CODE) or 0)
        t.error = error
        t.curl_errno = errno
        t.request_bytes = int(c.getinfo(pycurl.REQUEST_SIZE) or 0)
        if not error:
            _parse(t)
        return t

    def close(self) -> None:
        """Abort and free every running transfer."""
        for t in list(self.running.values()):
            self.multi.remove_handle(t.curl)
            t.close()
        self.running.clear()
        for t in self.failed:
            t.close()
        self.failed.clear()
        self.multi.close()


def _parse(t: Transfer) -> None:
    raw = t.body.getvalue()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if t.code != 200:
        reason = data.get(wire.ERROR) if isinstance(data, dict) else None
        t.error = f"HTTP {t.code}: {reason or raw[:200].decode('utf-8', 'replace').strip() or 'no answer'}"
        if t.code == 404 and t.peer.to:  # a server of an earlier release: no v1/relay route
            t.error += f"; {t.peer.via or 'the relay'} does not relay: an older dropr?"
        return
    if t.kind == "fetch":
        return  # a 200's body went to its sink
    results = data.get(wire.RESULTS) if isinstance(data, dict) else None
    if t.kind == "send" and isinstance(results, list):
        for r in results:
            if isinstance(r, dict) and isinstance(r.get(wire.ID), str):
                t.results[r[wire.ID]] = (str(r.get(wire.STATUS_KEY, wire.RETRY)), str(r.get(wire.REASON, "")))
    elif t.kind == "health":
        pass  # any 200 answer: the member is up
    elif t.kind == "status" and isinstance(results, dict):
        for ident, r in results.items():
            if isinstance(r, dict):
                t.results[str(ident)] = (str(r.get(wire.STATE, wire.UNKNOWN)), str(r.get(wire.REASON, "")))
    else:
        t.error = "malformed answer from peer"
