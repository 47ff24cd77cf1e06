"""The WSGI app peers deliver to: ``make_app(spool, config)``.

Uploads are parsed as they stream in (python-multipart) and each part is
written straight into the spool while its CRC is computed (``Spool.receive_file``:
a generated id's file is its rcv/ index entry, other files go to tmp/), so memory
stays flat for any size. Only when the whole request has arrived and every
part checked are the good ones committed, through ``Spool.store``; a truncated
or malformed request stores nothing.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from . import message as m
from .config import Config
from .spool import DIRECT_MIN, DirectWriter, Spool, free_bytes, write_all

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
READ = 1 << 20
MAX_PARTS = 100_000
MAX_STATUS_BODY = 4 << 20
READ_TIMEOUT = 60.0  # default: a request body that sends nothing this long (seconds) is dropped
ENTRIES_MAX = 1024  # most parts of one upload whose descriptors stay open until the store


class HTTPError(Exception):
    """A whole-request refusal: status line and reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Part:
    __slots__ = (
        "filename", "hbuf", "header", "fd", "big", "tmp", "entry", "size", "crc", "refused", "hname", "hval",
    )  # fmt: skip

    def __init__(self) -> None:
        self.filename = ""
        self.hbuf = bytearray()
        self.header: m.Header | None = None
        self.fd = -1
        self.big: DirectWriter | None = None
        self.tmp = ""
        self.entry = False  # written as its rcv/ entry: fd stays open (Spool.receive_file)
        self.size = 0
        self.crc = 0
        self.refused = ""
        self.hname = b""
        self.hval = b""


class Upload:
    """One multipart upload being parsed into files in the spool (Spool.receive_file)."""

    def __init__(self, spool: Spool, origin: str, max_size: int, boundary: bytes, entries: int = 0) -> None:
        from python_multipart.multipart import MultipartParser

        self.spool = spool
        self.origin = origin
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
        self.parser = MultipartParser(boundary, callbacks)

    def feed(self, data: bytes | bytearray) -> None:
        """Parse the next chunk of the body."""
        self.parser.write(data)  # type: ignore[arg-type]  # it needs find() and indexing only

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise HTTPError("413 Content Too Large", f"more than {MAX_PARTS} messages in one request")
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
        if p.hname.lower() == b"content-disposition":
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
            if p.header.size >= DIRECT_MIN:
                p.tmp = self.spool.rcv_tmp_name(self.origin, p.header.ident)
                p.big = DirectWriter(p.tmp)
            else:
                p.tmp, p.fd, p.entry = self.spool.receive_file(self.origin, p.header, entry=self.entries > 0)
                self.entries -= p.entry
        if not chunk:
            return
        p.size += len(chunk)
        if p.size > p.header.size:
            p.refused = f"payload longer than the {p.header.size} bytes its header says"
            self._drop(p)
            return
        p.crc = m.crc32(chunk, p.crc)
        if p.big is not None:
            p.big.write(chunk)
        else:
            write_all(p.fd, chunk)

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

    @staticmethod
    def _close(p: _Part) -> None:
        """Close a part's tmp file: written out, not synced (the store syncs). An entry's
        descriptor stays open for the store (release closes it)."""
        if p.fd >= 0 and not p.entry:
            fd, p.fd = p.fd, -1
            os.close(fd)
        if p.big is not None:
            big, p.big = p.big, None
            big.close()

    def _drop(self, p: _Part) -> None:
        try:
            self._close(p)
        except OSError:
            pass  # the file goes anyway
        if p.tmp:
            try:
                self.spool.unreceive(self.origin, p.tmp, p.fd)  # closed but for an entry's
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
            raise HTTPError("408 Request Timeout", why) from None


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

    _, params = parse_options_header(disposition)
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


