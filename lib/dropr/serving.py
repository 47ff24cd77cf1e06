"""Run the WSGI app on an embedded gunicorn: workers, graceful TERM, TLS, port 0."""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Any

from .errors import UsageError
from .server import READ_TIMEOUT, TIMED_OUT, make_app
from .spool import PURGE_CHECK, Spool

log = logging.getLogger(__name__)

MAX_PER_ADDRESS = 64  # default: connections one client address may hold open in each worker


class ServeOptions:
    """How dropr-serve runs. settle() fills in from the config what was not given."""

    __slots__ = ("listen", "workers", "threads", "certfile", "keyfile", "insecure", "verbose", "read_timeout",
                 "max_size", "max_per_address")  # fmt: skip

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
        max_size: int | None = None,
        max_per_address: int = MAX_PER_ADDRESS,
    ) -> None:
        self.max_size = max_size
        self.max_per_address = max_per_address
        self.read_timeout = read_timeout
        self.listen = listen
        self.workers = workers
        self.threads = threads
        self.certfile = certfile
        self.keyfile = keyfile
        self.insecure = insecure
        self.verbose = verbose

    def settle(self, spool: Spool) -> None:
        """Take --listen, --certfile, --keyfile from the config where not given; --max-size overrides it."""
        config = spool.config
        self.listen = self.listen or config.listen or ["127.0.0.1:8080"]
        self.certfile = self.certfile or config.certfile
        self.keyfile = self.keyfile or config.keyfile
        if bool(self.certfile) != bool(self.keyfile):
            raise UsageError("--certfile and --keyfile (or serve.certfile and serve.keyfile) go together")
        if self.max_size is not None:
            config.max_message_size = self.max_size


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


class _TLSContexts:
    """gunicorn's ssl_context hook: a worker's TLS context, built once and again only when
    the certificate or key file changes, whose sockets time out.

    gunicorn calls the hook for every connection, and its default builds a new context
    each time: the system CA store and the key pair read and parsed again, which costs a
    small request more than its answer (bench/README.md, "Serving"). The files' identity
    (inode, size, mtime) is looked at on each connection instead, so a renewed
    certificate is served from the next connection on, as before, without a restart;
    files that do not load (half a renewal) leave the previous context in use, where
    gunicorn's default failed every connection until they did.

    The sockets (with seconds > 0) give up a read (or a write) after ``seconds`` without
    progress, as plain ones do by SO_RCVTIMEO: a client that stalled in its handshake,
    its headers or its body held its thread for good (see _gunicorn.TimedSSLSocket).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.built: tuple[Any, Any] = (None, None)  # (files' identity, context): one swap, threads may race

    def __call__(self, config: Any, default_ssl_context_factory: Any) -> Any:
        key = (_identity(config.certfile), _identity(config.keyfile), _identity(config.ca_certs))
        stamp, context = self.built
        if context is not None and stamp == key:
            return context
        try:
            fresh = default_ssl_context_factory()
        except OSError as exc:  # ssl.SSLError too: half a renewal, say (check_tls ran first)
            if context is None:
                raise
            log.warning(
                "tls reason=cannot load the changed certificate or key (%s); serving the one before",
                getattr(exc, "reason", None) or exc.strerror or exc,
            )
            self.built = (key, context)  # tried once: again when the files change again
            return context
        if self.seconds > 0:
            from . import _gunicorn

            _gunicorn.time_out(fresh, self.seconds)
        self.built = (key, fresh)
        return fresh


def _identity(path: str | None) -> tuple[int, int, int] | None:
    """Return a file's (inode, size, mtime), or None where there is none to read."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # the factory reports it
    return st.st_ino, st.st_size, st.st_mtime_ns


class _QuietTimeouts(logging.Filter):
    """Turn gunicorn's traceback for a read that timed out (a client that stalled in its
    request headers: see _gunicorn.DroprWorker) into one warning line."""

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


METRICS_DIR = "dropr-serve-metrics."  # $TMPDIR/METRICS_DIR*: a run's metrics, locked by its .lock
METRICS_LOCK = ".lock"


