"""dropr-serve's ties to gunicorn: its application, and every use of gunicorn's internals.

gunicorn's public interface is the application class, its settings and its hooks
(`Embedded`). The rest of this module reaches past it, into names gunicorn may change
in any release: the gthread worker's methods, attributes and call order (`DroprWorker`),
its request body reader and buffers (`read_body`), its socket reader's chunk
(`bigger_reads`), its parser factory and a connection's fields (`Doorman`), and the
blocking calls it makes on a TLS socket before each request (`TimedSSLSocket`).
`layout_changes` lists what no longer has the shape used here; at start-up, any change
makes dropr-serve run gunicorn's own gthread worker, and a request body whose reader is
not the expected one is read through WSGI: slower, same answers.
tests/unit/test_gunicorn_internals.py checks all of it against the installed gunicorn.
"""

from __future__ import annotations

import io
import logging
import os
import select
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.http import get_parser
from gunicorn.sock import ssl_context
from gunicorn.workers.gthread import ThreadWorker

from .server import READ_TIMEOUT, set_read_timeout
from .serving import MAX_PER_ADDRESS

log = logging.getLogger(__name__)

HOLD = 0.005  # per connection it holds, a worker leaves a new one this long to the others
HOLD_MAX = 0.020
HOLD_STALE = 0.002  # woken later than this after its hold, a worker holds again
LINGER = 5.0  # a thread that has answered waits this long for the connection's next request
CHUNK = 1 << 20  # an upload's body is read from the socket this much at a time
HEAD_MAX = 64 << 10  # request headers this long go to a thread whole or not (gunicorn refuses or reads on)
HEAD_PEEK = 16 << 10  # a lingering thread looks this far for a whole request head
CLOSE_LINGER = 5.0  # a connection closed after its answer is read from this long at most
CLOSE_DRAIN = 16 << 20  # and this much: the rest of a refused upload, whose client then reads the answer
REFUSED_LOG = 60.0  # one log line per refused address this often at most
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# The gthread methods DroprWorker overrides or calls, with their parameters: gunicorn
# calls them positionally, except wait_for_and_dispatch_events(timeout=...).
WORKER_METHODS = {
    "init_process": ["self"],
    "enqueue_req": ["self", "conn"],
    "accept": ["self", "listener"],
    "set_accept_enabled": ["self", "enabled"],
    "wait_for_and_dispatch_events": ["self", "timeout"],
    "murder_pending": ["self"],
    "finish_request": ["self", "conn", "fs"],
    "handle": ["self", "conn"],
    "handle_request": ["self", "req", "conn"],
    "handle_exit": ["self", "sig", "frame"],
    "handle_quit": ["self", "sig", "frame"],
    "handle_abort": ["self", "sig", "frame"],
}


def layout_changes() -> list[str]:
    """List how gunicorn's gthread worker differs from the layout DroprWorker is written for."""
    import inspect

    changes = []
    for name, params in WORKER_METHODS.items():
        method = getattr(ThreadWorker, name, None)
        if method is None:
            changes.append(f"gunicorn.workers.gthread.ThreadWorker.{name} is gone")
        elif (have := list(inspect.signature(method).parameters)) != params:
            changes.append(f"ThreadWorker.{name} takes {have}, not {params}")
    if (have := list(inspect.signature(get_parser).parameters)[:3]) != ["cfg", "source", "source_addr"]:
        changes.append(f"gunicorn.http.get_parser takes {have}, not cfg, source, source_addr")
    return changes


class Embedded(BaseApplication):  # type: ignore[misc]
    """gunicorn running one WSGI app with the given settings."""

    def __init__(self, app: Any, settings: dict[str, Any]) -> None:
        self.wsgi_app = app
        self.dropr_settings = settings
        json_errors()
        super().__init__()  # calls load_config

    def load_config(self) -> None:
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)  # it would write outside the spool
        for key, value in self.dropr_settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.wsgi_app