def make_app(
    spool: Spool, config: Config | None = None, *, threads: int = 32, read_timeout: float = READ_TIMEOUT
) -> WSGIApp:
    """Return the WSGI application that stores deliveries into spool's inbox.

    threads: how many requests the process serves at once (sizes the open files one
    upload may keep; see _entry_budget). read_timeout: seconds without data after which
    a request body is given up (408, nothing stored), on gunicorn; 0: wait for ever."""
    cfg = config or spool.config
    tokens = dict(cfg.tokens)
    entries = _entry_budget(max(1, threads))
    # Load now what the first upload needs, so that it does not pay for the imports.
    import fcntl  # noqa: F401

    import python_multipart.multipart  # noqa: F401

    def origin_of(environ: dict[str, Any]) -> str:
        claimed = environ.get("HTTP_X_DROPR_ORIGIN", "")
        if tokens:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            node = None
            for tok, name in tokens.items():
                if hmac.compare_digest(tok.encode(), token.encode()):
                    node = name
            if node is None:
                raise HTTPError("401 Unauthorized", "unknown or missing bearer token")
            if claimed and claimed != node:
                raise HTTPError("403 Forbidden", f"token of {node!r} cannot deliver as {claimed!r}")
            return node
        try:
            return m.check_name(claimed, "X-Dropr-Origin")
        except ValueError as exc:
            raise HTTPError("400 Bad Request", f"bad X-Dropr-Origin {claimed!r}: {exc}") from None

    def messages(environ: dict[str, Any]) -> dict[str, Any]:
        origin = origin_of(environ)
        ctype = environ.get("CONTENT_TYPE", "")
        from python_multipart.multipart import parse_options_header

        kind, params = parse_options_header(ctype)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise HTTPError("400 Bad Request", "expected multipart/form-data with a boundary")
        if free_bytes(spool.root) < cfg.min_free:
            raise HTTPError("503 Service Unavailable", "low on disk space; try later")
        up = Upload(spool, origin, cfg.max_message_size, boundary, entries)
        try:
            with _ReadTimeout(environ, read_timeout):
                _read_body(environ, up)
            if not up.ended:
                raise HTTPError("400 Bad Request", "truncated upload; nothing stored")
            # every part has ended (_end closed it): only an entry's descriptor is open
            stored = spool.store(
                origin, [(p.tmp, p.header, p.fd) for p in up.parts if not p.refused and p.header and p.tmp]
            )
        except HTTPError:
            up.discard()
            raise
        except OSError as exc:
            up.discard()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise HTTPError("503 Service Unavailable", "disk full; try later") from None
            log.error("error origin=%s reason=%s", origin, exc)
            raise HTTPError("503 Service Unavailable", f"I/O error: {exc.strerror}; try later") from None
        except Exception as exc:
            up.discard()
            raise HTTPError("400 Bad Request", f"malformed upload: {exc}") from None
        finally:
            up.release()
        answers = iter(stored)
        results = []
        for p in up.parts:
            ident = p.header.ident if p.header else _filename(p.filename)
            if p.refused or p.header is None or not p.tmp:
                results.append({"id": ident, "status": "refused", "reason": p.refused})
                log.warning("refused id=%s origin=%s reason=%s", ident, origin, p.refused)
            else:
                st = next(answers)
                results.append({"id": ident, "status": st})
                log.debug("%s id=%s origin=%s channel=%s", st, ident, origin, p.header.channel)
        return {"results": results}

    def status(environ: dict[str, Any]) -> dict[str, Any]:
        origin = origin_of(environ)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_STATUS_BODY:
            raise HTTPError("413 Content Too Large", "status request too large")
        with _ReadTimeout(environ, read_timeout):
            raw = environ["wsgi.input"].read(length)
        try:
            data = json.loads(raw or b"{}")
            ids = data["ids"]
            if not isinstance(ids, list):
                raise TypeError("ids must be a list")
            # optional: the sender's "{p}{created}" name prefix of each id, a lookup hint
            prefixes = data.get("prefixes")
            if not isinstance(prefixes, list) or len(prefixes) != len(ids):
                prefixes = [""] * len(ids)
        except (ValueError, KeyError, TypeError, RecursionError, AttributeError) as exc:
            raise HTTPError("400 Bad Request", f"bad status request: {type(exc).__name__}") from None
        results = {}
        channels = spool.channels()  # once per poll, not per id
        for ident, prefix in zip(ids, prefixes, strict=True):
            if not isinstance(ident, str):
                continue
            if not isinstance(prefix, str) or len(prefix) != 14 or not prefix.isalnum():
                prefix = ""
            try:
                m.check_id(ident)
            except ValueError:
                results[ident] = {"state": "unknown", "reason": "bad id"}
                continue
            state, reason = spool.in_status(origin, ident, prefix, channels)
            results[ident] = {"state": state, "reason": reason} if reason else {"state": state}
        return {"results": results}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/").rstrip("/")
        try:
            if path == "/v1/messages" and method == "POST":
                body = messages(environ)
            elif path == "/v1/status" and method == "POST":
                body = status(environ)
            elif path in ("/v1/health", "") and method in ("GET", "HEAD"):
                body = {"ok": True, "node": spool.node}
            elif path in ("/v1/messages", "/v1/status", "/v1/health"):
                raise HTTPError("405 Method Not Allowed", f"{method} is not allowed on {path}")
            else:
                raise HTTPError("404 Not Found", f"no such endpoint {path!r}")
            code = "200 OK"
        except HTTPError as exc:
            code, body = exc.status, {"error": exc.reason}
            if not code.startswith(("401", "404", "405")):
                log.info("refused request path=%s status=%s reason=%s", path, code[:3], exc.reason)
        raw = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(raw)))]
        if code.startswith("503"):
            headers.append(("Retry-After", "5"))
        start_response(code, headers)
        return [raw]

    return app
