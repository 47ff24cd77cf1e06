"""The WSGI app peers deliver to: ``make_app(spool, config)``.

Uploads are parsed as they stream in (formdata.py, python-multipart's callbacks) and each part is
written straight into the spool while its CRC is computed (``Spool.open_part``:
a generated id's file is its rcv/ index entry, other files go to tmp/), so memory
stays flat for any size. Only when the whole request has arrived and every
part checked are the good ones committed, through ``Spool.store``; a truncated
or malformed request stores nothing.

Requests go to their handler by one table, ROUTES (path -> method -> handler). The
wire's words, routes and headers are protocol.py's. A bug of ours is a 500 with its
traceback in the log, never a 400 that blames the client.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import message as m
from . import protocol as wire
from .config import Config
from .errors import disk_full
from .spool import Part, Spool, free_bytes

if TYPE_CHECKING:
    from .metrics import Meter

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
READ = 1 << 20
MAX_PARTS = 100_000
MAX_STATUS_BODY = 4 << 20
READ_TIMEOUT = 60.0  # default: a request body that sends nothing this long (seconds) is dropped
ENTRIES_MAX = 1024  # most parts of one upload whose descriptors stay open until the store
DISPOSITION = wire.PART_DISPOSITION.lower().encode()  # as a part header's name is compared


class HTTPError(Exception):
    """A whole-request refusal: status line, reason, and the headers its status calls for."""

    def __init__(self, status: str, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class _Part:
    __slots__ = (
        "filename", "hbuf", "header", "fd", "w", "tmp", "entry", "size", "crc", "refused", "hname", "hval",
        "origin", "result",
    )  # fmt: skip

    def __init__(self) -> None:
        self.filename = ""
        self.hbuf = bytearray()
        self.header: m.Header | None = None
        self.fd = -1
        self.w: Part | None = None  # while being written (Spool.open_part)
        self.tmp = ""
        self.entry = False  # written as its rcv/ entry: fd stays open (Spool.open_part)
        self.size = 0
        self.crc = 0
        self.refused = ""
        self.hname = b""
        self.hval = b""
        self.origin = ""  # the origin it is stored under: the client's, or its header's o=
        self.result = ""  # the store's answer (commit)


class Upload:
    """One multipart upload being parsed into files in the spool (Spool.open_part).

    A part whose header names another origin (o=, a relayed message) is stored under that
    origin if ``trusted`` (the client is in serve.trust_relays, or there are no tokens),
    else refused. relay.RelayUpload keeps the parsing and changes vet, open and commit."""

    def __init__(
        self,
        spool: Spool,
        origin: str,
        max_size: int,
        boundary: bytes,
        entries: int = 0,
        *,
        trusted: bool = False,
    ) -> None:
        from .formdata import FormParser

        self.spool = spool
        self.origin = origin
        self.trusted = trusted
        self.max_size = max_size
        self.entries = entries  # how many more parts may be written as their rcv/ entry
        self.parts: list[_Part] = []
        self.cur: _Part | None = None
        self.ended = False
        callbacks: Any = {
            "on_part_begin": self._begin,
            "on_header_field": self._hfield,
            "on_header_value": self._hvalue,
            "on_header_end": self._hend,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }
        self.parser = FormParser(boundary, callbacks)  # python-multipart's calls, faster (formdata.py)

    def feed(self, data: bytes | bytearray) -> None:
        """Parse the next chunk of the body."""
        self.parser.write(data)

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise HTTPError(wire.HTTP_TOO_LARGE, f"more than {MAX_PARTS} messages in one request")
        self.cur = _Part()
        self.parts.append(self.cur)

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        assert self.cur is not None
        self.cur.hname += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        assert self.cur is not None
        self.cur.hval += data[start:end]

    def _hend(self) -> None:
        p = self.cur
        assert p is not None
        if p.hname.lower() == DISPOSITION:
            # Parsed only when needed (a refusal names the part): the header id rules.
            p.filename = p.hval.decode("utf-8", "replace")
        p.hname = b""
        p.hval = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        p = self.cur
        assert p is not None
        if p.refused:
            return
        chunk = memoryview(data)[start:end]  # no copy of the payload
        if p.header is None:
            need = m.HEADER_SIZE - len(p.hbuf)
            p.hbuf += chunk[:need]
            chunk = chunk[need:]
            if len(p.hbuf) < m.HEADER_SIZE:
                return
            try:
                p.header = m.Header.parse(bytes(p.hbuf))
            except ValueError as exc:
                p.refused = str(exc)
                return
            if p.header.size > self.max_size:
                p.refused = f"too large: {p.header.size} bytes, limit {self.max_size}"
                return
            p.origin, p.refused = self.vet(p.header)
            if p.refused:
                return
            p.w = self.open(p.origin, p.header, self.entries > 0)
            p.tmp, p.fd, p.entry = p.w.path, p.w.fd, p.w.entry
            self.entries -= p.entry
        if not chunk:
            return
        p.size += len(chunk)
        if p.size > p.header.size:
            p.refused = f"payload longer than the {p.header.size} bytes its header says"
            self._drop(p)
            return
        p.crc = m.crc32(chunk, p.crc)
        assert p.w is not None
        p.w.write(chunk)

    def _end(self) -> None:
        p = self.cur
        assert p is not None
        self._close(p)
        if p.refused:
            self._drop(p)
        elif p.header is None:
            p.refused = "truncated message header"
        elif p.size != p.header.size:
            p.refused = f"payload is {p.size} bytes, header says {p.header.size}"
            self._drop(p)
        elif p.crc != p.header.crc:
            p.refused = "checksum mismatch"
            self._drop(p)
        self.cur = None

    def _finished(self) -> None:
        self.ended = True

    def vet(self, hdr: m.Header) -> tuple[str, str]:
        """Return (the origin to store a part under, "") or ("", why it is refused)."""
        if hdr.origin is None or hdr.origin == self.origin:
            return self.origin, ""
        if self.trusted:
            return hdr.origin, ""
        node = self.spool.node
        return "", f"{node} does not take messages relayed by {self.origin}: add it to serve.trust_relays"

    def open(self, origin: str, hdr: m.Header, entry: bool) -> Part:
        """Open the file a part's payload is written to."""
        return self.spool.open_part(origin, hdr, entry=entry)

    def commit(self) -> None:
        """Store the good parts, by origin (Spool.store is per origin); set each one's result."""
        by_origin: dict[str, list[_Part]] = {}
        for p in self.parts:
            if not p.refused and p.header and p.tmp:
                by_origin.setdefault(p.origin, []).append(p)
        for origin, parts in by_origin.items():
            stored = self.spool.store(origin, [(p.tmp, p.header, p.fd) for p in parts if p.header])
            for p, result in zip(parts, stored, strict=True):
                p.result = result

    @staticmethod
    def _close(p: _Part) -> None:
        """Close a part's tmp file: written out, not synced (the store syncs). An entry's
        descriptor stays open for the store (release closes it)."""
        if p.w is not None:
            w, p.w = p.w, None
            try:
                w.close()
            finally:
                p.fd = w.fd  # -1, or an entry's, still open

    def _drop(self, p: _Part) -> None:
        try:
            self._close(p)
        except OSError:
            pass  # the file goes anyway
        if p.tmp:
            try:
                self.spool.unreceive(p.origin or self.origin, p.tmp, p.fd)  # closed but for an entry's
            finally:
                p.tmp = ""
                self._release(p)

    @staticmethod
    def _release(p: _Part) -> None:
        if p.fd >= 0:
            fd, p.fd = p.fd, -1
            os.close(fd)

    def discard(self) -> None:
        """Remove every file of this upload that is not in the inbox."""
        for p in self.parts:
            self._drop(p)

    def release(self) -> None:
        """Close the descriptors kept open for the store."""
        for p in self.parts:
            self._release(p)


