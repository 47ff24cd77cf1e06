"""The gunicorn internals dropr._gunicorn relies on still have the shapes it uses.

Each failure names what changed in the installed gunicorn. dropr-serve still runs
then (gunicorn's own gthread worker, bodies read through WSGI), but without its read
timeout on request headers, lingering threads and spreading: update dropr/_gunicorn.py
to the new layout (or pin gunicorn) before releasing with that version.
"""

from __future__ import annotations

import inspect
import io
import os
import socket
import ssl
from collections.abc import Iterator

import gunicorn
import pytest
from dropr import _gunicorn
from gunicorn.config import Config
from gunicorn.http import body, unreader, wsgi
from gunicorn.http.parser import RequestParser
from gunicorn.workers import gthread

WHERE = f"gunicorn {gunicorn.__version__}"


def test_the_gthread_worker_has_the_methods_dropr_worker_overrides() -> None:
    changes = _gunicorn.layout_changes()
    assert not changes, f"{WHERE}: " + "; ".join(changes)
    assert _gunicorn.worker_class(spread=True) is _gunicorn.DroprWorker


def test_dropr_worker_overrides_only_what_layout_changes_checks() -> None:
    ours = {n for n, v in vars(_gunicorn.DroprWorker).items() if callable(v) and not n.startswith("_")}
    unchecked = ours & set(dir(gthread.ThreadWorker)) - set(_gunicorn.WORKER_METHODS)
    assert not unchecked, f"DroprWorker overrides {sorted(unchecked)}: add them to WORKER_METHODS"


@pytest.fixture
def worker() -> Iterator[gthread.ThreadWorker]:
    w = gthread.ThreadWorker(0, os.getpid(), [], None, 30, Config(), None)
    yield w
    w.tmp.close()


def test_the_worker_has_the_attributes_dropr_worker_reads(worker: gthread.ThreadWorker) -> None:
    for name in ("alive", "nr_conns", "cfg"):
        assert hasattr(worker, name), f"{WHERE}: ThreadWorker has no attribute {name!r} any more"
    for name in ("threads", "is_ssl", "workers", "keepalive"):
        assert hasattr(worker.cfg, name), f"{WHERE}: gunicorn's Config has no {name!r} any more"


def test_the_worker_makes_a_socket_blocking_before_each_request() -> None:
    """TimedSSLSocket sets its timeout when gunicorn calls setblocking(True) on it."""
    for where in (gthread.ThreadWorker.handle, gthread.TConn.init):
        assert "sock.setblocking(True)" in inspect.getsource(where), (
            f"{WHERE}: {where.__qualname__} no longer calls sock.setblocking(True): TLS "
            "connections get no read timeout (see dropr._gunicorn.TimedSSLSocket)"
        )
    assert "sslsocket_class" in vars(ssl.SSLContext), "ssl.SSLContext.sslsocket_class is gone"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_connection_keeps_its_parser_and_read_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    """DroprWorker._linger looks at conn.parser.unreader.buf for bytes already read."""
    conn = gthread.TConn(Config(), pair[0], ("127.0.0.1", 1), ("127.0.0.1", 2))
    assert hasattr(conn, "sock") and hasattr(conn, "parser"), f"{WHERE}: TConn has no sock or parser"
    conn.init()
    buf = getattr(getattr(conn.parser, "unreader", None), "buf", None)
    assert isinstance(buf, io.BytesIO), f"{WHERE}: TConn.parser.unreader.buf is {type(buf)}, not a BytesIO"


def test_a_body_of_known_length_is_read_from_the_socket_and_the_next_request_follows(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """read_body takes Body.reader (a LengthReader: length, unreader.buf) and Body.buf."""
    server, client = pair
    data = os.urandom(60_000)  # within the socket pair's buffer: nobody reads yet
    head = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data)
    client.sendall(head + data[:1000])  # part of the body arrives with the headers
    cfg = Config()
    parser = RequestParser(cfg, server, ("127.0.0.1", 1))
    req = next(parser)
    assert isinstance(req.body, body.Body), f"{WHERE}: a request's body is {type(req.body)}"
    reader = req.body.reader
    assert isinstance(reader, body.LengthReader), f"{WHERE}: a body's reader is {type(reader)}"
    shapes = ((reader, "length", int), (req.body, "buf", io.BytesIO), (reader, "unreader", object))
    for obj, attr, kind in shapes:
        assert isinstance(getattr(obj, attr, None), kind), f"{WHERE}: {type(obj).__name__}.{attr} changed"
    assert isinstance(reader.unreader.buf, io.BytesIO), f"{WHERE}: the reader's unreader.buf changed"
    _, environ = wsgi.create(req, server, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
    client.sendall(data[1000:] + b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")  # and a pipelined request

    got: list[bytes] = []
    assert _gunicorn.read_body(environ, lambda chunk: got.append(bytes(chunk))), "not read from the socket"
    assert b"".join(got) == data
    assert reader.length == 0
    following = next(parser)  # gunicorn goes on as if it had read the body itself
    assert (following.method, following.path) == ("GET", "/v1/health")


def test_another_body_is_left_to_wsgi() -> None:
    assert not _gunicorn.read_body({"wsgi.input": io.BytesIO(b"x")}, lambda chunk: None)


def test_the_socket_reader_still_takes_a_chunk_size() -> None:
    """bigger_reads changes SocketUnreader's chunk only where max_body_chunk is missing."""
    params = list(inspect.signature(unreader.SocketUnreader.__init__).parameters)
    assert params == ["self", "sock", "max_chunk"], f"{WHERE}: SocketUnreader.__init__ takes {params}"
    before = unreader.SocketUnreader.__init__
    _gunicorn.bigger_reads()
    if hasattr(unreader.SocketUnreader, "max_body_chunk"):
        assert unreader.SocketUnreader.__init__ is before
