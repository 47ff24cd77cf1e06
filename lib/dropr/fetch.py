"""Fetch (dropr.7, FETCH): a host nobody can reach fetches what a holder keeps for it.

The holder H (``[peers.laptop] hold = true``) queues messages for laptop in out/laptop/
as for any peer; its dropr-send leaves that folder alone. laptop's dropr-send asks for
them (POST v1/fetch, ``answer`` below, run by H's dropr-serve) and stores them in its
own inbox through the one store path (``Fetcher``), then confirms them with its next
request, and H moves them to sent/. Receipts flow back the same way: H's answer asks
about sent/ names, laptop's next request says their state.

Notes (the invariants):
- The fetcher stores an answer's messages durably (Spool.store) before its next request
  confirms them; a crash in between leaves them queued at H, the next fetch gets them
  again, and the store answers duplicate: the inbox's rcv/ index, keyed by origin and id,
  keeps them once. H keeps no state between requests but hints (when to ask for receipts).
- A client fetches only out/<its node>/: its token's node (or X-Dropr-Origin, without
  tokens), which must be a held peer in H's config.
- A held fetch sleeps on a wake-up socket (wake.fetch_sock) that puts and relay stores
  for the peer wake: no polling interval. It takes a server thread: at most threads - 1
  are held per process, the others are answered at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from . import message as m
from . import protocol as wire
from . import retry
from .peerrun import receipt_names, take_receipts
from .server import DISPOSITION, HTTPError, Streamed, Upload, _boundary, _filename, _Part, _ReadTimeout
from .spool.wake import fetch_sock
from .summary import FETCHED

if TYPE_CHECKING:
    from .config import Peer
    from .server import App
    from .spool import Spool
    from .summary import Summary
    from .transport import Transfer

log = logging.getLogger(__name__)

MAX_BODY = 4 << 20  # the largest fetch request (its results and receipts)
MAX_COUNT = 10_000  # the most messages one answer carries
ASK_MIN, ASK_MAX = 0.2, 5.0  # receipts are asked for this far apart, as the sender's polls
BUFFER = 256 << 10  # an answer is written in pieces of about this size
CHUNK = 1 << 20
SEEN_EVERY = 10.0  # a held peer's last fetch is recorded at most this often
QUEUED, SENT = "queued", "sent"
AFTER, LAST = wire.AFTER, wire.LAST


# -- the holder: POST v1/fetch ------------------------------------------------------------


class _Holding:
    """What one dropr-serve process keeps across fetches: how many it holds, whether it
    stops, and per peer when receipts are next asked for (due, gap, the last name asked,
    when last asked)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = 0
        self.seq = 0
        self.stopping = False
        self.waiters: set[Any] = set()
        self.asks: dict[str, list[Any]] = {}

    def take(self, limit: int) -> int:
        """Count one more held fetch if fewer than limit are; return its tag, or 0."""
        with self.lock:
            if self.held >= limit or self.stopping:
                return 0
            self.held += 1
            self.seq += 1
            return self.seq

    def give(self) -> None:
        with self.lock:
            self.held -= 1

    def ask_state(self, peer: str) -> list[Any]:
        with self.lock:
            return self.asks.setdefault(peer, [0.0, ASK_MIN, "", 0.0])


_HOLDING = _Holding()


def stop_holding() -> None:
    """Answer every fetch this process holds now, and hold no more: its worker stops."""
    _HOLDING.stopping = True
    for w in list(_HOLDING.waiters):
        try:
            w.sock.sendto(b"!", w.path)
        except OSError:
            pass


def answer(app: App, environ: dict[str, Any]) -> Streamed:
    """POST v1/fetch: apply the client's results and receipts, then answer its held
    messages (holding the request while there are none, up to its wait)."""
    spool = app.spool
    peer = _client(app, environ)
    req = _request(app, environ)
    if req[wire.RESULTS] or req[wire.RECEIPTS]:
        with spool.fs.lock(spool.path("lock", f"fetch-{peer}.lock")):
            changed = _confirm(spool, peer, req[wire.RESULTS])
            changed |= _receipts(spool, peer, req[wire.RECEIPTS])
        if changed:
            spool.wakeups.wake_putters()
    _seen(spool, peer)
    choice = _Choice(spool, peer, req)
    if choice.empty() and req[wire.WAIT] > 0:
        choice = _hold(app, environ, peer, req)
    return choice.streamed()