TIMED_OUT = (BlockingIOError, TimeoutError)  # a read past its timeout: SO_RCVTIMEO (EAGAIN), or TLS's


def set_read_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking socket's reads give up after ``seconds`` without data (SO_RCVTIMEO:
    a recv then fails with EAGAIN; 0: never). gunicorn's setblocking leaves it in place."""
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)


class _ReadTimeout:
    """Give up a request body after ``seconds`` without data: answer 408, store nothing.

    A client that stops sending in the middle of a request (a cut link, a host that
    died) held its thread for good: the reads wait for data that never comes, and a
    worker whose threads all wait serves nobody. gunicorn gives the socket no timeout.
    The timeout stays on the socket after the block, for the connection's next request
    (dropr-serve's worker sets it on every connection before its first request, too).
    """

    __slots__ = ("environ", "sock", "seconds")

    def __init__(self, environ: dict[str, Any], seconds: float) -> None:
        sock = environ.get("gunicorn.socket")
        self.environ = environ
        self.sock = sock if isinstance(sock, socket.socket) and seconds > 0 else None
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.sock is not None:
            set_read_timeout(self.sock, self.seconds)

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if isinstance(exc, TIMED_OUT):
            body: Any = self.environ.get("wsgi.input")
            if getattr(body, "failed", None) is False:
                body.failed = True  # gunicorn then closes the connection instead of draining it
            why = f"no data for {self.seconds:g} s; nothing stored"
            raise HTTPError(wire.HTTP_TIMEOUT, why) from None


