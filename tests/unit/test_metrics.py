"""metrics.py in this process: the counts of each refusal the receiver makes, who may read,
serve.metrics_tokens. (tests/e2e/test_metrics.py runs the real server with two workers.)"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr.config import Config
from dropr.errors import ConfigError
from dropr.metrics import is_loopback, reason_class
from dropr.server import App, make_app
from dropr.spool import Spool
from prometheus_client.parser import text_string_to_metric_families

BOUNDARY = "metrics-unit-boundary"


def _part(
    payload: bytes, *, size: int | None = None, crc: int | None = None, header: bytes | None = None
) -> bytes:
    hdr = (
        header
        or m.Header(
            f"u{abs(hash((payload, size, crc))):x}",
            "default",
            5,
            m.now_us(),
            0,
            len(payload) if size is None else size,
            m.crc32(payload) if crc is None else crc,
        ).pack()
    )
    return hdr + payload


def _upload(parts: list[bytes]) -> bytes:
    out = bytearray()
    for i, content in enumerate(parts):
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="m"; filename="p{i}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


def _call(app: Any, path: str, body: bytes = b"", **environ: str) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    env = {"REQUEST_METHOD": "POST" if body else "GET", "PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1",
           "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), "HTTP_X_DROPR_ORIGIN": "a",
           "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", **environ}  # fmt: skip
    out = b"".join(app(env, start_response))
    return got["status"], got["headers"], out


def _value(text: str, metric: str, /, **labels: str) -> float:
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> App:
    monkeypatch.setenv("DROPR_NODE", "b")
    spool = Spool(str(tmp_path / "b"), Config({"limits": {"max_message_size": 100}}))
    made = make_app(spool)
    assert isinstance(made, App)
    return made


def test_every_refusal_of_the_receiver_has_its_class(app: App) -> None:
    parts = [
        _part(b"good"),
        _part(b"bad sum", crc=1),
        _part(b"x" * 200),  # over max_message_size
        _part(b"short", size=9),
        _part(b"long", size=2),
        b"nonsense that is no header",
        _part(b"", header=b"x" * m.HEADER_SIZE),
    ]
    status, _, body = _call(app, "/v1/messages", _upload(parts))
    assert status == "200 OK", body
    results = json.loads(body)["results"]
    assert [r["status"] for r in results] == ["stored"] + ["refused"] * 6
    classes = [reason_class(r["reason"]) for r in results[1:]]
    assert classes == ["checksum", "too_large", "length", "length", "header", "header"], results
    _, headers, text = _call(app, "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    text_s = text.decode()
    assert _value(text_s, "dropr_serve_messages_total", outcome="stored") == 1
    for cls, n in (("checksum", 1), ("too_large", 1), ("length", 2), ("header", 2)):
        assert _value(text_s, "dropr_serve_messages_total", outcome="refused", reason=cls) == n, cls
    assert _value(text_s, "dropr_serve_requests_total", route="/v1/messages", outcome="ok") == 1


def test_an_unknown_reason_is_other() -> None:
    assert reason_class("some reason of a later release") == "other"


def test_paths_not_served_share_one_label(app: App) -> None:
    for i in range(50):
        _call(app, f"/nope/{i}")
    _, _, text = _call(app, "/metrics")
    assert _value(text.decode(), "dropr_serve_requests_total", route="other", code="404") == 50
    assert app.meter is not None
    assert list(app.meter._kids) == [("/metrics", "200 OK")]  # no entry per path not served


@pytest.mark.parametrize(
    "addr, headers, loopback",
    [
        ("127.0.0.1", {}, True),
        ("127.0.0.2", {}, True),
        ("::1", {}, True),
        ("::ffff:127.0.0.1", {}, True),
        ("192.0.2.1", {}, False),
        ("::ffff:192.0.2.1", {}, False),
        ("", {}, False),
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "192.0.2.1"}, False),
        ("127.0.0.1", {"HTTP_FORWARDED": "for=192.0.2.1"}, False),
        ("127.0.0.1", {"HTTP_X_REAL_IP": "192.0.2.1"}, False),
    ],
)
def test_who_is_loopback(addr: str, headers: dict[str, str], loopback: bool) -> None:
    assert is_loopback({"REMOTE_ADDR": addr, **headers}) is loopback


def test_metrics_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPR_NODE", "b")
    spool = Spool(str(tmp_path / "b"), Config({"serve": {"metrics_tokens": ["s3cret-token"]}}, path="x.toml"))
    app = make_app(spool)
    status, headers, body = _call(app, "/metrics", REMOTE_ADDR="192.0.2.1")
    assert status.startswith("401") and headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body) == {"error": "no bearer token for /metrics"}
    status, headers, _ = _call(app, "/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION="Bearer nope")
    assert status.startswith("401") and headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    status, _, _ = _call(app, "/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION="bearer s3cret-token")
    assert status == "200 OK"
    assert spool.config.secrets == ["x.toml"]  # the config file holds a token: privacy.warn looks at it


def test_metrics_tokens_none_is_403(app: App) -> None:
    status, _, body = _call(app, "/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION="Bearer any")
    assert status.startswith("403")
    assert "serve.metrics_tokens" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "value, why",
    [
        ("tok", "serve.metrics_tokens must be a list of tokens in quotes"),
        ([1], "serve.metrics_tokens must be a list of tokens in quotes"),
        (["two words"], "each token in serve.metrics_tokens must be printable ASCII"),
        ([""], "each token in serve.metrics_tokens must be printable ASCII"),
    ],
)
def test_bad_metrics_tokens_one_line(value: object, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config({"serve": {"metrics_tokens": value}}, path="dropr.toml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("bad config dropr.toml: ") and why in text, text
