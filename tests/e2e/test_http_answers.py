"""dropr-serve's HTTP answers follow the RFCs, and every refusal says why in words.

A real dropr-serve (and, where it is installed, a real nginx with
examples/nginx-dropr.conf in front), asked with http.client and raw sockets: a 401
names the scheme (RFC 6750), a 405 the methods (RFC 9110), a message header is
refused with a reason in words and as strictly as dropr.7 describes it, an upload
cut short is a truncated upload, and the requests gunicorn refuses itself are
answered in dropr's JSON, not in an HTML page.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from helpers import Node, Nodes, free_port, make_ca, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-of-a"
BOUNDARY = "dropr-answers-7c1e"
# What a reason must not look like: Python's words for its own exceptions.
PYTHON = re.compile(
    r"invalid literal|dictionary update|codec|Traceback|\w+Error\b|\w+Exception\b|NoneType|None\b"
)


class Answer:
    """An HTTP answer: status, headers (names in lower case) and the body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """Return the body as JSON, checking the answer says it is JSON."""
        assert self.headers.get("content-type") == "application/json", (self.headers, self.body[:200])
        return json.loads(self.body)

    def reason(self) -> str:
        """Return the {"error": REASON} of a refusal, checking it is in words."""
        why = self.json()["error"]
        assert isinstance(why, str) and why and not PYTHON.search(why), why
        return why


def _answer(resp: http.client.HTTPResponse) -> Answer:
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


def ask(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    """Send one request to a dropr-serve (or its proxy) at url; return the answer."""
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return _answer(conn.getresponse())
    finally:
        conn.close()


def ask_raw(url: str, request: bytes, half_close: bool = False) -> Answer:
    """Send request bytes as they are (shut our side down after them with half_close)."""
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return _answer(resp)


def form(parts: list[tuple[str, bytes]]) -> bytes:
    """Return a multipart/form-data body: one "m" part per (filename, content)."""
    out = b""
    for filename, content in parts:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="m"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def b(nodes: Nodes) -> Node:
    """Node b serving, with a token for node a."""
    node = nodes("b")
    node.config(f'[serve.tokens]\n"{TOKEN}" = "a"\n')
    (node.spool / "dropr.toml").chmod(0o600)
    node.serve()
    return node


# -- 401 and 405 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/status"])
def test_a_401_names_the_bearer_scheme(b: Node, path: str) -> None:
    """RFC 6750 3: a 401 carries WWW-Authenticate: Bearer, with error="invalid_token"
    when a token was given but is not known (RFC 9110 15.5.2: a 401 must carry one)."""
    none = ask(b.url, "POST", path, b"{}")
    assert none.status == 401
    assert none.headers.get("www-authenticate") == "Bearer"
    assert none.reason() == "no bearer token"

    wrong = ask(b.url, "POST", path, b"{}", {"Authorization": "Bearer not-a-token"})
    assert wrong.status == 401
    assert wrong.headers.get("www-authenticate") == 'Bearer error="invalid_token"'
    assert wrong.reason() == "unknown bearer token"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/messages", "POST"),
        ("PUT", "/v1/status", "POST"),
        ("POST", "/v1/health", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
    ],
)
def test_a_405_names_the_allowed_methods(b: Node, method: str, path: str, allow: str) -> None:
    """RFC 9110 15.5.6: a 405 carries Allow, the methods the route has (ROUTES)."""
    got = ask(b.url, method, path)
    assert got.status == 405
    assert got.headers.get("allow") == allow
    assert got.reason().endswith(f"only {allow}")


# -- the message header --------------------------------------------------------------------------

GOOD = m.Header("hdr-good", "default", 5, 1733390000000000, 0, 5, m.crc32(b"hello")).pack()
LINE = GOOD.replace(b"id=hdr-good", b"id=hdr-bad").rstrip()  # the cases' header, good as it is


def _header(line: bytes) -> bytes:
    return line.ljust(m.HEADER_SIZE - 1) + b"\n"


