"""Configuration: spool location, ``dropr.toml``, peers, limits, durations and sizes.

Kept free of heavy imports: ``dropr-put`` loads this on every call, and
``tomllib`` is imported only when a config file actually exists.
"""

from __future__ import annotations

import os
import zlib

from .errors import ConfigError, DataError, UsageError
from .message import check_name

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

_DUR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip


def _split_number(text: str) -> tuple[float, str]:
    s = text.strip().lower()
    i = 0
    while i < len(s) and (s[i].isdigit() or s[i] == "."):
        i += 1
    if i == 0:
        raise ValueError(text)
    return float(s[:i]), s[i:].strip()


def parse_duration(text: str | int | float) -> float:
    """Return seconds for '500ms', '30s', '5m', '2h', '7d' (a bare number is seconds)."""
    if isinstance(text, int | float):
        if text < 0:
            raise DataError(f"bad duration {text!r}: must not be negative")
        return float(text)
    try:
        num, unit = _split_number(text)
        return num * _DUR[unit or "s"]
    except (KeyError, ValueError):
        raise DataError(f"bad duration {text!r}: write it like 500ms, 30s, 5m, 2h or 7d") from None


def parse_size(text: str | int) -> int:
    """Return bytes for '512', '64KiB', '10MB', '1GiB'."""
    if isinstance(text, int):
        if text < 0:
            raise DataError(f"bad size {text!r}: must not be negative")
        return text
    try:
        num, unit = _split_number(text)
        return int(num * _SIZE[unit])
    except (KeyError, ValueError):
        raise DataError(f"bad size {text!r}: write it like 512, 64KiB, 10MB or 1GiB") from None


def default_spool() -> str:
    """Return the spool directory from $DROPR_SPOOL or the per-user/system default."""
    env = os.environ.get("DROPR_SPOOL")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/spool/dropr"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "dropr")


class Peer:
    """A destination: a name (the outbox folder), a base URL and optional credentials."""

    __slots__ = ("name", "url", "token", "cafile")

    def __init__(self, name: str, url: str, token: str | None = None, cafile: str | None = None):
        self.name = name
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.cafile = cafile

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.url!r})"


def url_peer_name(url: str) -> str:
    """Return the outbox folder name for a peer given as a URL: host_port-crc."""
    rest = url.split("://", 1)[1]
    hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in hostport).strip("._-")[:30]
    return f"{safe or 'peer'}-{zlib.crc32(url.encode()) & 0xFFFFFFFF:08x}"


def is_url(text: str) -> bool:
    """Tell whether a --to argument is a URL rather than a peer name."""
    return text.startswith(("http://", "https://"))


class Config:
    """The parsed ``dropr.toml`` with defaults filled in."""

    def __init__(self, data: dict[str, Any] | None = None, path: str | None = None) -> None:
        data = data or {}
        self.path = path
        where = path or "config"
        try:
            self.node: str | None = data.get("node")
            if self.node is not None:
                if not isinstance(self.node, str):
                    raise ValueError('node must be a string, e.g. node = "web1"')
                check_name(self.node, "node")
            self.peers: dict[str, Peer] = {}
            for name, p in (data.get("peers") or {}).items():
                check_name(name, f"peer name {name!r}")
                if not isinstance(p, dict) or not is_url(str(p.get("url", ""))):
                    raise ValueError(f'peer {name!r} needs url = "http(s)://..."')
                token = p.get("token")
                if token is None and p.get("token_file"):
                    token = _read_secret(str(p["token_file"]))
                cafile = p.get("cafile") or (data.get("send") or {}).get("cafile")
                self.peers[name] = Peer(name, str(p["url"]), token, cafile)
            serve = data.get("serve") or {}
            self.listen: list[str] = list(serve.get("listen") or [])
            self.tokens: dict[str, str] = {str(k): str(v) for k, v in (serve.get("tokens") or {}).items()}
            if serve.get("tokens_file"):
                for line in _read_secret(str(serve["tokens_file"])).splitlines():
                    if line.strip() and not line.startswith("#"):
                        tok, _, node = line.partition(" ")
                        self.tokens[tok.strip()] = node.strip()
            for node in self.tokens.values():
                check_name(node, "a client node in serve.tokens")
            self.min_free = parse_size(serve.get("min_free", "64MiB"))
            self.certfile: str | None = serve.get("certfile")
            self.keyfile: str | None = serve.get("keyfile")
            limits = data.get("limits") or {}
            self.max_message_size = parse_size(limits.get("max_message_size", "1GiB"))
            self.max_attempts = int(limits.get("max_attempts", 0))
            self.retention = parse_duration(limits.get("retention", "7d"))
            self.quota = parse_size(limits.get("quota", 0))
            send = data.get("send") or {}
            self.backoff_min = parse_duration(send.get("backoff_min", "1s"))
            self.backoff_max = parse_duration(send.get("backoff_max", "5m"))
            self.connect_timeout = parse_duration(send.get("connect_timeout", "10s"))
            self.timeout = parse_duration(send.get("timeout", "10m"))
            self.cafile: str | None = send.get("cafile")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"bad config {where}: {exc}; fix the file") from None
        except DataError as exc:
            raise ConfigError(f"bad config {where}: {exc}") from None

    def peer(self, target: str) -> Peer:
        """Resolve a --to argument (a configured name or a URL) to a Peer."""
        if is_url(target):
            for p in self.peers.values():
                if p.url == (target if target.endswith("/") else target + "/"):
                    return p
            return Peer(url_peer_name(target), target, None, self.cafile)
        if target in self.peers:
            return self.peers[target]
        from .errors import UnavailableError

        known = ", ".join(sorted(self.peers)) or "none configured"
        raise UnavailableError(
            f"unknown peer {target!r} (known: {known}); add [peers.{target}] to the config or give a URL"
        )


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def config_path(spool: str, explicit: str | None = None) -> tuple[str, bool]:
    """Return the config file path and whether it was named explicitly."""
    if explicit:
        return explicit, True
    env = os.environ.get("DROPR_CONFIG")
    if env:
        return env, True
    return os.path.join(spool, "dropr.toml"), False


def load(spool: str, explicit: str | None = None) -> Config:
    """Load the config for a spool; a missing default file is an empty config."""
    path, named = config_path(spool, explicit)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        if named:
            raise ConfigError(f"config file {path} does not exist; create it or drop --config") from None
        return Config()  # no config: the spool's own problems are reported when it is opened
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"bad config {path}: {exc}; fix the TOML syntax") from None
    return Config(data, path)


def check_priority(p: int) -> int:
    """Return p if it is a priority 0-9, else raise UsageError."""
    if not 0 <= p <= 9:
        raise UsageError(f"bad priority {p}: use 0 (most urgent) to 9")
    return p