def worker_class(
    *, spread: bool, read_timeout: float = READ_TIMEOUT, max_per_address: int = MAX_PER_ADDRESS
) -> Any:
    """Return DroprWorker set for this server, or "gthread" where gunicorn's worker is not
    the one it was written for (gunicorn before 27, or a later change: layout_changes)."""
    if layout_changes():
        return "gthread"
    DroprWorker.spread = spread  # one server per process: the forked workers inherit these
    DroprWorker.read_timeout = read_timeout
    DroprWorker.max_per_address = max_per_address
    return DroprWorker


class DroprWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with a read timeout, lingering threads and spreading.

    Read timeout. A client that stopped in the middle of its request headers (a cut
    link, a host that died) held its thread for good: gunicorn reads them from a
    blocking socket with no timeout. Every plain connection gets ``read_timeout``
    (SO_RCVTIMEO) before its first request, every TLS one a socket timeout
    (TimedSSLSocket). gunicorn then closes the connection and logs the error, which
    serving's log filter turns into one line. That bounds each read, not the whole: a
    client that sends a byte of its headers now and then (slowloris) would still hold
    the thread, before any token is checked. So a watchdog thread also closes a
    connection whose request headers (TLS handshake included) are not all in after
    ``read_timeout``. Request heads (and TLS handshakes) no longer reach a thread before
    they are all in (Doorman): the watchdog then bounds heads of more than HEAD_MAX, and
    a kept-alive TLS connection's next head, which a lingering thread reads.

    Lingering. gthread hands a kept-alive connection back to the worker's poller after
    each answer; its next request wakes the poller, which wakes a pool thread: two
    thread wake-ups on the way to the application. So the thread that answered waits on
    the connection itself for up to LINGER seconds, as a thread-per-connection server
    does for its keep-alive, while at least one other thread of the worker is free. A
    request that finds no free thread sends a lingering one back (a byte on a pipe), and
    TERM sends them all back. A plain request whose head is not all in when it wakes the
    lingering thread goes back to the poller (Doorman), for slowloris to hold no thread
    (under TLS the thread cannot look ahead: it reads the head, bounded by the watchdog).

    Spreading (two or more workers). Every worker polls the one listening socket, and
    the worker that has just accepted a connection is awake while the others still
    sleep, so it takes the next one too: a sender's two kept-alive connections landed
    in one process, whose threads then shared one interpreter lock while the other
    worker sat idle. Here a worker that already holds N connections, woken by a new one,
    first leaves it to the others for N x HOLD seconds (at most HOLD_MAX), then takes it
    if it is still there: an idle worker takes it at once, a less busy one sooner. The
    hold must outlast the time the idle worker needs to be scheduled while both CPUs
    are busy with the transfer. (Figures: bench/README.md, "Serving".)
    """

    spread = False
    read_timeout = READ_TIMEOUT
    held_until = 0.0

    def init_process(self) -> None:
        self.linger_pipe = os.pipe()
        for fd in self.linger_pipe:
            os.set_blocking(fd, False)
        self.counts = threading.Lock()
        self.queued = 0  # connections handed to the pool, not yet taken by a thread
        self.occupied = 0  # threads serving or lingering
        self.lingering = 0
        self.recalled = 0  # lingering threads sent back, not yet gone
        self.heads: dict[Any, float] = {}  # connection -> when its request headers began
        self.door = Doorman(self)
        if self.read_timeout > 0:
            threading.Thread(target=self._watch_heads, name="dropr-heads", daemon=True).start()
        super().init_process()  # runs the worker's loop

    # -- lingering --

    def enqueue_req(self, conn: Any) -> None:
        if not getattr(conn, "dropr_admitted", False):  # accepted just now
            conn.dropr_admitted = True
            if not self.door.admit(conn):
                return
        if not self.door.wait_head(conn):
            self.submit(conn)

    def submit(self, conn: Any) -> None:
        """Hand conn to the thread pool, sending a lingering thread back if none is free."""
        with self.counts:
            self.queued += 1
            free = self.cfg.threads - self.occupied + self.recalled
            recall = min(self.queued - free, self.lingering - self.recalled)
            if recall > 0:
                self.recalled += recall
        super().enqueue_req(conn)
        if recall > 0:
            self._send_back(recall)

    def _send_back(self, n: int) -> None:
        try:
            os.write(self.linger_pipe[1], b"!" * n)
        except BlockingIOError:
            pass  # a full pipe: every lingering thread is sent back already

    def _stop_lingering(self) -> None:
        self.alive = False  # the pool's threads are joined at exit: none may linger
        self._send_back(self.cfg.threads)
        fetch = sys.modules.get("dropr.fetch")
        if fetch is not None:  # held fetches (up to 30 s) would hold the stop up
            fetch.stop_holding()

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._stop_lingering()

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self._stop_lingering()
        super().handle_quit(sig, frame)

    def handle_abort(self, sig: Any, frame: Any) -> None:
        self._stop_lingering()
        super().handle_abort(sig, frame)

    def handle(self, conn: Any) -> Any:
        with self.counts:
            self.queued -= 1
            self.occupied += 1
        try:
            timeout = self.read_timeout
            if timeout > 0 and not self.cfg.is_ssl and not getattr(conn, "dropr_timed", False):
                set_read_timeout(conn.sock, timeout)  # TLS sockets time out otherwise: TimedSSLSocket
                conn.dropr_timed = True
            while True:
                if timeout > 0:
                    self.heads[conn] = time.monotonic()
                try:
                    keep = super().handle(conn)
                finally:
                    self.heads.pop(conn, None)
                if keep is not True or not self.alive or not self._linger(conn):
                    return keep
        finally:
            with self.counts:
                self.occupied -= 1

    def handle_request(self, req: Any, conn: Any) -> Any:
        self.heads.pop(conn, None)  # the headers are in; body reads have their own timeout
        keep = super().handle_request(req, conn)
        if keep is True and _body_left(req, conn):
            # gunicorn would read the rest here, holding this thread while a client that was
            # refused (no token, say) trickles it: it is closed softly instead (Doorman)
            return False
        return keep

    def _watch_heads(self) -> None:
        """Close each connection whose request headers took longer than read_timeout."""
        limit = self.read_timeout
        while True:
            time.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for conn, began in list(self.heads.items()):
                if now - began <= limit or self.heads.get(conn) != began:
                    continue
                self.heads.pop(conn, None)
                try:
                    # the plain socket's shutdown, also under TLS: the thread's blocked
                    # read sees the end of the stream, and gunicorn closes the connection
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
                except OSError:
                    continue  # gone meanwhile
                log.warning("closed connection reason=request headers not complete in %gs", limit)

    def _linger(self, conn: Any) -> bool:
        """Wait here for the connection's next request; True if it came."""
        buf = getattr(getattr(getattr(conn, "parser", None), "unreader", None), "buf", None)
        if buf is None or not hasattr(buf, "getvalue"):
            return False
        if buf.getvalue() or getattr(conn.sock, "pending", lambda: 0)():
            return True  # read already (pipelined, or held by TLS)
        with self.counts:
            if self.occupied + self.queued >= self.cfg.threads:
                return False  # keep a thread free for the others
            self.lingering += 1
        try:
            return self._wait_readable(conn.sock) and self._head_in(conn.sock)
        finally:
            with self.counts:
                self.lingering -= 1

    def _head_in(self, sock: Any) -> bool:
        """Tell whether a whole request head waits on sock, for this thread to read; if not,
        the connection goes back to the poller (Doorman). A TLS one is taken as it is."""
        if self.cfg.is_ssl:
            return True
        try:
            data = sock.recv(HEAD_PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return True  # gunicorn meets the error and closes
        return not data or len(data) >= HEAD_PEEK or b"\n\r\n" in data or b"\n\n" in data

    def _wait_readable(self, sock: Any) -> bool:
        """Wait up to LINGER for sock to be readable; False if sent back or out of time."""
        deadline = time.monotonic() + LINGER
        watch = select.poll()  # not select: descriptors here go past select's 1,024
        watch.register(sock, select.POLLIN)
        watch.register(self.linger_pipe[0], select.POLLIN)
        while self.alive:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = [fd for fd, _ in watch.poll(left * 1000)]
            if sock.fileno() in ready:
                return True
            if ready:
                try:
                    os.read(self.linger_pipe[0], 1)
                except BlockingIOError:
                    continue  # another lingering thread answered that call
                with self.counts:
                    self.recalled = max(0, self.recalled - 1)  # TERM's calls are not counted
                return False  # a request wants this thread
        return False

    # -- the door --

    def murder_pending(self) -> None:
        super().murder_pending()
        self.door.expire()

    def finish_request(self, conn: Any, fs: Any) -> None:
        if not fs.cancelled() and fs.exception() is None and fs.result() is False:
            self.nr_conns -= 1
            self.door.close_softly(conn)  # not gunicorn's close, which waits here for the client
            return
        super().finish_request(conn, fs)

    # -- spreading --

    def accept(self, listener: Any) -> None:
        if self.spread and self.nr_conns > 0:
            now = time.monotonic()
            if now > self.held_until + HOLD_STALE:  # not yet held for this one
                self.held_until = now + min(HOLD * self.nr_conns, HOLD_MAX)
                self.set_accept_enabled(False)
                return
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self.held_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        left = self.held_until - time.monotonic()
        if left > 0:
            timeout = min(timeout, left)
        super().wait_for_and_dispatch_events(timeout)


def _body_left(req: Any, conn: Any) -> bool:
    """Tell whether the request's body of known length is not all read from the socket yet."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    left = getattr(reader, "length", None)
    if type(reader).__name__ != "LengthReader" or not isinstance(left, int):
        return False
    return left > len(conn.parser.unreader.buf.getvalue())


def _is_open(conn: Any) -> bool:
    return bool(conn.sock.fileno() != -1)  # gunicorn closes, TLS wraps (the plain one then reads -1)


def _end_of_head(head: bytearray, start: int) -> bool:
    """Tell whether head holds a whole request head (an empty line), looking from start on."""
    return head.find(b"\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0


class Doorman:
    """A worker's door: a cap on each client address's open connections, and a wait in the
    worker's poller, holding no thread, until a plain connection's request headers are in.

    Slow clients (slowloris: headers a byte at a time) held a thread each while they
    trickled, and with gunicorn's 4 threads per worker, a few dozen such connections from
    one address stopped every peer: /v1/health unanswered, a sender's batch deferred.
    Here a connection reaches a thread only with its TLS handshake done and its whole
    request head read (or HEAD_MAX of it), both without blocking, in the poller; a head
    not in within read_timeout is dropped, as is a kept-alive connection whose next
    request does not come in that time. (Where gunicorn may speak HTTP/2, the preface or
    ALPN choice is its thread's, as before, bounded by DroprWorker's watchdog.)
    Past max_per_address open connections from one address, a new one is answered 503
    and closed at once, so one address cannot fill the worker's worker_connections nor
    its descriptors; the count is per worker process (an address may hold that many in
    each). (Figures: bench/README.md, "Serving".)
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.by_addr: dict[str, list[Any]] = {}  # address -> its connections, pruned as they close
        self.waiting: dict[Any, list[float]] = {}  # connection -> [began, last data], oldest first
        self.closing: dict[Any, float] = {}  # connection -> when it is closed at the latest
        self.told: dict[str, float] = {}  # address -> when its last refusal was logged

    def admit(self, conn: Any) -> bool:
        """Count a new connection against its address; False (503, closed) past the cap."""
        cap = self.worker.max_per_address
        client = conn.client
        addr = str(client[0]) if isinstance(client, tuple) and client else ""  # "" on a Unix socket
        if cap <= 0 or not addr:
            return True
        live = [c for c in self.by_addr.get(addr, ()) if _is_open(c)]
        self.by_addr[addr] = live
        if len(live) < cap:
            live.append(conn)
            return True
        if not self.worker.cfg.is_ssl:
            try:
                conn.sock.send(BUSY)  # non-blocking (gunicorn made it so): best effort
            except OSError:
                pass
        conn.close()
        self.worker.nr_conns -= 1
        now = time.monotonic()
        if now - self.told.get(addr, -REFUSED_LOG) >= REFUSED_LOG:
            self.told[addr] = now
            log.warning("refused connection addr=%s reason=%d open from this address (--max-per-address)",
                        addr, cap)  # fmt: skip
        return False

    def wait_head(self, conn: Any) -> bool:
        """Wait in the poller for conn's request head (and TLS handshake); False where a thread
        must read it."""
        cfg = self.worker.cfg
        if getattr(cfg, "http2_cleartext", "off") != "off" or "h2" in str(getattr(cfg, "http_protocols", "")):
            return False  # an HTTP/2 preface or ALPN choice is for gunicorn's thread to make
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            return False  # read already (pipelined)
        if cfg.is_ssl and conn.initialized and conn.sock.pending():
            return False  # decrypted already, which the poller cannot see
        if cfg.is_ssl and not conn.initialized:
            try:  # what TConn.init does, but the handshake is left to _read
                conn.sock = ssl_context(cfg).wrap_socket(
                    conn.sock, server_side=True, suppress_ragged_eofs=cfg.suppress_ragged_eofs,
                    do_handshake_on_connect=False,
                )  # fmt: skip
            except (OSError, ValueError):
                self.worker.nr_conns -= 1
                conn.close()
                return True
            conn.dropr_shake = True
        now = time.monotonic()
        conn.dropr_head = bytearray()
        conn.sock.setblocking(False)
        self.waiting[conn] = [now, now]
        self.worker.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read, conn))
        return True

    def _read(self, conn: Any, _fileobj: Any) -> None:
        sock = conn.sock
        try:
            if getattr(conn, "dropr_shake", False):
                sock.do_handshake()
                conn.dropr_shake = False
                self.waiting[conn][1] = time.monotonic()
            data = sock.recv(HEAD_PEEK)
            while data and getattr(sock, "pending", lambda: 0)():  # TLS: what the poller cannot see
                data += sock.recv(HEAD_PEEK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ValueError):  # ssl.SSLError too: a failed handshake
            data = b""
        if not data:
            self._close(conn)  # the client went away
            return
        head = conn.dropr_head
        start = max(0, len(head) - 2)
        head += data
        self.waiting[conn][1] = time.monotonic()
        if not _end_of_head(head, start) and len(head) < HEAD_MAX:
            return
        self._unwatch(conn)
        if conn.parser is None:  # what TConn.init does for a plain HTTP/1 connection
            conn.parser = get_parser(self.worker.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.parser.unreader.unread(bytes(head))
        conn.dropr_head = None
        conn.data_ready = True
        self.worker.submit(conn)

    def _unwatch(self, conn: Any) -> None:
        self.worker.poller.unregister(conn.sock)
        del self.waiting[conn]

    def _close(self, conn: Any) -> None:
        self._unwatch(conn)
        self.worker.nr_conns -= 1
        conn.close()

    def close_softly(self, conn: Any) -> None:
        """Close conn after its last answer: end the sending side, read what the client still
        sends until it closes (CLOSE_LINGER, CLOSE_DRAIN at most), then close.

        Closing with unread data sends a reset, which can destroy the answer before the client
        reads it (RFC 9112 9.6). gunicorn waits for the client on the worker's loop itself:
        a client that never closed stopped the worker for 2 s, and 40 of them kept /v1/health
        from answering for 40 s. Here the wait is one more connection in the poller.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)  # TLS too: SSLSocket.shutdown drops TLS, as gunicorn's does
            sock.setblocking(False)
            self.worker.poller.register(sock, selectors.EVENT_READ, partial(self._drain, conn))
        except (OSError, ValueError, KeyError):
            conn.close()
            return
        conn.dropr_drained = 0
        self.closing[conn] = time.monotonic() + CLOSE_LINGER

    def _drain(self, conn: Any, _fileobj: Any) -> None:
        try:
            data = conn.sock.recv(HEAD_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.dropr_drained += len(data)
        if not data or conn.dropr_drained >= CLOSE_DRAIN:
            self._closed(conn)

    def _closed(self, conn: Any) -> None:
        self.worker.poller.unregister(conn.sock)
        del self.closing[conn]
        conn.close()

    def expire(self) -> None:
        """Close each connection whose head is not in after read_timeout (all, once stopping),
        and each one closing softly past its time."""
        limit, alive = self.worker.read_timeout, self.worker.alive
        now = time.monotonic()
        for conn, until in list(self.closing.items()):
            if until > now:
                break  # the others came later
            self._closed(conn)
        due = []
        for conn, (began, last) in self.waiting.items():
            if alive and (limit <= 0 or now - began < limit):
                break  # the others began later
            due.append((conn, now - last >= limit / 2))
        counts = {quiet: sum(1 for _, q in due if q is quiet) for quiet in (True, False)}
        for quiet, n in counts.items():  # logged before the close, which the client may see at once
            if n and alive:
                why = f"{'no request data for' if quiet else 'request headers not complete in'} {limit:g}s"
                log.warning("closed %s reason=%s", "connection" if n == 1 else f"connections={n}", why)
        for conn, _ in due:
            self._close(conn)
        for addr, conns in list(self.by_addr.items()):
            if not any(_is_open(c) for c in conns):
                del self.by_addr[addr]
                self.told.pop(addr, None)


class TimedSSLSocket(ssl.SSLSocket):
    """A TLS socket whose blocking reads and writes give up after ``seconds``.

    SO_RCVTIMEO is no use under TLS: Python's SSL layer retries a read that fails with
    EAGAIN on a blocking socket, for ever. gunicorn makes its sockets blocking
    (setblocking(True), settimeout(None)) before each request; on this socket, that sets
    the timeout instead, which Python's SSL layer does honour.
    """

    seconds = READ_TIMEOUT  # set by time_out: one server per process

    def setblocking(self, flag: bool) -> None:
        self.settimeout(self.seconds if flag else 0.0)

    def settimeout(self, value: float | None) -> None:
        super().settimeout(self.seconds if value is None else value)


def time_out(context: ssl.SSLContext, seconds: float) -> None:
    """Make the sockets of a gunicorn TLS context give up a read after seconds without data."""
    TimedSSLSocket.seconds = seconds
    context.sslsocket_class = TimedSSLSocket


def read_body(environ: dict[str, Any], feed: Callable[[bytes | bytearray], object]) -> bool:
    """Feed a request body of known length to ``feed`` from gunicorn's socket; False (and
    nothing read) where the request is not one that can be read so (then use wsgi.input).

    gunicorn's reader copies a body five times on its way to the application (1 MiB
    recv, two BytesIO buffers, two slices) into freshly allocated memory, a large share
    of the receiver's time for a large upload (bench/README.md, "Serving"). The body is
    read from the socket instead, into one reused buffer (``feed`` must not keep it).
    What gunicorn has already read past the headers is taken from its buffer first;
    bytes beyond this body (a pipelined request) are left there, and the reader's
    remaining length is kept up to date, so gunicorn goes on with the connection as if
    it had read the body itself. A short body (the client went away) ends the feeding
    early, as a truncated upload.
    """
    sock = environ.get("gunicorn.socket")
    body: Any = environ.get("wsgi.input")
    reader: Any = getattr(body, "reader", None)
    unreader: Any = getattr(reader, "unreader", None)
    if (
        not isinstance(sock, socket.socket)
        or type(reader).__name__ != "LengthReader"
        or not isinstance(getattr(reader, "length", None), int)
        or not isinstance(getattr(body, "buf", None), io.BytesIO)
        or body.buf.tell() != 0
        or not isinstance(getattr(unreader, "buf", None), io.BytesIO)
    ):
        return False
    held = unreader.buf.getvalue()
    take, rest = held[: reader.length], held[reader.length :]
    unreader.buf = io.BytesIO()
    unreader.buf.write(rest)
    reader.length -= len(take)
    if take:
        feed(take)
    _read_socket(sock, reader, feed)
    return True


def _read_socket(sock: socket.socket, reader: Any, feed: Callable[[bytes | bytearray], object]) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    waitall = socket.MSG_WAITALL if not hasattr(sock, "do_handshake") else 0  # not for TLS
    while reader.length > 0:
        want = min(CHUNK, reader.length)
        n = sock.recv_into(buf, want, waitall if want == CHUNK else 0)
        if n <= 0:
            return  # the client went away: a truncated upload
        reader.length -= n
        feed(buf if n == CHUNK else bytes(view[:n]))  # the parser wants a whole bytes-like


def bigger_reads(size: int = 1 << 20) -> None:
    """Let gunicorn before 27 read request bodies from the socket in 1 MiB pieces, not 8 KiB.

    Its socket reader's chunk is a constructor default; at 8 KiB a large upload is a
    read per 8 KiB, each copied through Python. Since gunicorn 27 the reader takes up to
    max_body_chunk where it knows a body's length, and uploads are read from the socket
    (read_body): then nothing is changed, for a 1 MiB recv of every request's headers
    costs more than an 8 KiB one. Without the attribute, nothing happens either.
    """
    from gunicorn.http import unreader

    cls = unreader.SocketUnreader
    init = cls.__init__
    if getattr(init, "_dropr", False) or hasattr(cls, "max_body_chunk"):
        return

    def bigger(self: Any, sock: Any, max_chunk: int = size) -> None:
        init(self, sock, max(max_chunk, size))

    bigger._dropr = True  # type: ignore[attr-defined]
    cls.__init__ = bigger


def json_errors() -> None:
    """Make gunicorn answer the requests it refuses itself (a negative Content-Length, a
    bad request line or header: 400, 414, 431...) as the application does, with JSON
    {"error": REASON}, not with its HTML page (which dropr-send shows in its log).

    gunicorn has no hook for those answers: its error writer, gunicorn.util.write_error,
    is replaced, for gunicorn's own worker too. The workers are forked from the process
    that calls this. Where that function has another shape, nothing is changed."""
    import inspect
    import json

    from gunicorn import util

    from . import protocol as wire
    from .server import INTERNAL

    write = getattr(util, "write_nonblock", None)
    if write is None or list(inspect.signature(util.write_error).parameters) != [
        "sock", "status_int", "reason", "mesg",
    ]:  # fmt: skip
        return

    def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        if status_int == 431:  # gunicorn's: "Error parsing headers: 'limit request headers fields size'"
            mesg = "request headers too long or too many"
        why = f"{mesg or reason}; nothing stored" if status_int < 500 else INTERNAL
        body = json.dumps({wire.ERROR: why}).encode()
        head = (
            f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n{wire.CONTENT_TYPE}: {wire.JSON}\r\n"
            f"{wire.CONTENT_LENGTH}: {len(body)}\r\n\r\n"
        )
        write(sock, head.encode("latin-1") + body)

    util.write_error = write_error