# (name, header, the reason's words): each was taken by int() or refused in Python's words
HEADERS = [
    ("nul-padded", LINE + b"\0" * (m.HEADER_SIZE - 1 - len(LINE)) + b"\n", "field k is not 8 lowercase hex"),
    ("stray-word", _header(LINE.replace(b" k=", b" stray k=")), "'stray' is not a key=value field"),
    ("plus-sign", _header(LINE.replace(b" s=5", b" s=+5")), "field s is not decimal digits"),
    ("underscore", _header(LINE.replace(b" c=", b" c=1_")), "field c is not decimal digits"),
    ("hex-size", _header(LINE.replace(b" s=5", b" s=0x5")), "field s is not decimal digits"),
    ("empty", _header(LINE.replace(b" d=0", b" d=")), "field d is not decimal digits"),
    ("upper-hex", _header(LINE.replace(LINE[-8:], LINE[-8:].upper())), "field k is not 8 lowercase hex"),
    ("short-crc", _header(LINE[:-1]), "field k is not 8 lowercase hex"),
    ("p-twice", _header(LINE.replace(b" k=", b" p=1 k=")), "field p given twice"),
    ("p-two-digits", _header(LINE.replace(b" p=5", b" p=05")), "field p out of range"),
    ("not-ascii", _header(LINE.replace(b"ch=default", "ch=d\u00e9faut".encode())), "not ASCII"),
    ("no-crc", _header(LINE[: LINE.index(b" k=")]), "no k= field"),
]


def test_a_bad_message_header_is_refused_in_words(b: Node) -> None:
    """Each part is refused for its own reason, in words (not "invalid literal for int()
    with base 16" nor "dictionary update sequence element #7"), and a header is read as
    dropr.7 says: p, c, d and s ASCII digits only, k 8 lowercase hex digits. The good
    part of the same upload is stored."""
    parts = [(name, raw + b"hello") for name, raw, _ in HEADERS] + [("hdr-good", GOOD + b"hello")]
    got = ask(b.url, "POST", "/v1/messages", form(parts), FORM)
    assert got.status == 200, got.body
    results = got.json()["results"]
    assert len(results) == len(parts)
    for (name, _, words), result in zip(HEADERS, results[:-1], strict=True):
        assert result["status"] == "refused", (name, result)
        assert result["reason"].startswith("bad message header: "), (name, result)
        assert words in result["reason"], (name, result)
        assert not PYTHON.search(result["reason"]), (name, result)
    assert results[-1] == {"id": "hdr-good", "status": "stored"}


def test_a_header_the_sender_writes_is_still_read(b: Node) -> None:
    """The strict reading refuses nothing dropr-put writes: leading zeros in c, d and s,
    a name not known (a later version's field), all the priorities."""
    line = LINE.replace(b" c=", b" c=000").replace(b" d=0", b" d=00 later=1")
    parts = [("zeros", _header(line) + b"hello")]
    for p in range(10):
        h = m.Header(f"prio-{p}", "default", p, 1, 0, 5, m.crc32(b"hello"))
        parts.append((h.ident, h.pack() + b"hello"))
    got = ask(b.url, "POST", "/v1/messages", form(parts), FORM)
    assert got.status == 200, got.body
    assert [r["status"] for r in got.json()["results"]] == ["stored"] * len(parts)


# -- bodies cut short, and requests gunicorn refuses itself -------------------------------------


def test_an_upload_cut_short_is_a_truncated_upload(b: Node) -> None:
    """A chunked upload whose client stops sending (gunicorn's NoMoreData) was a 503
    "I/O error: None; try later": it is a truncated upload, as with a Content-Length."""
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in FORM.items())
        + "\r\n"
    ).encode()
    got = ask_raw(b.url, head + b"400\r\n" + form([("x", GOOD)])[:100], half_close=True)
    assert got.status == 400
    assert got.reason() == "truncated upload; nothing stored"
    assert "I/O error" not in b.serve_log.read_text()


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"POST /v1/messages HTTP/1.1\r\nHost: b\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /v1/status HTTP/1.1\r\nHost: b\r\nContent-Length: 1_0\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nHost: b\r\nBad Name: 1\r\n\r\n", 400),
        (b"GET /v1/health HTTP/9.1\r\nHost: b\r\n\r\n", 400),
        (b"GET /" + b"x" * 8192 + b" HTTP/1.1\r\nHost: b\r\n\r\n", 414),
    ],
    ids=["negative-length", "underscore-length", "bad-header-name", "bad-version", "long-line"],
)
def test_requests_gunicorn_refuses_get_our_json(b: Node, request_head: bytes, status: int) -> None:
    """gunicorn answers these before the application runs, with its HTML error page: the
    answer is dropr's {"error": REASON}, with the same status."""
    got = ask_raw(b.url, request_head)
    assert got.status == status
    assert b"<html" not in got.body.lower()
    assert got.reason().endswith("nothing stored")