def _seen(spool: Spool, peer: str) -> None:
    """Record in the held peer's peer.json that it fetched (dropr-ls: last success), at
    most every SEEN_EVERY seconds: nobody else writes it (dropr-send leaves the peer alone)."""
    st = spool.peer_state(peer)
    now = time.time()
    last = st.get("last_ok")
    if not isinstance(last, int | float) or not 0 <= now - last < SEEN_EVERY:
        st["last_ok"] = now
        try:
            spool.set_peer_state(peer, st)
        except FileNotFoundError:
            pass  # nothing was ever queued for it: no folder yet


def _client(app: App, environ: dict[str, Any]) -> str:
    """Return the held peer a fetch is for: the client's own node, or raise the 403."""
    try:
        node = app.origin(environ)
    except HTTPError as exc:
        if exc.status == wire.HTTP_FORBIDDEN:  # a token naming another node
            why = exc.reason.replace("cannot deliver as", "cannot fetch the messages of")
            raise HTTPError(exc.status, why) from None
        raise
    peer = app.cfg.peers.get(node)
    if peer is None or not peer.hold:
        why = f"no messages are held for {node!r}: it is no peer with hold = true at {app.spool.node!r}"
        raise HTTPError(wire.HTTP_FORBIDDEN, why)
    return node