def _read_body(environ: dict[str, Any], up: Upload) -> None:
    """Feed the request body to the upload parser, straight from gunicorn's socket if we can."""
    from . import _gunicorn

    if _gunicorn.read_body(environ, up.feed):
        return
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    left = int(length) if length else -1
    while left != 0:
        chunk = stream.read(READ if left < 0 else min(READ, left))
        if not chunk:
            break
        if left > 0:
            left -= len(chunk)
        up.feed(chunk)


def _filename(disposition: str) -> str:
    from python_multipart.multipart import parse_options_header

    # As bytes: the parser takes them as latin-1, as it must for a str, and any text is
    # bytes (a str with a character past U+00FF, as a filename in UTF-8 is, raised in it)
    _, params = parse_options_header(disposition.encode("utf-8", "surrogateescape"))
    return str(params.get(b"filename", b"").decode("utf-8", "replace"))


def _entry_budget(threads: int) -> int:
    """How many parts of one upload may keep a descriptor open until the store: half the
    open-file limit shared by the threads that upload at once, at most ENTRIES_MAX. The
    parts beyond go to tmp files, which are closed as soon as they are written (two
    directory operations more per message). A 64th of the limit, whatever the threads,
    was 312 under a limit of 20,000: 188 of every batch of 500 went through tmp/."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ENTRIES_MAX if soft == resource.RLIM_INFINITY else min(ENTRIES_MAX, soft // (2 * threads))


class Streamed:
    """A 200 answer whose body is not JSON (v1/fetch's multipart): its headers and chunks."""

    __slots__ = ("headers", "chunks")

    def __init__(self, headers: list[tuple[str, str]], chunks: Iterable[bytes]) -> None:
        self.headers = headers
        self.chunks = chunks


# A JSON body, (bytes, content type) (/metrics), or a body streamed as it is sent (v1/fetch)
Answer = dict[str, Any] | tuple[bytes, str] | Streamed
Handler = Callable[["App", dict[str, Any]], Answer]
# Answers not logged as refusals: the common probes, and a 500 (logged with its traceback).
QUIET = (wire.HTTP_UNAUTHORIZED, wire.HTTP_NOT_FOUND, wire.HTTP_NOT_ALLOWED, wire.HTTP_INTERNAL)
TRUNCATED = "truncated upload; nothing stored"
MALFORMED = f"malformed upload: not valid {wire.FORM_DATA}; nothing stored"
BAD_FRAMING = "malformed request body: bad chunked encoding; nothing stored"
INTERNAL = "internal error in the receiver; see its log"  # no "nothing stored": it may follow a store


class App:
    """The WSGI application: answers each request by the handler ROUTES gives its path
    and method; a handler returns the body of a 200 answer or raises HTTPError. The meter
    (metrics.py) counts every answer, and the messages of every upload."""

    def __init__(
        self, spool: Spool, cfg: Config, *, entries: int, read_timeout: float, threads: int = 1
    ) -> None:
        self.spool = spool
        self.cfg = cfg
        self.tokens = dict(cfg.tokens)
        self.entries = entries  # see _entry_budget
        self.read_timeout = read_timeout
        self.meter: Meter | None = None  # make_app's
        self.threads = threads  # requests served at once per process (a held fetch takes one)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        began = perf_counter()
        method = environ.get("REQUEST_METHOD", wire.GET)
        path = environ.get("PATH_INFO", "/").rstrip("/")
        headers = [(wire.CONTENT_TYPE, wire.JSON)]
        try:
            answer = _route(path, method)(self, environ)
            if isinstance(answer, Streamed):
                if self.meter is not None:
                    self.meter.request(path, wire.HTTP_OK, began)
                start_response(wire.HTTP_OK, answer.headers)
                return answer.chunks
            body, code = answer, wire.HTTP_OK
        except OSError:
            raise  # the connection's, as the body is read: gunicorn closes it (quietly if gone)
        except Exception as exc:
            refusal = exc if isinstance(exc, HTTPError) else _unexpected(exc, path, method)
            code, body = refusal.status, {wire.ERROR: refusal.reason}
            headers += refusal.headers
            if code not in QUIET:
                log.info("refused request path=%s status=%s reason=%s", path, code[:3], refusal.reason)
        if isinstance(body, tuple):
            raw, headers[0] = body[0], (wire.CONTENT_TYPE, body[1])
        else:
            raw = json.dumps(body).encode()
        headers.append((wire.CONTENT_LENGTH, str(len(raw))))
        if code == wire.HTTP_UNAVAILABLE:
            headers.append((wire.RETRY_AFTER, wire.RETRY_AFTER_SECONDS))
        if self.meter is not None:
            self.meter.request(path, code, began)
        start_response(code, headers)
        return [] if method == wire.HEAD else [raw]  # HEAD: the headers of GET's answer, no body

    def origin(self, environ: dict[str, Any]) -> str:
        """Return the node a request comes from: its token's, else the one it names."""
        claimed = environ.get(wire.ORIGIN_ENVIRON, "")
        if self.tokens:
            scheme = wire.BEARER.lower() + " "
            auth = environ.get(wire.AUTH_ENVIRON, "")
            token = auth[len(scheme) :].strip() if auth[: len(scheme)].lower() == scheme else ""
            node = None
            for tok, name in self.tokens.items():  # every one: the time taken tells nothing
                if hmac.compare_digest(tok.encode(), token.encode()):
                    node = name
            if node is None:  # RFC 6750 3: the scheme to use, and what was wrong with the token
                why, challenge = ("unknown", wire.INVALID_TOKEN) if token else ("no", wire.BEARER)
                headers = ((wire.WWW_AUTHENTICATE, challenge),)
                raise HTTPError(wire.HTTP_UNAUTHORIZED, f"{why} bearer token", headers)
            if claimed and claimed != node:
                raise HTTPError(wire.HTTP_FORBIDDEN, f"token of {node!r} cannot deliver as {claimed!r}")
            return node
        try:
            return m.check_name(claimed, wire.ORIGIN_HEADER)
        except ValueError as exc:
            raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad {wire.ORIGIN_HEADER} {claimed!r}: {exc}") from None

    def trusts(self, client: str) -> bool:
        """Whether a client's relayed messages keep their origin (o=): serve.trust_relays, or no tokens."""
        return not self.tokens or client in self.cfg.trust_relays

    def messages(self, environ: dict[str, Any]) -> dict[str, Any]:
        """POST v1/messages: store the good parts of an upload; answer for each part."""
        origin = self.origin(environ)
        trusted = self.trusts(origin)
        return self.upload(
            environ,
            origin,
            lambda b: Upload(self.spool, origin, self.cfg.max_message_size, b, self.entries, trusted=trusted),
        )

    def upload(self, environ: dict[str, Any], origin: str, make: Callable[[bytes], Upload]) -> dict[str, Any]:
        """Parse an upload made by make(boundary), commit its good parts; answer for each part."""
        boundary = _boundary(environ.get("CONTENT_TYPE", ""))
        if free_bytes(self.spool.root) < self.cfg.min_free:
            raise HTTPError(wire.HTTP_UNAVAILABLE, "low on disk space; try later")
        from python_multipart.exceptions import FormParserError

        try:
            up = make(boundary)
        except FormParserError:  # a boundary the parser cannot take: longer than it allows
            raise HTTPError(wire.HTTP_BAD_REQUEST, f"{wire.FORM_DATA} boundary too long") from None
        try:
            self._receive(environ, up, origin)
        finally:
            up.release()
        results = _results(up, origin)
        if self.meter is not None:
            stored = [p.result for p in up.parts if p.result and not p.refused]
            self.meter.upload((p.size for p in up.parts), stored, results)
        return {wire.RESULTS: results}

    def _receive(self, environ: dict[str, Any], up: Upload, origin: str) -> None:
        """Read the body into up, then commit its good parts; on any failure remove its files."""
        try:
            with _ReadTimeout(environ, self.read_timeout):
                _read_body(environ, up)
            if not up.ended:
                raise HTTPError(wire.HTTP_BAD_REQUEST, TRUNCATED)
            # every part has ended (_end closed it): only an entry's descriptor is open
            up.commit()
        except HTTPError:
            up.discard()
            raise
        except Exception as exc:
            up.discard()
            refusal = _upload_refusal(exc, origin)
            if refusal is None:
                raise  # not malformed multipart nor I/O: App.__call__ answers it (_unexpected)
            raise refusal from None

    def status(self, environ: dict[str, Any]) -> dict[str, Any]:
        """POST v1/status: the state of each id received from this origin."""
        origin = self.origin(environ)
        ids, prefixes, origins = _status_request(self.status_body(environ))
        results = {}
        channels = self.spool.channels()  # once per poll, not per id
        trusted = self.trusts(origin)
        for ident, prefix, first in zip(ids, prefixes, origins, strict=True):
            if not isinstance(ident, str):
                continue
            if not isinstance(prefix, str) or len(prefix) != 14 or not prefix.isalnum():
                prefix = ""
            try:
                m.check_id(ident)
            except ValueError:
                results[ident] = {wire.STATE: wire.UNKNOWN, wire.REASON: "bad id"}
                continue
            first = first if isinstance(first, str) and first else origin  # "": the client's own
            if first != origin and not (trusted and _is_name(first)):  # stored so only for a trusted relay
                results[ident] = {wire.STATE: wire.UNKNOWN, wire.REASON: "relayed by an untrusted client"}
                continue
            state, reason = self.spool.in_status(first, ident, prefix, channels)
            results[ident] = {wire.STATE: state, wire.REASON: reason} if reason else {wire.STATE: state}
        return {wire.RESULTS: results}

    def status_body(self, environ: dict[str, Any]) -> bytes:
        """Read the body of a status poll, or raise the 413 or 408."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_STATUS_BODY:
            raise HTTPError(wire.HTTP_TOO_LARGE, "status request too large")
        with _ReadTimeout(environ, self.read_timeout):
            return bytes(environ["wsgi.input"].read(length))

    def relay(self, environ: dict[str, Any]) -> dict[str, Any]:
        """POST v1/relay: queue each message for the destination X-Dropr-To (relay.py)."""
        from . import relay

        return relay.upload(self, environ)

    def relay_status(self, environ: dict[str, Any]) -> dict[str, Any]:
        """POST v1/relay/status: the relay's outbox state of each id (relay.py)."""
        from . import relay

        return relay.status(self, environ)

    def health(self, environ: dict[str, Any]) -> dict[str, Any]:
        """GET v1/health: this node's name (no origin needed)."""
        return {wire.OK: True, wire.NODE: self.spool.node}

    def metrics(self, environ: dict[str, Any]) -> tuple[bytes, str]:
        """GET metrics: the Prometheus text format, to loopback clients or a metrics token."""
        if self.meter is None:
            raise HTTPError(wire.HTTP_NOT_FOUND, f"no such endpoint '/{wire.METRICS}'")
        return self.meter.answer(environ)


def _fetch(app: App, environ: dict[str, Any]) -> Streamed:
    """POST v1/fetch: a held peer's messages (fetch.py, loaded at the first fetch)."""
    from .fetch import answer

    return answer(app, environ)


# Every route, read top to bottom: path (PATH_INFO without a trailing "/") -> method -> handler.
# A path not here is answered 404; a path here with a method not listed, 405.
ROUTES: dict[str, dict[str, Handler]] = {
    "/" + wire.MESSAGES: {wire.POST: App.messages},
    "/" + wire.STATUS: {wire.POST: App.status},
    "/" + wire.HEALTH: {wire.GET: App.health, wire.HEAD: App.health},
    "/" + wire.FETCH: {wire.POST: _fetch},
    "/" + wire.RELAY: {wire.POST: App.relay},
    "/" + wire.RELAY_STATUS: {wire.POST: App.relay_status},
    "": {wire.GET: App.health, wire.HEAD: App.health},  # the base URL itself, as a probe asks
    "/" + wire.METRICS: {wire.GET: App.metrics, wire.HEAD: App.metrics},  # dropr-serve.8, METRICS
}


def _route(path: str, method: str) -> Handler:
    """Return the handler of a request, or raise the 404 or 405 that answers it."""
    methods = ROUTES.get(path)
    if methods is None:
        raise HTTPError(wire.HTTP_NOT_FOUND, f"no such endpoint {path!r}")
    handler = methods.get(method)
    if handler is None:
        allow = ", ".join(methods)
        why = f"{method} is not allowed on {path or '/'}, only {allow}"
        raise HTTPError(wire.HTTP_NOT_ALLOWED, why, ((wire.ALLOW, allow),))
    return handler


def _unexpected(exc: Exception, path: str, method: str) -> HTTPError:
    """Return the answer to an exception no handler turned into one: a 400 for a body whose
    chunked framing the HTTP server refused as we read it (gunicorn raises its ParseException
    into the read), else a 500 for a bug of ours, logged with its traceback; never a 400
    that blames the client for it."""
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # another WSGI server
        pass
    else:
        if isinstance(exc, ParseException):
            return HTTPError(wire.HTTP_BAD_REQUEST, BAD_FRAMING)
    log.exception("error path=%s method=%s", path, method)
    return HTTPError(wire.HTTP_INTERNAL, INTERNAL)


def _boundary(ctype: str) -> bytes:
    """Return the boundary of a multipart/form-data Content-Type, or raise the 400."""
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(ctype)
    boundary = params.get(b"boundary")
    if kind != wire.FORM_DATA.encode() or not boundary:
        raise HTTPError(wire.HTTP_BAD_REQUEST, f"expected {wire.FORM_DATA} with a boundary")
    return boundary


def _upload_refusal(exc: Exception, origin: str) -> HTTPError | None:
    """Return the answer to an upload that failed with exc; None for a bug of ours."""
    from python_multipart.exceptions import FormParserError

    if _ended_early(exc):
        return HTTPError(wire.HTTP_BAD_REQUEST, TRUNCATED)
    if isinstance(exc, OSError):
        if disk_full(exc):
            return HTTPError(wire.HTTP_UNAVAILABLE, "disk full; try later")
        log.error("error origin=%s reason=%s", origin, exc)
        why = f"I/O error: {exc.strerror}" if exc.strerror else "I/O error"
        return HTTPError(wire.HTTP_UNAVAILABLE, f"{why}; try later")
    if isinstance(exc, FormParserError):  # the parser's detail is in its own log line
        return HTTPError(wire.HTTP_BAD_REQUEST, MALFORMED)
    return None


def _ended_early(exc: Exception) -> bool:
    """Tell whether exc says a request body ended before its end: the client went away
    (gunicorn's NoMoreData, an OSError with no errno, raised by a chunked body's reader)."""
    try:
        from gunicorn.http.errors import NoMoreData
    except ImportError:  # another WSGI server
        return False
    return isinstance(exc, NoMoreData)


def _results(up: Upload, origin: str) -> list[dict[str, str]]:
    """Return the answer for each part of a stored upload, in order: the store's, or refused."""
    results = []
    debug = log.isEnabledFor(logging.DEBUG)  # once per request: no logging call per message
    for p in up.parts:
        ident = p.header.ident if p.header else _filename(p.filename)
        if p.refused or p.header is None or not p.tmp:
            results.append({wire.ID: ident, wire.STATUS_KEY: wire.REFUSED, wire.REASON: p.refused})
            log.warning("refused id=%s origin=%s reason=%s", ident, origin, p.refused)
        else:
            st = p.result
            results.append({wire.ID: ident, wire.STATUS_KEY: st})
            if debug:
                log.debug("%s id=%s origin=%s channel=%s", st, ident, origin, p.header.channel)
    return results


def _is_name(text: str) -> bool:
    """Whether text is a valid node name (an origin a status poll may name)."""
    try:
        m.check_name(text)
    except ValueError:
        return False
    return True


def _status_request(raw: bytes) -> tuple[list[Any], list[Any], list[Any]]:
    """Return the ids of a status poll, their name prefixes and first origins ("" where none),
    or raise the 400."""
    try:
        data = json.loads(raw or b"{}")
    except RecursionError:
        raise HTTPError(wire.HTTP_BAD_REQUEST, "bad status request: JSON nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPError(wire.HTTP_BAD_REQUEST, "bad status request: not JSON") from None
    ids = data.get(wire.IDS) if isinstance(data, dict) else None
    if not isinstance(ids, list):
        want = f'{{"{wire.IDS}": [...]}}'
        raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad status request: expected a JSON object {want}")
    # optional: the sender's "{p}{created}" name prefix of each id, a lookup hint; and the
    # first origin of each relayed id ("" for the client's own)
    lists = []
    for key in (wire.PREFIXES, wire.ORIGINS):
        value = data.get(key)
        if value is None:
            value = [""] * len(ids)
        elif not isinstance(value, list) or len(value) != len(ids):  # a client's bug: say so
            why = f"bad status request: {key} must be a list as long as {wire.IDS}"
            raise HTTPError(wire.HTTP_BAD_REQUEST, why)
        lists.append(value)
    return ids, lists[0], lists[1]


def make_app(
    spool: Spool, config: Config | None = None, *, threads: int = 32, read_timeout: float = READ_TIMEOUT
) -> WSGIApp:
    """Return the WSGI application that stores deliveries into spool's inbox.

    threads: how many requests the process serves at once (sizes the open files one
    upload may keep; see _entry_budget). read_timeout: seconds without data after which
    a request body is given up (408, nothing stored), on gunicorn; 0: wait for ever."""
    entries = _entry_budget(max(1, threads))
    app = App(spool, config or spool.config, entries=entries, read_timeout=read_timeout, threads=threads)
    from .metrics import Meter

    app.meter = Meter(spool, app.cfg.metrics_tokens, ROUTES)
    # Load now what the first upload needs, so that it does not pay for the imports.
    import fcntl  # noqa: F401

    import python_multipart.exceptions  # noqa: F401
    import python_multipart.multipart  # noqa: F401

    from . import formdata  # noqa: F401

    return app
