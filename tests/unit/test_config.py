"""Durations, sizes, loading dropr.toml and resolving --to arguments to peers."""

from __future__ import annotations

from pathlib import Path

import pytest
from dropr import config as c
from dropr.errors import (
    EX_CONFIG,
    EX_DATAERR,
    EX_UNAVAILABLE,
    EX_USAGE,
    ConfigError,
    DataError,
    UnavailableError,
    UsageError,
)

pytestmark = pytest.mark.usefixtures("clean_dropr_env")


# -- durations and sizes ------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("1w", 7 * 86400),
        ("10", 10),
        ("1.5h", 5400),
        ("0", 0),
        (" 5m ", 300),
        (45, 45),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert c.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "5x", "-5s", "1.2.3s", "ms", "s5", "5 parsecs", -1, "inf", "nan", float("inf"), True, [5]],
)
def test_parse_duration_rejects(bad: str | int) -> None:
    with pytest.raises(DataError) as exc:
        c.parse_duration(bad)
    assert exc.value.code == EX_DATAERR
    assert "duration" in str(exc.value)


@pytest.mark.parametrize(
    "text, size",
    [
        ("512", 512),
        ("64KiB", 64 * 1024),
        ("10MB", 10_000_000),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("2kb", 2000),
        ("1.5KiB", 1536),
        ("0", 0),
        ("7b", 7),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert c.parse_size(text) == size


@pytest.mark.parametrize("big", ["99999999999999999999d", "36501d", 1e300, "1e308"])
def test_parse_duration_past_100_years_is_refused(big: str | float) -> None:
    """Such a duration overflowed where it ended up: a lease's mtime (time_t), a
    release's delay, dropr-angel's select(), a socket timeout."""
    with pytest.raises(DataError, match=r"duration"):
        c.parse_duration(big)
    assert c.parse_duration("36500d") == 36500 * 86400


@pytest.mark.parametrize("big", ["99999999999999999999TiB", 1 << 63, "9999999999999999999"])
def test_parse_size_past_a_file_offset_is_refused(big: str | int) -> None:
    with pytest.raises(DataError, match=r"at most"):
        c.parse_size(big)
    assert c.parse_size((1 << 63) - 1) == (1 << 63) - 1


@pytest.mark.parametrize("bad", ["", "lots", "5XB", "-1", "KiB", -3, 1.5, 1e999, True])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(DataError) as exc:
        c.parse_size(bad)
    assert exc.value.code == EX_DATAERR


def test_check_priority() -> None:
    for p in range(10):
        assert c.check_priority(p) == p
    for p in (-1, 10, 99):
        with pytest.raises(UsageError) as exc:
            c.check_priority(p)
        assert exc.value.code == EX_USAGE


# -- loading ------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_default_config_is_empty(tmp_path: Path) -> None:
    cfg = c.load(str(tmp_path))
    assert cfg.peers == {} and cfg.node is None
    assert cfg.retention == 7 * 86400
    assert cfg.max_message_size == 1 << 30
    assert cfg.max_attempts == 0


def test_full_config_loads(tmp_path: Path) -> None:
    (tmp_path / "db1.token").write_text("tok-db1\n")
    _write(
        tmp_path / "dropr.toml",
        f"""
node = "web1"
[peers.db1]
url = "https://db1.example.net:8443"
token_file = "{tmp_path / "db1.token"}"
[peers.db2]
url = "http://127.0.0.1:8080/"
token = "inline"
[serve]
listen = ["127.0.0.1:8080"]
[serve.tokens]
"s3cr3t-from-web1" = "web1"
[limits]
max_message_size = "64KiB"
max_attempts = 3
retention = "2h"
""",
    )
    cfg = c.load(str(tmp_path))
    assert cfg.node == "web1"
    assert cfg.path == str(tmp_path / "dropr.toml")
    assert cfg.peers["db1"].url == "https://db1.example.net:8443/"
    assert cfg.peers["db1"].token == "tok-db1"
    assert cfg.peers["db2"].token == "inline"
    assert cfg.listen == ["127.0.0.1:8080"]
    assert cfg.tokens == {"s3cr3t-from-web1": "web1"}
    assert cfg.max_message_size == 65536
    assert cfg.max_attempts == 3
    assert cfg.retention == 7200


@pytest.mark.parametrize(
    "text",
    [
        "node = ",  # not TOML
        "[peers.db1\nurl = 'http://x/'",
        "[peers.db1]\ntoken = 'x'\n",  # peer without url
        "[peers.db1]\nurl = 'ftp://x/'\n",  # not http(s)
        "[peers.db1]\nurl = 5\n",
        "[peers.'a/b']\nurl = 'http://x/'\n",  # bad peer name
        "[peers.'.hidden']\nurl = 'http://x/'\n",
        "peers = 5\n",
        "node = '../x'\n",
        "node = ''\n",
        "[limits]\nretention = 'soon'\n",
        "[limits]\nmax_message_size = 'huge'\n",
        "[limits]\nmax_attempts = 'three'\n",
        "[serve]\nlisten = 5\n",
        "[serve.tokens]\n'tok' = '../evil'\n",
        "[serve.tokens]\n'tok' = 5\n",  # was node '5'
        "[serve.tokens]\n'two words' = 'web1'\n",
        "[serve.tokens]\n'caf\u00e9' = 'web1'\n",
        "[peers.db1]\nurl = 'http://x/'\ntoken = 'a\\r\\nX-Injected: yes'\n",  # a second header
        "[peers.db1]\nurl = 'http://x/'\ntoken = ''\n",
        "[peers.db1]\nurl = 'http://x/'\ntoken = 5\n",
        "[peers.db1]\nurl = 'http://127.0.0.1:99999/'\n",
        "[peers.db1]\nurl = 'http://x/ y'\n",
        "peers = 'x'\n",
        "limits = 5\n",
        "serve = [1]\n",
        "[peers]\ndb1 = 'http://x/'\n",
        "[limits]\nmax_message_size = 1e999\n",
        "[limits]\nmax_attempts = -1\n",
        "[limits]\nmax_attempts = true\n",
        "[limits]\nretention = '99999999999999999999d'\n",
        "[serve]\nlisten = ['127.0.0.1:8080', 5]\n",
        "[serve]\ncertfile = 5\n",
        "[send]\ncafile = ['x']\n",
        "[send]\nbackoff_min = '0s'\n",  # a failing peer retried in a tight loop
        "[send]\nbackoff_min = '10m'\nbackoff_max = '1m'\n",
        "[peers.db1]\nurl = 'http://x/'\ntoken_file = '/nonexistent/dropr-token'\n",
    ],
)
def test_bad_config_is_config_error_78(tmp_path: Path, text: str) -> None:
    _write(tmp_path / "dropr.toml", text)
    with pytest.raises(ConfigError) as exc:
        c.load(str(tmp_path))
    assert exc.value.code == EX_CONFIG
    assert "\n" not in str(exc.value)
    assert str(tmp_path / "dropr.toml") in str(exc.value) or "config" in str(exc.value)
    for internals in ("object has no attribute", "is not iterable", "object is not"):
        assert internals not in str(exc.value), "say what to write, not what Python tripped on"


def test_a_token_file_with_two_lines_is_refused(tmp_path: Path) -> None:
    """Its line break would have gone out inside the Authorization header."""
    (tmp_path / "db1.token").write_text("first\nsecond\n")
    _write(tmp_path / "dropr.toml", f"[peers.db1]\nurl = 'http://x/'\ntoken_file = '{tmp_path}/db1.token'\n")
    with pytest.raises(ConfigError, match="token"):
        c.load(str(tmp_path))


def test_listen_as_one_string_is_one_address(tmp_path: Path) -> None:
    """It was split into characters: bad --listen '1'."""
    _write(tmp_path / "dropr.toml", "[serve]\nlisten = '127.0.0.1:8080'\n")
    assert c.load(str(tmp_path)).listen == ["127.0.0.1:8080"]


def test_unknown_keys_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo (max_message_sise) was silently ignored, and the default applied."""
    _write(tmp_path / "dropr.toml", "colour = 1\n[limit]\nx = 1\n[limits]\nmax_message_sise = '1KiB'\n"
           "[peers.db1]\nurl = 'http://x/'\ntokn = 'x'\n")  # fmt: skip
    cfg = c.load(str(tmp_path))
    assert cfg.max_message_size == 1 << 30
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "warning" in err
    for key in ("colour", "limit", "limits.max_message_sise", "peers.db1.tokn"):
        assert key in err


def test_non_string_node_is_config_error(tmp_path: Path) -> None:
    from dropr.spool import Spool

    _write(tmp_path / "dropr.toml", "node = 5\n")
    with pytest.raises(ConfigError):
        cfg = c.load(str(tmp_path))
        Spool(str(tmp_path / "spool"), cfg)


def test_not_utf8_config_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "dropr.toml").write_bytes(b"node = '\xff'\n")
    with pytest.raises(ConfigError):
        c.load(str(tmp_path))


def test_missing_explicit_config_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        c.load(str(tmp_path), str(missing))
    assert exc.value.code == EX_CONFIG
    assert str(missing) in str(exc.value)


def test_missing_config_from_env_is_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPR_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError):
        c.load(str(tmp_path))


def test_unreadable_config_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "dropr.toml").mkdir()
    with pytest.raises(ConfigError):
        c.load(str(tmp_path))


def test_explicit_config_wins_over_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "dropr.toml", "node = 'default-file'\n")
    _write(tmp_path / "env.toml", "node = 'env-file'\n")
    _write(tmp_path / "arg.toml", "node = 'arg-file'\n")
    assert c.load(str(tmp_path)).node == "default-file"
    monkeypatch.setenv("DROPR_CONFIG", str(tmp_path / "env.toml"))
    assert c.load(str(tmp_path)).node == "env-file"
    assert c.load(str(tmp_path), str(tmp_path / "arg.toml")).node == "arg-file"


def test_default_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DROPR_SPOOL", str(tmp_path / "s"))
    assert c.default_spool() == str(tmp_path / "s")
    monkeypatch.delenv("DROPR_SPOOL")
    import os

    if os.geteuid() == 0:
        assert c.default_spool() == "/var/spool/dropr"
    else:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        assert c.default_spool() == str(tmp_path / "state" / "dropr")


# -- peers --------------------------------------------------------------------


def _cfg() -> c.Config:
    return c.Config(
        {
            "peers": {
                "db1": {"url": "https://db1.example.net:8443/"},
                "db2": {"url": "http://127.0.0.1:8080"},
            }
        }
    )


def test_peer_by_name() -> None:
    p = _cfg().peer("db1")
    assert (p.name, p.url) == ("db1", "https://db1.example.net:8443/")


def test_peer_by_configured_url_is_the_configured_peer() -> None:
    assert _cfg().peer("http://127.0.0.1:8080/").name == "db2"
    assert _cfg().peer("http://127.0.0.1:8080").name == "db2"


def test_peer_by_unknown_url_gets_a_safe_stable_name() -> None:
    cfg = _cfg()
    p = cfg.peer("http://127.0.0.1:9/")
    assert p.url == "http://127.0.0.1:9/"
    assert p.name == cfg.peer("http://127.0.0.1:9/").name
    assert p.name != cfg.peer("http://127.0.0.1:9/other/").name
    from dropr.message import check_name

    check_name(p.name)
    odd = cfg.peer("https://user:pw@[::1]:8443/x/../../z")
    check_name(odd.name)
    assert "pw" not in odd.name and "/" not in odd.name


@pytest.mark.parametrize("target", ["db3", "DB1", "", "../x", "ftp://db1/"])
def test_unknown_peer_is_unavailable_69(target: str) -> None:
    with pytest.raises(UnavailableError) as exc:
        _cfg().peer(target)
    assert exc.value.code == EX_UNAVAILABLE
    assert "db1, db2" in str(exc.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http:///x",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:-1/",
        "http://127.0.0.1:abc/",
        "http://127.0.0.1:/",
        "http://127.0.0.1:9/ x",
        "http://127.0.0.1:9/\n",
        "http://[::1:9/",
        "http://127.0.0.1:9/\udcff",
        "http://h\u00e9te:9/",
        "http://127.0.0.1:9/?q=1",
        "http://127.0.0.1:9/#top",
    ],
)
def test_a_broken_url_is_refused_before_anything_is_stored(url: str) -> None:
    """Stored, it was retried for good: libcurl refused it each time as a temporary error."""
    with pytest.raises(UsageError) as exc:
        _cfg().peer(url)
    assert "bad peer URL" in str(exc.value) and exc.value.code == EX_USAGE


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "https://[::1]:8443/dropr/", "http://db1.example.net/"]
)
def test_good_urls_pass(url: str) -> None:
    assert _cfg().peer(url).url == url


def test_unknown_peer_without_config_says_none_configured() -> None:
    with pytest.raises(UnavailableError, match="none configured"):
        c.Config().peer("db1")


def test_resolve_dedups_and_requires_a_destination() -> None:
    from dropr.put import resolve

    cfg = _cfg()
    peers = resolve(cfg, ["db1", "db2", "db1", "http://127.0.0.1:8080/"])
    assert [p.name for p in peers] == ["db1", "db2"]
    with pytest.raises(UsageError):
        resolve(cfg, [])