def _request(app: App, environ: dict[str, Any]) -> dict[str, Any]:
    """Read and check a fetch request's JSON body, or raise the 400 or 413."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > MAX_BODY:
        raise HTTPError(wire.HTTP_TOO_LARGE, "fetch request too large")
    with _ReadTimeout(environ, app.read_timeout):
        raw = environ["wsgi.input"].read(length)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise HTTPError(wire.HTTP_BAD_REQUEST, "bad fetch request: not JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(wire.HTTP_BAD_REQUEST, "bad fetch request: expected a JSON object")
    req: dict[str, Any] = {}
    for key, top in ((wire.WAIT, wire.FETCH_WAIT_MAX), (wire.MAX, MAX_COUNT), (wire.MAX_BYTES, 1 << 62)):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1 << 62:
            raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad fetch request: {key} must be a number, 0 or more")
        req[key] = min(value, top)
    after = data.get(AFTER, "")
    if after and not _name_ok(after):
        raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad fetch request: {AFTER} must be an outbox name")
    req[AFTER] = after
    for key in (wire.RESULTS, wire.RECEIPTS):
        value = data.get(key, [])
        if not isinstance(value, list):
            raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad fetch request: {key} must be a list")
        req[key] = [e for e in value if isinstance(e, dict) and _name_ok(e.get(wire.NAME))]
    return req


def _name_ok(name: Any) -> bool:
    """Tell whether name is an outbox name (so, no path): "{p}{arrival:013x},{id}"."""
    if not isinstance(name, str) or m.not_out_name(name):
        return False
    try:
        m.check_id(m.split_out_name(name)[1])
    except ValueError:
        return False
    return True


def _confirm(spool: Spool, peer: str, results: list[dict[str, Any]]) -> bool:
    """Move what the fetcher stored to sent/, make what it refused dead; return whether
    any died (dropr-put --wait then has news)."""
    stored, refused = [], []
    for r in results:
        status = r.get(wire.STATUS_KEY)
        if status in (wire.STORED, wire.DUPLICATE):
            stored.append(r[wire.NAME])
        elif status == wire.REFUSED:
            refused.append((r[wire.NAME], str(r.get(wire.REASON) or "no reason given")))
    if stored and spool.mark_sent(peer, stored):
        state = _HOLDING.ask_state(peer)  # new sent entries: ask for their receipts soon
        state[0], state[1] = min(state[0], time.monotonic() + ASK_MIN), ASK_MIN
    died = False
    for name, why in refused:
        if os.path.lexists(spool.path("out", peer, QUEUED, name)):
            died |= bool(spool.kill(peer, [name], retry.REFUSED.format(why)))
            log.warning("dead id=%s peer=%s reason=%s", m.split_out_name(name)[1], peer, why)
    return died


def _receipts(spool: Spool, peer: str, receipts: list[dict[str, Any]]) -> bool:
    """Record the receipt states the fetcher gave, as a sender's poll does (take_receipts);
    return whether any message finished."""
    if not receipts:
        return False
    answers = [
        (r[wire.NAME], str(r.get(wire.STATE)), str(r.get(wire.REASON) or ""))
        for r in receipts
        if os.path.lexists(spool.path("out", peer, SENT, r[wire.NAME]))  # the fetcher names them
    ]
    changed = take_receipts(spool, peer, answers)
    state = _HOLDING.ask_state(peer)
    state[1] = ASK_MIN if changed else min(ASK_MAX, state[1] * 1.5)
    state[0] = time.monotonic() + state[1]
    return changed


def _hold(app: App, environ: dict[str, Any], peer: str, req: dict[str, Any]) -> _Choice:
    """Hold a fetch until a message is queued for peer, receipts are due, the client
    goes, the worker stops, or the wait passes; return what to answer then."""
    spool = app.spool
    deadline = time.monotonic() + float(req[wire.WAIT])
    tag = _HOLDING.take(app.threads - 1)
    if not tag:  # every other thread may be needed: answer at once
        return _Choice(spool, peer, req)
    import select

    client = environ.get("gunicorn.socket")
    watch = [client] if client is not None and hasattr(client, "fileno") else []
    try:
        with spool.wakeups.waiter(fetch_sock(peer, f"{os.getpid()}.{tag}")) as w:
            _HOLDING.waiters.add(w)
            try:
                while True:
                    choice = _Choice(spool, peer, req)  # after the bind: no put is missed
                    now = time.monotonic()
                    left = deadline - now
                    if not choice.empty() or left <= 0 or _HOLDING.stopping:
                        return choice
                    if spool.out_any(peer, SENT):  # receipts to ask for: at most until due
                        left = min(left, max(0.0, _HOLDING.ask_state(peer)[0] - now))
                    ready = select.select([w.sock, *watch], [], [], left)[0]
                    if watch and watch[0] in ready:  # the client went (or spoke out of turn)
                        return _Choice(spool, peer, req)
                    w.drain()
            finally:
                _HOLDING.waiters.discard(w)
    finally:
        _HOLDING.give()


class _Choice:
    """What one answer carries: queued messages (their open files), and the sent names
    whose receipts are due."""

    def __init__(self, spool: Spool, peer: str, req: dict[str, Any]) -> None:
        self.spool = spool
        self.peer = peer
        self.files: list[tuple[str, int, int]] = []  # name, fd, size
        self.more = False
        self._pick(int(req[wire.MAX]), int(req[wire.MAX_BYTES]), req[AFTER])
        # A fetch that does not wait, from the oldest name (a --once round), asks whenever
        # receipts are outstanding, as a --once pass polls once; others when due.
        self.ask = self._asks(force=not req[wire.WAIT] and not req[AFTER])

    def empty(self) -> bool:
        """Tell whether there is nothing to answer yet."""
        return not self.files and not self.ask

    def _pick(self, count: int, max_bytes: int, after: str) -> None:
        """Open up to count queued messages (after a name) of up to max_bytes together (one
        larger goes alone)."""
        if count <= 0:
            return
        names = self.spool.out_names(self.peer, QUEUED, after=after)
        total = 0
        for name in names:
            if len(self.files) >= count:
                self.more = True
                return
            opened = self._open(name)
            if opened is None:
                continue
            fd, size = opened
            if self.files and total + size > max_bytes:
                os.close(fd)
                self.more = True
                return
            self.files.append((name, fd, size))
            total += size

    def _open(self, name: str) -> tuple[int, int] | None:
        """Open a queued message; None if it went, is corrupt (moved aside) or expired (dead)."""
        path = self.spool.path("out", self.peer, QUEUED, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            deadline, size = self.spool.peek(self.peer, name, fd)  # a requeue's later deadline too
            size += m.HEADER_SIZE  # the whole file goes
        except (OSError, ValueError) as exc:
            os.close(fd)
            if isinstance(exc, ValueError):
                self.spool.corrupt(path, str(exc))
                log.error("corrupt path=%s reason=%s", path, exc)
            return None
        if deadline and deadline < m.now_us():
            os.close(fd)
            self.spool.kill(self.peer, [name], retry.TTL_EXPIRED)
            self.spool.wakeups.wake_putters()
            log.warning(
                "dead id=%s peer=%s reason=%s", m.split_out_name(name)[1], self.peer, retry.TTL_EXPIRED_LOG
            )
            return None
        return fd, size

    def _asks(self, force: bool) -> list[dict[str, str]]:
        """Return the sent names whose receipts to ask for, if due (from where the last
        ask stopped, as the sender's polls go, so unconsumed ones hold up none)."""
        state = _HOLDING.ask_state(self.peer)
        now = time.monotonic()
        if now < state[0] and not force:
            return []
        if self.files and not force and now - state[3] < ASK_MAX:
            return []  # busy sending: the fetcher's thread is better spent storing, for a while
        names, state[2] = receipt_names(self.spool, self.peer, state[2], wrap=True)
        if not names:
            return []
        state[0], state[3] = now + ASK_MAX, now  # due again unless the receipts come back sooner
        names, origins = self.spool.relays.poll_origins(self.peer, names)  # relayed here: o=
        origins = origins or [""] * len(names)
        return [{wire.NAME: n, wire.ORIGIN: o} for n, o in zip(names, origins, strict=True)]

    def streamed(self) -> Streamed:
        """Return the answer: a multipart body, the control part first, then each file."""
        boundary = os.urandom(16).hex()
        control: dict[str, Any] = {wire.NODE: self.spool.node, wire.MORE: self.more, wire.ASK: self.ask}
        if self.files:
            control[LAST] = self.files[-1][0]
        first = _part_head(boundary, wire.FETCH_PART, "", wire.JSON, True) + json.dumps(control).encode()
        heads = [_part_head(boundary, wire.PART_FIELD, name, wire.PART_TYPE) for name, _, _ in self.files]
        end = f"\r\n--{boundary}--\r\n".encode()
        length = len(first) + sum(len(h) for h in heads) + sum(s for _, _, s in self.files) + len(end)
        headers = [
            (wire.CONTENT_TYPE, f"{wire.FORM_DATA}; boundary={boundary}"),
            (wire.CONTENT_LENGTH, str(length)),
        ]
        return Streamed(headers, _Body(first, heads, self.files, end))


def _part_head(boundary: str, field: str, filename: str, ctype: str, first: bool = False) -> bytes:
    name = f'; filename="{filename}"' if filename else ""
    lead = "" if first else "\r\n"
    return (
        f'{lead}--{boundary}\r\n{wire.PART_DISPOSITION}: form-data; name="{field}"{name}\r\n'
        f"{wire.CONTENT_TYPE}: {ctype}\r\n\r\n"
    ).encode()


class _Body:
    """An answer's body, read from the queued files as it is sent, in pieces of about
    BUFFER bytes; close() (which the server calls, sent or not) closes the files."""

    def __init__(
        self, first: bytes, heads: list[bytes], files: list[tuple[str, int, int]], end: bytes
    ) -> None:
        self.first, self.heads, self.files, self.end = first, heads, files, end

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray(self.first)
        for head, (_, fd, size) in zip(self.heads, self.files, strict=True):
            buf += head
            off = 0
            while off < size:
                data = os.pread(fd, min(CHUNK, size - off), off)
                if not data:
                    raise OSError(errno.EIO, "a queued message got shorter while it was sent")
                buf += data
                off += len(data)
                if len(buf) >= BUFFER:
                    yield bytes(buf)
                    buf.clear()
        buf += self.end
        yield bytes(buf)

    def close(self) -> None:
        files, self.files = self.files, []
        for _, fd, _ in files:
            os.close(fd)


# -- the fetcher: dropr-send --fetch ---------------------------------------------------------


class _Origins:
    """The spool as an answer's parser (server.Upload) sees it: each message is written
    and indexed under its own origin, its o= (relayed to the holder) or the holder's node."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.node = ""  # the holder's, from the answer's control part
        self.of: dict[str, str] = {}  # path of a part -> its origin

    def origin(self, hdr: m.Header) -> str:
        if not self.node:
            raise ValueError(f"the answer does not start with its {wire.FETCH_PART!r} part")
        return hdr.origin or self.node

    def open_part(self, origin: str, hdr: m.Header, *, entry: bool = True) -> Any:
        o = self.origin(hdr)
        part = self.spool.open_part(o, hdr, entry=entry)
        self.of[part.path] = o
        return part

    def unreceive(self, origin: str, path: str, fd: int = -1) -> bool:
        return self.spool.unreceive(self.of.get(path, origin), path, fd)


class _Parts(Upload):
    """The multipart parsing the server uses for uploads, taking an answer's control part
    (the first, named FETCH_PART) aside and checking each part's name against its id."""

    def __init__(self, origins: _Origins, max_size: int, boundary: bytes, entries: int) -> None:
        # trusted: a part's o= (a message the holder relayed) is the origin it is stored under
        super().__init__(cast("Spool", origins), "", max_size, boundary, entries, trusted=True)
        self.origins = origins
        self.control: bytearray | None = None  # while the control part is read
        self.got: dict[str, Any] = {}

    def _hend(self) -> None:
        p = self.cur
        assert p is not None
        if p.hname.lower() == DISPOSITION and not self.got and len(self.parts) == 1:
            from python_multipart.multipart import parse_options_header

            if parse_options_header(p.hval)[1].get(b"name") == wire.FETCH_PART.encode():
                self.control = bytearray()
        super()._hend()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.control is None:
            super()._data(data, start, end)
            return
        self.control += data[start:end]
        if len(self.control) > MAX_BODY:
            raise ValueError("the answer's control part is too large")

    def _end(self) -> None:
        if self.control is None:
            super()._end()
            p = self.parts[-1]
            p.filename = _name_of(p.filename)  # the holder's name for it, from here on
            if not p.refused and p.header is not None and p.filename.partition(",")[2] != p.header.ident:
                p.refused = "its name does not end in the id of its header"
                self._drop(p)
            return
        got = json.loads(bytes(self.control))
        node = got.get(wire.NODE) if isinstance(got, dict) else None
        if not isinstance(node, str):
            raise ValueError(f"the answer's {wire.FETCH_PART!r} part names no node")
        self.origins.node = m.check_name(node, "the holder's node")
        self.got, self.control = got, None
        self.parts.pop()  # not a message
        self.cur = None


def _name_of(disposition: str) -> str:
    """Return the filename of a part's Content-Disposition: at once where it is the last
    parameter, quoted and plain, as a holder writes it; else as the server parses it."""
    head, sep, tail = disposition.rpartition('; filename="')
    if sep and tail.endswith('"') and '"' not in tail[:-1] and "\\" not in tail:
        return tail[:-1]
    return _filename(disposition)


class _Answer:
    """One fetch's answer as it streams in: its parts written into the spool."""

    def __init__(self, spool: Spool, max_size: int, entries: int) -> None:
        self.origins = _Origins(spool)
        self.max_size = max_size
        self.entries = entries
        self.parts: _Parts | None = None
        self.failed = ""

    def sink(self, ctype: str, data: bytes) -> bool:
        """Feed a piece of the body to the parser; False (abort the transfer) on a failure."""
        try:
            if self.parts is None:
                self.parts = _Parts(self.origins, self.max_size, _boundary(ctype), self.entries)
            self.parts.feed(data)
            return True
        except HTTPError as exc:
            self.failed = f"malformed answer: {exc.reason}"
        except OSError as exc:
            self.failed = f"cannot store what was fetched: {exc.strerror or exc}"
        except Exception as exc:  # the parser's, or json's: the holder's answer is bad
            self.failed = f"malformed answer: {exc}"
        return False

    def control(self) -> dict[str, Any] | None:
        """Return the answer's control part, once it has come in."""
        return self.parts.got if self.parts is not None and self.parts.got else None

    def discard(self) -> None:
        """Remove every file this answer wrote that is not in the inbox."""
        if self.parts is not None:
            try:
                self.parts.discard()
            finally:
                self.parts.release()

    def store(self, peer: str) -> list[dict[str, str]]:
        """Store the good parts (per origin) durably; return the result of each part."""
        up = self.parts
        assert up is not None
        try:
            good = [p for p in up.parts if not p.refused and p.header and p.tmp]
            groups: dict[str, list[_Part]] = {}
            for p in good:
                assert p.header is not None
                groups.setdefault(self.origins.origin(p.header), []).append(p)
            answers: dict[int, str] = {}
            for origin, ps in groups.items():
                stored = self.origins.spool.store(origin, [(p.tmp, p.header, p.fd) for p in ps])  # type: ignore[misc]
                answers.update(zip((id(p) for p in ps), stored, strict=True))
        except BaseException:
            up.discard()
            raise
        finally:
            up.release()
        debug = log.isEnabledFor(logging.DEBUG)  # once per answer: no logging call per message
        return [_result(p, answers.get(id(p)), peer, self.origins, debug) for p in up.parts]


def _result(p: _Part, status: str | None, peer: str, origins: _Origins, debug: bool) -> dict[str, str]:
    """Return what the fetcher tells the holder about one part: stored, duplicate or refused
    (a debug line, or a warning, with its id)."""
    name = p.filename  # made the bare name by _Parts._end
    if status is None:
        why = p.refused or "truncated message header"
        log.warning("refused name=%s peer=%s reason=%s", name, peer, why)
        return {wire.NAME: name, wire.STATUS_KEY: wire.REFUSED, wire.REASON: why}
    if debug:
        assert p.header is not None
        dup = " duplicate" if status == wire.DUPLICATE else ""
        log.debug("fetched id=%s peer=%s origin=%s%s", p.header.ident, peer, origins.origin(p.header), dup)
    return {wire.NAME: name, wire.STATUS_KEY: status}


PIPELINE = 2  # fetches in flight per holder: the next starts once the last one's answer begins
ENTRY_FILES = 256  # most parts of an answer whose files stay open until the store (the rest
# go through tmp/): with PIPELINE answers in flight and one being stored, every descriptor
# stays below 1024, which select(2) (libcurl's and the wake-ups') cannot go past


class _Flight:
    """One fetch request in flight: its answer, and what it carries (given back on a failure)."""

    __slots__ = ("answer", "wait", "after", "results", "receipts", "started")

    def __init__(self, answer: _Answer, wait: float, after: str, results: list[Any], receipts: list[Any]):
        self.answer = answer
        self.wait = wait
        self.after = after
        self.results = results
        self.receipts = receipts
        self.started = time.monotonic()


class Fetcher:
    """One holder this node fetches its messages from.

    What an answer brought is confirmed (results) and the receipts it asked for are
    given (receipts) by a later request; a request that fails gives them back for the
    next (the holder applies them once: a second time moves nothing). While the holder
    says it has more, a second request starts as soon as the first one's answer begins,
    asking for the names after the last one that answer carries (``after``): the holder
    reads and sends the next batch while this node stores the last one."""

    def __init__(self, peer: Peer, spool: Spool, summary: Summary | None = None) -> None:
        self.peer = peer
        self.spool = spool
        self.summary = summary  # the sender's: a line per answer or interval (summary.py)
        self.results: list[dict[str, str]] = []
        self.receipts: list[dict[str, str]] = []
        self.flights: list[Transfer] = []
        self.storing: list[tuple[_Flight, Future[list[dict[str, str]]]]] = []  # answers in, being stored
        self.until = 0.0  # monotonic: no request before (a backoff, or a holder too busy to hold)
        self.failures = 0
        self.error = ""  # of the last request that ended, "" if it went well
        self.drained = False  # a request from the oldest name found nothing more (--once ends)
        self.extra = False  # a request from the oldest gave receipts and found nothing

    def next_request(self, wait: float) -> tuple[float, str] | None:
        """Return (wait, after) of the request that may start now, or None."""
        self.collect()
        if not self.flights and not self.storing:
            return (wait, "") if self.until <= time.monotonic() else None
        if len(self.flights) >= PIPELINE or len(self.flights) + len(self.storing) > PIPELINE:
            return None
        last = self.flights[-1].tag if self.flights else self.storing[-1][0]
        got = last.answer.control()
        if got is None or got.get(wire.MORE) is not True or not _name_ok(got.get(LAST)):
            return None
        return 0.0, str(got[LAST])

    def request(self, timeouts: Any, wait: float, after: str, count: int, max_bytes: int) -> Transfer:
        """Start a fetch: confirm, give receipts, ask for up to count messages (after a name)."""
        from . import transport as tp

        cfg = self.spool.config
        ans = _Answer(self.spool, cfg.max_message_size, min(ENTRY_FILES, _open_files() // (4 * PIPELINE)))
        flight = _Flight(ans, wait, after, self.results, self.receipts)
        self.results, self.receipts = [], []
        body: dict[str, Any] = {wire.WAIT: wait, wire.MAX: count, wire.MAX_BYTES: max_bytes,
                                wire.RESULTS: flight.results, wire.RECEIPTS: flight.receipts}  # fmt: skip
        if after:
            body[AFTER] = after
        t = tp.fetch(self.peer, json.dumps(body).encode(), self.spool.node, timeouts, ans.sink, wait)
        t.tag = flight
        self.flights.append(t)
        return t

    def finished(self, t: Transfer) -> None:
        """Take in an answer: store its messages durably (on the store thread, while the
        next answer streams in), or give what the request carried back on a failure."""
        self.flights.remove(t)
        flight: _Flight = t.tag
        ans = flight.answer
        self.error = t.error or ans.failed
        if not self.error and (ans.parts is None or not ans.parts.ended):
            self.error = "truncated answer; nothing stored"
        if not self.error:
            self.storing.append((flight, _store_thread().submit(self._store, ans)))
            return
        if t.code == 404:
            self.error += f" ({self.peer.name} holds no messages: an older dropr?)"
        self._lost(flight)

    def _store(self, ans: _Answer) -> list[dict[str, str]]:
        try:
            return ans.store(self.peer.name)
        finally:
            # the daemon's loop takes the results in; they went to in/: no queue to list
            self.spool.wakeups.resume_sender()

    def collect(self, timeout: float = 0.0) -> None:
        """Take in the stores that are done (waiting up to timeout for the first one)."""
        while self.storing:
            flight, fut = self.storing[0]
            try:
                results = fut.result(timeout)
            except TimeoutError:
                return
            except OSError as exc:
                self.storing.pop(0)
                self.error = f"cannot store what was fetched: {exc.strerror or exc}"
                self._lost(flight)
                continue
            self.storing.pop(0)
            self._took(flight, results)
            timeout = 0.0

    def _lost(self, flight: _Flight) -> None:
        """A request failed: give what it carried back for the next one, back off."""
        flight.answer.discard()
        self.results[:0], self.receipts[:0] = flight.results, flight.receipts
        self._failed()

    def _took(self, flight: _Flight, results: list[dict[str, str]]) -> None:
        """Note a stored answer: its results and asked receipts go with the next request."""
        assert flight.answer.parts is not None
        got = flight.answer.parts.got
        receipts = self._receipts(got.get(wire.ASK), flight.answer.origins.node)
        if results and self.summary is not None:
            stored = [r[wire.STATUS_KEY] for r in results if r[wire.STATUS_KEY] != wire.REFUSED]
            dup = stored.count(wire.DUPLICATE)
            self.summary.add(FETCHED, self.peer.name, len(stored), duplicate=dup)
        self.results += results
        self.receipts += receipts
        self.failures = 0
        if not flight.after:  # a request from the oldest: is there anything left?
            self.drained = not results and (not receipts or self.extra)
            self.extra = not results and bool(receipts)
        quick = time.monotonic() - flight.started < flight.wait / 2
        if flight.wait and not results and not receipts and quick:
            self.until = time.monotonic() + 1.0  # the holder could not hold it: do not spin

    def _receipts(self, asked: Any, holder: str) -> list[dict[str, str]]:
        """Return the inbox state of each message the holder asked about."""
        if not isinstance(asked, list):
            return []
        channels = self.spool.channels()
        out = []
        for a in asked:
            if not isinstance(a, dict) or not _name_ok(a.get(wire.NAME)):
                continue
            name, origin = str(a[wire.NAME]), a.get(wire.ORIGIN) or holder
            try:
                m.check_name(origin)
            except (TypeError, ValueError):
                continue
            prefix, ident = m.split_out_name(name)
            state, why = self.spool.in_status(origin, ident, prefix, channels)
            r = {wire.NAME: name, wire.STATE: state}
            if why:
                r[wire.REASON] = why
            out.append(r)
        return out

    def _failed(self) -> None:
        cfg = self.spool.config
        self.failures += 1
        delay = retry.backoff(self.failures - 1, cfg.backoff_min, cfg.backoff_max, jitter=0.5)
        self.until = time.monotonic() + delay
        log.warning("deferred fetch peer=%s reason=%s retry_in=%.1fs", self.peer.name, self.error, delay)


_STORE: ThreadPoolExecutor | None = None


def _store_thread() -> ThreadPoolExecutor:
    """The one thread that stores fetched answers: its syncs and links wait for the disk
    without the GIL, while the sender's thread parses the next answer."""
    global _STORE
    if _STORE is None:
        _STORE = ThreadPoolExecutor(1, thread_name_prefix="dropr-fetch-store")
    return _STORE


def _open_files() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class Fetches:
    """The holders a dropr-send fetches from, run on the sender's pool (hooks in sender.py).

    The daemon keeps one fetch in flight per holder, each held up to FETCH_WAIT_MAX;
    --once fetches in rounds that do not wait, until a holder has nothing more."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender
        spool: Spool = sender.spool
        names = sender.opts.fetch or (
            [] if sender.opts.once else [p.name for p in spool.config.peers.values() if p.fetch]
        )
        self.runs = {n: Fetcher(spool.config.peers[n], spool, sender.summary) for n in names}

    @property
    def inflight(self) -> int:
        """Fetches in flight, over all holders."""
        if not self.runs:  # asked once per peer in each pass of the sender: most fetch nothing
            return 0
        return sum(len(f.flights) for f in self.runs.values())

    def start(self, wait: float = float(wire.FETCH_WAIT_MAX)) -> None:
        """Start the fetches that may start now: one held per holder, one more while it has more."""
        for f in self.runs.values():
            while not self.sender.stopping and (nxt := f.next_request(wait)) is not None:
                count = 0 if _low_on_disk(f.spool) else self.sender.opts.batch  # 0: only confirm
                t = f.request(self.sender.timeouts, nxt[0], nxt[1], count, self.sender.opts.batch_bytes)
                self.sender.pool.add(t)

    def finished(self, t: Transfer) -> None:
        """Take in a fetch that ended."""
        self.runs[t.peer.name].finished(t)

    def close(self) -> None:
        """Drop what the answers in flight wrote (the pool aborts them next): their
        messages stay queued at the holder; stores already under way finish."""
        for f in self.runs.values():
            for t in f.flights:
                t.tag.answer.discard()

    def sleep_for(self, sleep: float) -> float:
        """Return how long the daemon may sleep before a fetch is due again."""
        now = time.monotonic()
        for f in self.runs.values():
            if f.storing:
                sleep = min(sleep, 0.01)  # the store thread wakes the sender; this in case
            elif not f.flights:
                sleep = min(sleep, f.until - now)
        return sleep

    def run_once(self) -> int:
        """Fetch from each holder, without holding, until it has nothing more; 0, or 75 if
        one failed."""
        from .errors import EX_OK, EX_TEMPFAIL

        for f in self.runs.values():
            f.drained, f.extra = False, False
        while not self.sender.stopping:
            for f in self.runs.values():
                if f.error and not f.flights or f.drained:
                    f.until = float("inf")  # done with it, or it failed: no more requests
            self.start(0.0)
            if self.inflight:
                self.sender.drive(0.5)
            elif any(f.storing for f in self.runs.values()):
                next(f for f in self.runs.values() if f.storing).collect(0.5)
            else:
                break
        failed = [f.peer.name for f in self.runs.values() if not f.drained]
        if failed:
            log.info("deferred fetch peers=%s", ",".join(failed))
            return EX_TEMPFAIL
        return EX_OK


def _low_on_disk(spool: Spool) -> bool:
    from .spool import free_bytes

    try:
        low = free_bytes(spool.root) < spool.config.min_free
    except OSError:
        return False
    if low:
        log.warning("deferred fetch reason=low on disk space: confirming only")
    return low


def check_fetch(spool: Spool, names: list[str]) -> None:
    """Reject --fetch names that are no peer with fetch = true, before anything is sent."""
    from .errors import UsageError

    peers = spool.config.peers
    for name in names:
        if name not in peers or not peers[name].fetch:
            known = ", ".join(sorted(n for n, p in peers.items() if p.fetch)) or "none"
            what = "no configured peer" if name not in peers else "a peer without fetch = true"
            raise UsageError(
                f"bad --fetch {name!r}: {what} (peers with fetch = true: {known}); see 'dropr-send --help'"
            )