def metrics_dir() -> tuple[str, int]:
    """Make this run's private, empty directory for the workers' metrics, and name it in
    PROMETHEUS_MULTIPROC_DIR (whatever it named before: a directory shared with another
    run would mix their counts) before prometheus_client is imported: the library
    chooses its multiprocess mode on import (see metrics.py). Return it and the
    descriptor of its lock, held (flock) while this run's master or a worker lives.

    The directories of runs that were killed (SIGKILL: no exit removed them) are
    removed first: those whose lock nobody holds. The directory gets its final name
    only once locked, so that no other start can take a new one for a dead one.
    """
    import fcntl
    import tempfile

    parent = tempfile.gettempdir()
    _sweep_metrics_dirs(parent)
    new = tempfile.mkdtemp(prefix="." + METRICS_DIR, dir=parent)  # 0700
    lock = os.open(os.path.join(new, METRICS_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    path = os.path.join(parent, os.path.basename(new)[1:])
    os.rename(new, path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, lock


def _sweep_metrics_dirs(parent: str) -> None:
    """Remove this user's metrics directories in parent whose run is gone (lock not held)."""
    import fcntl
    import shutil

    try:
        names = [n for n in os.listdir(parent) if n.startswith(METRICS_DIR)]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue  # not ours to judge
            fd = os.open(os.path.join(path, METRICS_LOCK), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its dropr-serve runs
        finally:
            os.close(fd)  # (a lock taken goes with it: the directory goes next)
        shutil.rmtree(path, ignore_errors=True)  # a symlink in its place is not followed


def serve(spool: Spool, opts: ServeOptions) -> int:
    """Run gunicorn with the dropr app until TERM; return the exit code."""
    check_listen(spool, opts)
    check_tls(opts)
    check_bind(opts)
    from . import _gunicorn

    _gunicorn.bigger_reads()
    _more_open_files()
    (shared, lock), master = metrics_dir(), os.getpid()
    try:
        app = make_app(spool, threads=opts.threads, read_timeout=opts.read_timeout)
        # python-multipart logs each malformed upload; the client already gets the reason
        logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
        _gunicorn.Embedded(app, _settings(spool, opts, shared)).run()
    finally:
        if os.getpid() == master:  # a worker's exit passes here too (gunicorn forks in this call)
            import shutil

            shutil.rmtree(shared, ignore_errors=True)
        os.close(lock)
    return 0


def _settings(spool: Spool, opts: ServeOptions, shared: str = "") -> dict[str, Any]:
    """Return gunicorn's settings for opts; shared: the workers' metrics directory."""
    from . import _gunicorn

    hooks = _Hooks(spool, opts, shared)
    settings: dict[str, Any] = {
        "bind": opts.listen,
        "workers": opts.workers,
        "worker_class": _gunicorn.worker_class(
            spread=opts.workers > 1, read_timeout=opts.read_timeout, max_per_address=opts.max_per_address
        ),
        "threads": opts.threads,
        "timeout": 600,
        "graceful_timeout": 30,
        "keepalive": 30,
        "errorlog": "-",
        "accesslog": "-" if opts.verbose > 1 else None,
        "loglevel": "info" if opts.verbose > 0 else "warning",
        "proc_name": "dropr-serve",
        "when_ready": hooks.when_ready,
        "post_fork": hooks.post_fork,
        "post_worker_init": hooks.post_worker_init,
        "child_exit": hooks.child_exit,
        "limit_request_line": 8190,
    }
    if opts.certfile:
        settings["certfile"] = opts.certfile
        settings["keyfile"] = opts.keyfile
        settings["ssl_context"] = _TLSContexts(opts.read_timeout)
    return settings


class _Hooks:
    """gunicorn's server hooks for one dropr-serve."""

    def __init__(self, spool: Spool, opts: ServeOptions, shared: str = "") -> None:
        self.spool = spool
        self.opts = opts
        self.shared = shared  # the workers' metrics directory

    def when_ready(self, server: Any) -> None:
        """Log each address listened on (port 0 gets one): one line each, on stderr."""
        import socket

        for lst in server.LISTENERS:
            # Accepted sockets inherit this: gunicorn writes the status line and the body
            # separately, and Nagle plus a delayed ACK would hold the answer up to 40 ms.
            if lst.sock.family in (socket.AF_INET, socket.AF_INET6):
                lst.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host, port = lst.sock.getsockname()[:2]
            scheme = "https" if self.opts.certfile else "http"
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets, as in URLs
            line = f"listening addr={where} url={scheme}://{where}/ node={self.spool.node}"
            sys.stderr.write(f"dropr-serve: {line}\n")
        sys.stderr.flush()

    def post_fork(self, server: Any, worker: Any) -> None:
        """Let TERM end a new worker until it sets its own handlers.

        A new worker inherits the master's handlers, which only queue a signal for the
        master's loop: a TERM in the moments before the worker sets its own would be
        lost, and the stop would wait out graceful_timeout.
        """
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)

    def post_worker_init(self, worker: Any) -> None:
        """Start the worker's purge thread and quiet its read-timeout tracebacks."""
        _purge_in_background(self.spool)
        logging.getLogger("gunicorn.error").addFilter(_QuietTimeouts(self.opts.read_timeout))

    def child_exit(self, server: Any, worker: Any) -> None:
        """Mark a worker that exited dead in the metrics directory (in the master)."""
        if self.shared:
            from .metrics import worker_gone

            worker_gone(worker.pid, self.shared)
