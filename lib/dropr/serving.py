"""Run the WSGI app on an embedded gunicorn: workers, graceful TERM, TLS, port 0."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any

from .errors import UsageError
from .server import READ_TIMEOUT, TIMED_OUT, make_app, set_read_timeout
from .spool import PURGE_CHECK, Spool

log = logging.getLogger(__name__)


class ServeOptions:
    """How dropr-serve runs."""

    __slots__ = ("listen", "workers", "threads", "certfile", "keyfile", "insecure", "verbose", "read_timeout")

    def __init__(
        self,
        *,
        listen: list[str],
        workers: int = 2,
        threads: int = 4,
        certfile: str | None = None,
        keyfile: str | None = None,
        insecure: bool = False,
        verbose: int = 0,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.read_timeout = read_timeout
        self.listen = listen
        self.workers = workers
        self.threads = threads
        self.certfile = certfile
        self.keyfile = keyfile
        self.insecure = insecure
        self.verbose = verbose


def is_loopback(addr: str) -> bool:
    """Tell whether a HOST:PORT listens on loopback only."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(spool: Spool, opts: ServeOptions) -> None:
    """Refuse an open address without tokens unless --insecure."""
    for addr in opts.listen:
        host, _, port = addr.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not (port.isascii() and port.isdigit()) or "/" in addr or not bare:
            raise UsageError(f"bad --listen {addr!r}: write HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
        if int(port) > 65535:
            raise UsageError(f"bad --listen {addr!r}: a port is 0 to 65535")
        if ":" in bare and bare == host:
            raise UsageError(f"bad --listen {addr!r}: an IPv6 address goes in brackets, e.g. [::1]:8080")
        if bare != host or "[" in bare or "]" in bare:
            try:
                ipaddress.IPv6Address(bare)
            except ValueError:
                raise UsageError(f"bad --listen {addr!r}: {bare!r} is not an IPv6 address") from None
        if not spool.config.tokens and not opts.insecure and not is_loopback(addr):
            raise UsageError(
                f"refusing to listen on {addr} without serve.tokens in the config: anyone could "
                "deliver; add tokens, listen on loopback, or pass --insecure"
            )


def check_bind(opts: ServeOptions) -> None:
    """Try each address before gunicorn does, to fail with one clear line (exit 69)."""
    import socket

    from .errors import UnavailableError

    for addr in opts.listen:
        host, port = addr.rsplit(":", 1)
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                raise UnavailableError(
                    f"cannot listen on {addr}: {exc.strerror}; pick another --listen address"
                ) from None


def check_tls(opts: ServeOptions) -> None:
    """Load the certificate and key once before gunicorn starts, to fail with one clear line.

    gunicorn checks only that the files exist (with a traceback if not), and builds its
    TLS context at each connection: a certificate that does not parse, or a key that
    does not match it, started a server that failed every connection.
    """
    if not opts.certfile:
        return
    import ssl

    from .errors import ConfigError, NoInputError

    for what, path in (("--certfile", opts.certfile), ("--keyfile", opts.keyfile)):
        if not path or not os.path.isfile(path):
            raise NoInputError(f"cannot read {what} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(opts.certfile, opts.keyfile)
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            why = f"the key {opts.keyfile} does not belong to the certificate {opts.certfile}"
        else:  # "PEM lib": one of them does not parse; a certificate file passes as a CA file
            try:
                ssl.create_default_context().load_verify_locations(cafile=opts.certfile)
                why = f"no PEM private key in {opts.keyfile}"
            except ssl.SSLError:
                why = f"no PEM certificate in {opts.certfile}"
        raise ConfigError(f"cannot serve TLS: {why}") from None
    except OSError as exc:
        raise NoInputError(f"cannot read --certfile or --keyfile: {exc.strerror}") from None


def _more_open_files(want: int = 1 << 16) -> None:
    """Raise the soft limit of open files toward the hard one (as far as want).

    The receiver keeps each message's file open from its upload to its store (see
    Spool.receive_file), as many as a request holds, in every thread: 1,024 is the
    usual soft limit, while the hard one is higher. make_app sizes that use to the limit.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the limit we have: make_app keeps fewer descriptors open


def _bigger_reads(size: int = 1 << 20) -> None:
    """Let gunicorn read request bodies from the socket in 1 MiB pieces instead of 8 KiB.

    Its socket reader's chunk is a constructor default; at 8 KiB a 256 MiB upload
    is 32,768 reads each copied through Python, which caps a transfer near 200 MB/s.
    Only the embedded server is changed; without the attribute, nothing happens.
    Since gunicorn 27 the reader takes up to 1 MiB where it knows a body's length
    (max_body_chunk), and the upload's body is read from the socket here anyway
    (server._read_socket): then nothing is changed, for a 1 MiB recv of every request's
    headers cost 0.03 ms more than an 8 KiB one on an idle CPU.
    """
    try:
        from gunicorn.http import unreader
    except ImportError:
        return
    cls = unreader.SocketUnreader
    init = cls.__init__
    if getattr(init, "_dropr", False) or hasattr(cls, "max_body_chunk"):
        return

    def bigger(self: Any, sock: Any, max_chunk: int = size) -> None:
        init(self, sock, max(max_chunk, size))

    bigger._dropr = True  # type: ignore[attr-defined]
    cls.__init__ = bigger


HOLD = 0.005  # per connection it holds, a worker leaves a new one this long to the others
HOLD_MAX = 0.020
HOLD_STALE = 0.002  # woken later than this after its hold, a worker holds again
LINGER = 5.0  # a thread that has answered waits this long for the connection's next request


def _worker_class(workers: int, read_timeout: float = READ_TIMEOUT) -> Any:
    """Return gunicorn's gthread worker, changed in three ways (or as it is, where its
    layout is not the one this was written against: gunicorn before 27).

    Read timeout. A client that stopped in the middle of its request headers (a cut
    link, a host that died) held its thread for good: gunicorn reads them from a
    blocking socket with no timeout. Every plain connection gets ``read_timeout``
    (SO_RCVTIMEO) before its first request, every TLS one a socket timeout (_tls_contexts).
    gunicorn then closes the connection and logs the error, which _QuietTimeouts turns
    into one line. That bounds each read, not the whole: a client that sends a byte of
    its headers now and then (slowloris) would still hold the thread, before any token
    is checked. So a watchdog thread also closes a connection whose request headers
    (TLS handshake included) are not all in after ``read_timeout``.

    Lingering. gthread hands a kept-alive connection back to the worker's poller after
    each answer; its next request wakes the poller, which wakes a pool thread: two
    thread wake-ups on the way to the application, 0.2 ms on an idle CPU here (a tiny
    request's round trip 0.91-1.03 ms, against 0.78-0.79 ms without the hand-offs). So
    the thread that answered waits on the connection itself for up to LINGER seconds, as
    a thread-per-connection server does for its keep-alive, while at least one other
    thread of the worker is free. A request that finds no free thread sends a lingering
    one back (a byte on a pipe), and TERM sends them all back.

    Spreading (two or more workers). Every worker polls the one listening socket, and
    the worker that has just accepted a connection is awake while the others still
    sleep, so it takes the next one too: a sender's two kept-alive connections landed
    in one process in 5 of 8 transfers, whose threads then shared one interpreter lock
    while the other worker sat idle (5,375-6,677 msgs/s, against 6,381-7,903 when
    split). Here a worker that already holds N connections, woken by a new one, first
    leaves it to the others for N x HOLD seconds (at most HOLD_MAX), then takes it if
    it is still there: an idle worker takes it at once, a less busy one sooner. A hold
    of 2 ms was too short while both CPUs were busy: the idle worker was not scheduled
    in time in 3 of 7 transfers.
    """
    import inspect
    import select
    import threading
    import time

    from gunicorn.workers.gthread import ThreadWorker

    base: Any = ThreadWorker
    needed = ("set_accept_enabled", "wait_for_and_dispatch_events", "enqueue_req", "handle_quit")
    if not all(hasattr(base, a) for a in needed):
        return "gthread"
    for method, params in (("accept", ["self", "listener"]), ("enqueue_req", ["self", "conn"])):
        if list(inspect.signature(getattr(base, method)).parameters) != params:
            return "gthread"
    spread = workers > 1

    class DroprWorker(base):  # type: ignore[misc]
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
            if read_timeout > 0:
                threading.Thread(target=self._watch_heads, name="dropr-heads", daemon=True).start()
            super().init_process()  # runs the worker's loop

        # -- lingering --

        def enqueue_req(self, conn: Any) -> None:
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
                if read_timeout > 0 and not self.cfg.is_ssl and not getattr(conn, "dropr_timed", False):
                    set_read_timeout(conn.sock, read_timeout)  # TLS sockets time out otherwise: _tls_contexts
                    conn.dropr_timed = True
                while True:
                    if read_timeout > 0:
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
            return super().handle_request(req, conn)

        def _watch_heads(self) -> None:
            """Close each connection whose request headers took longer than read_timeout."""
            import socket

            while True:
                time.sleep(min(1.0, read_timeout / 4))
                now = time.monotonic()
                for conn, began in list(self.heads.items()):
                    if now - began <= read_timeout or self.heads.get(conn) != began:
                        continue
                    self.heads.pop(conn, None)
                    try:
                        # the plain socket's shutdown, also under TLS: the thread's blocked
                        # read sees the end of the stream, and gunicorn closes the connection
                        socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
                    except OSError:
                        continue  # gone meanwhile
                    log.warning("closed connection reason=request headers not complete in %gs", read_timeout)

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
                deadline = time.monotonic() + LINGER
                watch = select.poll()  # not select: descriptors here go past select's 1,024
                watch.register(conn.sock, select.POLLIN)
                watch.register(self.linger_pipe[0], select.POLLIN)
                while self.alive:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    ready = [fd for fd, _ in watch.poll(left * 1000)]
                    if conn.sock.fileno() in ready:
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
            finally:
                with self.counts:
                    self.lingering -= 1

        # -- spreading --

        def accept(self, listener: Any) -> None:
            if spread and self.nr_conns > 0:
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

    return DroprWorker


def _tls_contexts(seconds: float) -> Any:
    """Return a gunicorn ssl_context hook that builds a worker's TLS context once, and again
    only when the certificate or key file changes, and whose sockets time out.

    gunicorn calls the hook for every connection, and its default builds a new context
    each time: the system CA store and the key pair read and parsed again, 3.7-4.8 ms a
    connection with its health answer here, against 2.4-2.7 ms with one context. The files'
    identity (inode, size, mtime) is looked at on each connection instead, so a renewed
    certificate is served from the next connection on, as before, without a restart;
    files that do not load (half a renewal) leave the previous context in use, where
    gunicorn's default failed every connection until they did.

    The sockets (with seconds > 0) give up a read (or a write) after ``seconds`` without
    progress, as plain ones do by SO_RCVTIMEO (_worker_class). SO_RCVTIMEO is no use
    under TLS: Python's SSL layer retries a read that fails with EAGAIN on a blocking
    socket, for ever, so a client that stalled in its handshake, its headers or its body
    held its thread for good. gunicorn makes its sockets blocking (setblocking(True),
    settimeout(None)) before each request; on these sockets, that sets the timeout
    instead, which Python's SSL layer does honour.
    """
    import ssl

    class TimedSSLSocket(ssl.SSLSocket):
        def setblocking(self, flag: bool) -> None:
            self.settimeout(seconds if flag else 0.0)

        def settimeout(self, value: float | None) -> None:
            super().settimeout(seconds if value is None else value)

    built: list[Any] = [None, None]  # (files' identity, context); threads may race: both fine

    def identity(path: str | None) -> tuple[int, int, int] | None:
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # the factory reports it
        return st.st_ino, st.st_size, st.st_mtime_ns

    def hook(config: Any, default_ssl_context_factory: Any) -> Any:
        key = (identity(config.certfile), identity(config.keyfile), identity(config.ca_certs))
        stamp, context = built
        if context is None or stamp != key:
            try:
                fresh = default_ssl_context_factory()
            except OSError as exc:  # ssl.SSLError too: half a renewal, say (check_tls ran first)
                if context is None:
                    raise
                log.warning(
                    "tls reason=cannot load the changed certificate or key (%s); serving the one before",
                    getattr(exc, "reason", None) or exc.strerror or exc,
                )
                built[0] = key  # tried once: again when the files change again
                return context
            if seconds > 0:
                fresh.sslsocket_class = TimedSSLSocket
            built[:] = [key, fresh]
            context = fresh
        return context

    return hook


class _QuietTimeouts(logging.Filter):
    """Turn gunicorn's traceback for a read that timed out (a client that stalled in its
    request headers: see _worker_class) into one warning line."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TIMED_OUT):
            record.msg, record.args = "closed connection reason=no request data for %gs", (self.seconds,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


PURGE_FIRST = 1.0  # a worker first looks whether a purge is due this long after it starts


def _purge_in_background(spool: Spool) -> None:
    """Purge the spool on a thread of this worker whenever it is due (Spool.purge_if_due:
    one process at a time, at most every 10 minutes): a node that only receives runs no
    dropr-send, and its inbox's done and dead entries must go after the retention too."""
    import threading
    import time

    def loop() -> None:
        time.sleep(PURGE_FIRST)
        while True:
            try:
                removed = spool.purge_if_due()
                if removed:
                    log.info("purged entries=%d", removed)
            except OSError as exc:
                log.error("error purge reason=%s", exc)
            time.sleep(PURGE_CHECK)

    threading.Thread(target=loop, name="dropr-purge", daemon=True).start()


def serve(spool: Spool, opts: ServeOptions) -> int:
    """Run gunicorn with the dropr app until TERM; return the exit code."""
    check_listen(spool, opts)
    check_tls(opts)
    check_bind(opts)
    from gunicorn.app.base import BaseApplication

    _bigger_reads()
    _more_open_files()

    app = make_app(spool, threads=opts.threads, read_timeout=opts.read_timeout)
    # python-multipart logs each malformed upload; the client already gets the reason
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)

    def when_ready(server: Any) -> None:
        import socket

        for lst in server.LISTENERS:
            # Accepted sockets inherit this: gunicorn writes the status line and the body
            # separately, and Nagle plus a delayed ACK would hold the answer up to 40 ms.
            if lst.sock.family in (socket.AF_INET, socket.AF_INET6):
                lst.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host, port = lst.sock.getsockname()[:2]
            scheme = "https" if opts.certfile else "http"
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets, as in URLs
            line = f"listening addr={where} url={scheme}://{where}/ node={spool.node}"
            sys.stderr.write(f"dropr-serve: {line}\n")
        sys.stderr.flush()

    def post_fork(server: Any, worker: Any) -> None:
        # A new worker inherits the master's handlers, which only queue a signal for the
        # master's loop: a TERM in the moments before the worker sets its own would be
        # lost, and the stop would wait out graceful_timeout. Until then, TERM ends it.
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)

    def post_worker_init(worker: Any) -> None:
        _purge_in_background(spool)
        logging.getLogger("gunicorn.error").addFilter(_QuietTimeouts(opts.read_timeout))

    class Embedded(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": opts.listen,
                "workers": opts.workers,
                "worker_class": _worker_class(opts.workers, opts.read_timeout),
                "threads": opts.threads,
                "timeout": 600,
                "graceful_timeout": 30,
                "keepalive": 30,
                "errorlog": "-",
                "accesslog": "-" if opts.verbose > 1 else None,
                "loglevel": "info" if opts.verbose > 0 else "warning",
                "proc_name": "dropr-serve",
                "when_ready": when_ready,
                "post_fork": post_fork,
                "post_worker_init": post_worker_init,
                "limit_request_line": 8190,
            }
            if "control_socket_disable" in self.cfg.settings:
                settings["control_socket_disable"] = True  # it would write outside the spool
            if opts.certfile:
                settings["certfile"] = opts.certfile
                settings["keyfile"] = opts.keyfile
                settings["ssl_context"] = _tls_contexts(opts.read_timeout)
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Embedded().run()
    return 0