def test_head_is_answered_without_a_body_and_without_a_log_line(b: Node) -> None:
    """HEAD gets GET's headers; the application sends no body, which gunicorn dropped
    with a line on stderr for every probe."""
    for path in ("/", "/v1/health"):
        got = ask(b.url, "HEAD", path)
        assert got.status == 200
        assert got.body == b""
        assert int(got.headers["content-length"]) == len(ask(b.url, "GET", path).body)
    assert "no-body response" not in b.serve_log.read_text()


# -- the nginx example ---------------------------------------------------------------------------

NGINX_EXAMPLE = ROOT / "examples" / "nginx-dropr.conf"


def nginx_config(example: str, *, listen: int, upstream: str, cert: Path, key: Path) -> str:
    """Return the example with this test's addresses and certificate (each found once)."""
    edits = [
        ("    server 127.0.0.1:8080;\n", f"    server {upstream};\n"),
        ("    listen 8443 ssl;\n", f"    listen 127.0.0.1:{listen} ssl;\n"),
        ("    listen [::]:8443 ssl;\n", ""),
        ("/etc/ssl/dropr/fullchain.pem", str(cert)),
        ("/etc/ssl/dropr/privkey.pem", str(key)),
    ]
    for old, new in edits:
        assert example.count(old) == 1, f"examples/nginx-dropr.conf: {old!r} not there once"
        example = example.replace(old, new)
    return example


@pytest.fixture
def nginx(tmp_path: Path, b: Node) -> Iterator[tuple[str, Path]]:
    """nginx on 127.0.0.1 with examples/nginx-dropr.conf in front of b: (its URL, its CA)."""
    exe = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if exe is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    ca, cert, key = make_ca(tmp_path / "certs")
    d = tmp_path / "nginx"
    d.mkdir()
    port = free_port()
    upstream = b.url.split("//")[1].strip("/")
    example = nginx_config(NGINX_EXAMPLE.read_text(), listen=port, upstream=upstream, cert=cert, key=key)
    (d / "dropr.conf").write_text(example)
    built = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=30).stderr
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # those built in: not /var/lib/nginx's
    temps = "".join(
        f"    {k}_temp_path {d}/{k};\n" for k in kinds if f"--http-{k.replace('_', '-')}-" in built
    )
    (d / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {d}/access.log;\n{temps}    include {d}/dropr.conf;\n}}\n"
    )
    args = [exe, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")]
    test = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, f"nginx -t: {test.stderr}"
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, 20, "nginx to listen")
        assert proc.poll() is None, (d / "error.log").read_text()
        yield f"https://127.0.0.1:{port}/", ca
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful; by its PID
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_base_url_answers_through_the_nginx_example(nginx: tuple[str, Path], nodes: Nodes) -> None:
    """dropr.7 promises GET on the base URL itself as a health probe: through the nginx
    example it was nginx's 404. A delivery goes through it too."""
    url, ca = nginx
    ctx = ssl.create_default_context(cafile=str(ca))
    host, port = url.split("//")[1].strip("/").rsplit(":", 1)
    for method, path in [("GET", "/"), ("GET", "/v1/health"), ("HEAD", "/")]:
        conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=ctx)
        try:
            conn.request(method, path)
            got = _answer(conn.getresponse())
        finally:
            conn.close()
        assert got.status == 200, (method, path, got.body[:300])
        if method == "GET":
            assert got.json() == {"ok": True, "node": "b"}
    a = nodes("a")
    a.config(f'[peers.b]\nurl = "{url}"\ncafile = "{ca}"\ntoken = "{TOKEN}"\n')
    (a.spool / "dropr.toml").chmod(0o600)
    ident = a.put("through nginx", "--to", "b")
    a.send_once(check=True)
    assert a.states("out") == {ident: "sent"}
