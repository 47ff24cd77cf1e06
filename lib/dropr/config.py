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


MAX_DURATION = 36500 * 86400.0  # 100 years: past any timestamp, sleep or timeout a system takes
MAX_SIZE = (1 << 63) - 1  # what a file offset holds


def parse_duration(text: str | int | float) -> float:
    """Return seconds for '500ms', '30s', '5m', '2h', '7d' (a bare number is seconds).

    At most 100 years: a longer one overflowed the timestamps, sleeps and timeouts it
    ends up in (time_t, select), far from where it was given."""
    try:
        if isinstance(text, bool) or not isinstance(text, int | float | str):
            raise ValueError(text)
        if isinstance(text, str):
            num, unit = _split_number(text)
            secs = num * _DUR[unit or "s"]
        else:
            secs = float(text)
            if secs < 0:
                raise DataError(f"bad duration {text!r}: must not be negative")
    except (KeyError, ValueError, OverflowError):
        raise DataError(f"bad duration {text!r}: write it like 500ms, 30s, 5m, 2h or 7d") from None
    if not secs <= MAX_DURATION:  # inf and nan too
        raise DataError(f"bad duration {text!r}: at most 36500d (100 years)")
    return secs


def parse_size(text: str | int) -> int:
    """Return bytes for '512', '64KiB', '10MB', '1GiB' (at most 8 EiB, a file offset)."""
    try:
        if isinstance(text, bool) or not isinstance(text, int | str):
            raise ValueError(text)
        if isinstance(text, int):
            if text < 0:
                raise DataError(f"bad size {text!r}: must not be negative")
            size = float(text) if text > MAX_SIZE else text
        else:
            num, unit = _split_number(text)
            size = num * _SIZE[unit]
    except (KeyError, ValueError, OverflowError):
        raise DataError(f"bad size {text!r}: write it like 512, 64KiB, 10MB or 1GiB") from None
    if not size <= MAX_SIZE:
        raise DataError(f"bad size {text!r}: at most 2^63-1 bytes")
    return int(size)


def default_spool() -> str:
    """Return the spool directory from $DROPR_SPOOL or the per-user/system default."""
    env = os.environ.get("DROPR_SPOOL")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/spool/dropr"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "dropr")


FAILOVER, SPREAD = "failover", "spread"  # the modes of a peer group (urls = [...])
MODES = (FAILOVER, SPREAD)
MEMBER_SEP = "+"  # a group member's outbox folder: "{group}+{crc32 of its url:08x}" (no peer
# name has a "+", so it never meets a peer's folder)


class Peer:
    """A destination: a name (the outbox folder), a base URL and optional credentials.

    The networks of hosts (dropr.7) add, each on its own kind of peer:
      members  a group (urls = [...]): one Peer per member, named member_name(group, url),
               with the group's token; ``url`` is the first member's; ``mode`` failover|spread
      via      a peer reached through a relay: the relay's name; ``url``, ``token`` and
               ``cafile`` are the relay's, and ``to`` is this peer's own name (X-Dropr-To)
      hold     a peer that comes to fetch its messages (no url: nothing is pushed to it)
      fetch    a peer this node fetches its own messages from (dropr-send --fetch)
      group    of a member: the name of its group
    """

    __slots__ = ("name", "url", "token", "cafile", "members", "mode", "via", "to", "hold", "fetch", "group")

    def __init__(self, name: str, url: str, token: str | None = None, cafile: str | None = None):
        self.name = name
        self.url = url if url.endswith("/") or not url else url + "/"
        self.token = token
        self.cafile = cafile
        self.members: list[Peer] = []
        self.mode = FAILOVER
        self.via: str | None = None
        self.to: str | None = None
        self.hold = False
        self.fetch = False
        self.group: str | None = None

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.url!r})"


def member_name(group: str, url: str) -> str:
    """Return the outbox folder of one member of a group: the group's name, "+", and the
    CRC-32 of the member's URL (so reordering urls moves no message to another member)."""
    url = url if url.endswith("/") else url + "/"
    return f"{group}{MEMBER_SEP}{zlib.crc32(url.encode()) & 0xFFFFFFFF:08x}"


def group_of(folder: str) -> str | None:
    """Return the group of a member's outbox folder, or None for any other folder."""
    group, sep, _ = folder.rpartition(MEMBER_SEP)
    return group if sep else None


def url_peer_name(url: str) -> str:
    """Return the outbox folder name for a peer given as a URL: host_port-crc."""
    rest = url.split("://", 1)[1]
    hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in hostport).strip("._-")[:30]
    return f"{safe or 'peer'}-{zlib.crc32(url.encode()) & 0xFFFFFFFF:08x}"


def is_url(text: str) -> bool:
    """Tell whether a --to argument is a URL rather than a peer name."""
    return text.startswith(("http://", "https://"))


_KNOWN = {
    "": {"node", "group", "peers", "serve", "limits", "send"},
    "peers.*": {"url", "urls", "mode", "via", "hold", "fetch", "token", "token_file", "cafile"},
    "serve": {
        "listen",
        "tokens",
        "tokens_file",
        "min_free",
        "certfile",
        "keyfile",
        "relay",
        "trust_relays",
        "metrics_tokens",
    },
    "limits": {"max_message_size", "max_attempts", "retention", "quota"},
    "send": {"backoff_min", "backoff_max", "connect_timeout", "timeout", "cafile", "failover_after"},
}


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}{key} must be a table: write [{where}{key}] and its keys below it")
    return value


def _text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f'{where}{key} must be a string in quotes, e.g. {key} = "..."')
    return value


def check_token(token: str, what: str) -> str:
    """Return a bearer token if it can go in an HTTP header as it is, else raise ValueError.

    Visible ASCII only: a line break would end the Authorization header and start
    another one, and other bytes do not survive the trip through HTTP."""
    if not token or not all("!" <= c <= "~" for c in token):
        raise ValueError(f"{what} must be printable ASCII without spaces or line breaks")
    return token


def check_url(url: str) -> str:
    """Return a peer's base URL if libcurl and the sender can use it, else raise DataError.

    Checked where a URL enters (the config, dropr-put --to): a bad one stored in the
    outbox was retried for good, libcurl refusing it each time as a temporary error.
    By hand, not urllib.parse: that import (and re's) made dropr-put's start 9 ms slower.
    """
    bad = f"bad peer URL {url!r}"
    if not is_url(url):
        raise DataError(f"{bad}: write http://HOST[:PORT]/ or https://HOST[:PORT]/")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise DataError(f"{bad}: no spaces, control or non-ASCII characters (percent-encode them)")
    if "?" in url or "#" in url:
        raise DataError(f"{bad}: a base URL has no ?query or #fragment")
    hostport = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
    if hostport.startswith("["):
        host, close, after = hostport[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise DataError(f"{bad}: an IPv6 address goes in brackets, e.g. http://[::1]:8080/")
        sep, port = after[:1], after[1:]
    else:
        host, sep, port = hostport.partition(":")
    if not host:
        raise DataError(f"{bad}: no host")
    if sep and not (port.isdigit() and 0 < int(port) <= 65535):
        raise DataError(f"{bad}: the port must be a number from 1 to 65535")
    return url


class Config:
    """The parsed ``dropr.toml`` with defaults filled in."""

    node: str | None
    group: str | None
    peers: dict[str, Peer]
    listen: list[str]
    tokens: dict[str, str]
    certfile: str | None
    keyfile: str | None
    max_attempts: int
    cafile: str | None
    relay: list[str]  # serve.relay: clients that may relay through this node
    trust_relays: list[str]  # serve.trust_relays: clients whose messages keep their origin (o=)
    metrics_tokens: list[str]  # serve.metrics_tokens: bearer tokens that may read GET /metrics
    failover_after: float

    def __init__(self, data: dict[str, Any] | None = None, path: str | None = None) -> None:
        data = data or {}
        self.path = path
        self.unknown: list[str] = []  # keys nobody reads: a typo, most likely (load warns)
        self.secrets: list[str] = []  # files that hold tokens: they should be private
        where = path or "config"
        try:
            self._unknown(data, "", "")
            self.node = _node(data)
            self.group = _text(data, "group", "")  # operators' group: see Spool
            if self.group is not None and not self.group.strip():
                raise ValueError('group must name a group, e.g. group = "dropr"; or leave it out')
            send = _table(data, "send", "")
            self.peers = {name: self._peer(name, p, send) for name, p in _table(data, "peers", "").items()}
            self._resolve_via()
            self._serve(_table(data, "serve", ""))
            self._limits(_table(data, "limits", ""))
            self._send(send)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"bad config {where}: {exc}; fix the file") from None
        except DataError as exc:
            raise ConfigError(f"bad config {where}: {exc}") from None

    def _peer(self, name: str, p: Any, send: dict[str, Any]) -> Peer:
        """Read one [peers.NAME] table (send.cafile is its default cafile); ``via`` is
        resolved once every peer is read (_resolve_via)."""
        check_name(name, f"peer name {name!r}")
        if not isinstance(p, dict):
            raise ValueError(f"peers.{name} must be a table: [peers.{name}] with url = ... below it")
        where = f"peers.{name}."
        self._unknown(p, "peers.*", where)
        url = _text(p, "url", where)
        urls = _urls(p.get("urls"), where)
        via = _text(p, "via", where)
        hold, fetch = _flag(p, "hold", where), _flag(p, "fetch", where)
        _check_kind(name, url, urls, via, hold, fetch, p.get("mode"))
        if url:
            check_url(url)
        token = _text(p, "token", where)
        token_file = _text(p, "token_file", where)
        if token is None and token_file:
            token = _read_secret(token_file)
            self.secrets.append(token_file)
        elif token is not None and self.path:
            self.secrets.append(self.path)
        if token is not None:
            check_token(token, f"the token of peer {name!r}")
        cafile = _text(p, "cafile", where) or _text(send, "cafile", "send.")
        peer = Peer(name, url or (urls[0] if urls else ""), token, cafile)
        peer.hold, peer.fetch, peer.via = hold, fetch, via
        if urls:
            peer.mode = p.get("mode", FAILOVER)
            for u in urls:
                member = Peer(member_name(name, u), u, token, cafile)
                member.group = name
                peer.members.append(member)
        return peer

    def _resolve_via(self) -> None:
        """Give each peer reached through a relay the relay's url and credentials."""
        for peer in self.peers.values():
            if peer.via is None:
                continue
            relay = self.peers.get(peer.via)
            if peer.via == peer.name:
                raise ValueError(f"peers.{peer.name}.via names the peer itself; name the relay in between")
            if relay is None:
                known = ", ".join(sorted(self.peers)) or "none"
                raise ValueError(f"peers.{peer.name}.via = {peer.via!r} is no peer (known: {known})")
            if relay.members or relay.via or relay.hold or not relay.url:
                raise ValueError(
                    f"peers.{peer.name}.via = {peer.via!r}: the relay must be a peer with one url"
                    " (not a group, a held peer or another via)"
                )
            peer.url, peer.to = relay.url, peer.name
            peer.token = relay.token if peer.token is None else peer.token
            peer.cafile = relay.cafile if peer.cafile is None else peer.cafile

    def _serve(self, serve: dict[str, Any]) -> None:
        """Read [serve]: listen addresses, client tokens, free-space floor, TLS files."""
        self._unknown(serve, "serve", "serve.")
        listen = serve.get("listen") or []
        if isinstance(listen, str):
            listen = [listen]
        if not isinstance(listen, list) or not all(isinstance(a, str) for a in listen):
            raise ValueError('serve.listen must be a list of addresses, e.g. listen = ["127.0.0.1:8080"]')
        self.listen = listen
        self.tokens = {}
        for tok, node in _table(serve, "tokens", "serve.").items():
            if not isinstance(node, str):
                raise ValueError('serve.tokens: each token\'s node must be a string, e.g. "..." = "web1"')
            self.tokens[check_token(tok, "each token in serve.tokens")] = node
            if self.path:
                self.secrets.append(self.path)
        tokens_file = _text(serve, "tokens_file", "serve.")
        if tokens_file:
            self.secrets.append(tokens_file)
            for line in _read_secret(tokens_file).splitlines():
                if line.strip() and not line.startswith("#"):
                    tok, _, node = line.strip().partition(" ")
                    self.tokens[check_token(tok, f"each token in {tokens_file}")] = node.strip()
        for node in self.tokens.values():
            check_name(node, "a client node in serve.tokens")
        self.min_free = parse_size(serve.get("min_free", "64MiB"))
        self.certfile = _text(serve, "certfile", "serve.")
        self.keyfile = _text(serve, "keyfile", "serve.")
        self.relay = _names(serve, "relay", "clients that may relay through this node")
        self.trust_relays = _names(serve, "trust_relays", "relays whose messages keep their origin")
        self.metrics_tokens = self._metrics_tokens(serve)

    def _metrics_tokens(self, serve: dict[str, Any]) -> list[str]:
        """Return serve.metrics_tokens: the bearer tokens that may read GET /metrics from
        an address other than loopback (a scraper), checked."""
        value = serve.get("metrics_tokens", [])
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ValueError(
                'serve.metrics_tokens must be a list of tokens in quotes, e.g. metrics_tokens = ["..."]'
            )
        for tok in value:
            check_token(tok, "each token in serve.metrics_tokens")
        if value and self.path:
            self.secrets.append(self.path)
        return value

    def _limits(self, limits: dict[str, Any]) -> None:
        """Read [limits]: message size, attempts, retention, quota."""
        self._unknown(limits, "limits", "limits.")
        self.max_message_size = parse_size(limits.get("max_message_size", "1GiB"))
        attempts = limits.get("max_attempts", 0)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError("limits.max_attempts must be a whole number, 0 (no limit) or more")
        self.max_attempts = attempts
        self.retention = parse_duration(limits.get("retention", "7d"))
        self.quota = parse_size(limits.get("quota", 0))

    def _send(self, send: dict[str, Any]) -> None:
        """Read [send]: backoff bounds, timeouts, the default cafile."""
        self._unknown(send, "send", "send.")
        self.backoff_min = parse_duration(send.get("backoff_min", "1s"))
        self.backoff_max = parse_duration(send.get("backoff_max", "5m"))
        if not 0 < self.backoff_min <= self.backoff_max:  # 0: a failing peer retried in a tight loop
            raise ValueError("send.backoff_min must be more than 0 and at most send.backoff_max")
        self.connect_timeout = parse_duration(send.get("connect_timeout", "10s"))
        self.timeout = parse_duration(send.get("timeout", "10m"))
        self.cafile = _text(send, "cafile", "send.")
        self.failover_after = parse_duration(send.get("failover_after", "5m"))

    def _unknown(self, table: dict[str, Any], kind: str, prefix: str) -> None:
        self.unknown += [f"{prefix}{k}" for k in table if k not in _KNOWN[kind]]

    def peer(self, target: str) -> Peer:
        """Resolve a --to argument (a configured name or a URL) to a Peer."""
        if is_url(target):
            try:
                check_url(target)
            except DataError as exc:
                raise UsageError(str(exc)) from None
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


def _urls(value: Any, where: str) -> list[str]:
    """Return a group's member URLs (checked), or [] when there is no urls key."""
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(u, str) for u in value):
        raise ValueError(f'{where}urls must be a list of one or more URLs, e.g. urls = ["https://db1:8443/"]')
    for u in value:
        check_url(u)
    if len({u if u.endswith("/") else u + "/" for u in value}) != len(value):
        raise ValueError(f"{where}urls names a member twice")
    return value


def _flag(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}{key} must be true or false")
    return value


def _check_kind(
    name: str, url: str | None, urls: list[str], via: str | None, hold: bool, fetch: bool, mode: Any
) -> None:
    """Refuse the combinations of a peer's keys that mean nothing (dropr.7, CONFIGURATION)."""
    if url and urls:
        raise ValueError(f"peer {name!r} has both url and urls: give url for one host, urls for a group")
    if via and (url or urls):
        raise ValueError(f"peer {name!r} has via and a url: a peer reached through a relay has no url")
    if hold and (url or urls or via):
        raise ValueError(f"peer {name!r} has hold = true and a url or via: a held peer fetches, give neither")
    if fetch and not url:
        raise ValueError(f'peer {name!r} has fetch = true but no url: fetching needs url = "http(s)://..."')
    if mode is not None and not urls:
        raise ValueError(f"peer {name!r} has a mode but no urls: mode is for a group of urls")
    if mode is not None and mode not in MODES:
        raise ValueError(f'peers.{name}.mode = {mode!r}: write "failover" or "spread"')
    if not (url or urls or via or hold):
        need = 'url = "http(s)://...", urls = [...], via = "RELAY" or hold = true'
        raise ValueError(f"peer {name!r} needs {need}")


def _names(table: dict[str, Any], key: str, what: str) -> list[str]:
    """Return a list of node names (serve.relay, serve.trust_relays), checked."""
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValueError(f'serve.{key} must be a list of node names ({what}), e.g. {key} = ["web1"]')
    for n in value:
        check_name(n, f"a node in serve.{key}")
    return value


def _node(data: dict[str, Any]) -> str | None:
    """Return the top-level node name, checked, or None."""
    node = data.get("node")
    if node is not None:
        if not isinstance(node, str):
            raise ValueError('node must be a string, e.g. node = "web1"')
        check_name(node, "node")
    return node


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
            mode = os.fstat(f.fileno()).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if named:
            raise ConfigError(f"config file {path} does not exist; create it or drop --config") from None
        return Config()  # no config: the spool's own problems are reported when it is opened
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    cache = os.path.join(spool, CACHE_NAME)
    data = _cached(cache, path, raw)
    if data is None:
        data = _parse(path, raw)
        # as private as the spool's files, and never more readable than the config itself
        _keep(cache, path, raw, data, 0o640 & mode if isinstance(data.get("group"), str) else 0o600)
    config = Config(data, path)
    if config.unknown:
        import sys

        prog = os.path.basename(sys.argv[0]) or "dropr"
        keys = ", ".join(config.unknown)
        sys.stderr.write(f"{prog}: warning: {path}: unknown keys, ignored (a typo?): {keys}\n")
    return config


CACHE_NAME = ".config.cache"  # in the spool: the last parse of the config, see _cached
_CACHE_VERSION = 1


def _parse(path: str, raw: bytes) -> dict[str, Any]:
    """Parse the config's TOML (tomllib: 10-40 ms of imports at every start)."""
    import tomllib

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"bad config {path}: {exc}; fix the TOML syntax") from None


def _cached(cache: str, path: str, raw: bytes) -> dict[str, Any] | None:
    """Return the parse of raw kept by an earlier start, or None.

    Keyed by the file's whole content (read anyway), not its stat: the same bytes parse
    to the same data, so the cache is exactly as strict as the parse, and no edit, clock
    step or copy can make it stale. What the parse refused is never kept, and every
    start still checks the data (Config). marshal is built in: nothing to import."""
    import marshal

    try:
        with open(cache, "rb") as f:
            version, where, text, data = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):  # none, unreadable, torn or foreign
        return None
    if version != _CACHE_VERSION or where != path or text != raw or not isinstance(data, dict):
        return None
    return data


def _keep(cache: str, path: str, raw: bytes, data: dict[str, Any], mode: int) -> None:
    """Keep a parse for the next start with mode (it holds the config's tokens), written
    whole then renamed (a reader sees the old file or the new); not synced: a cache."""
    import marshal

    try:
        blob = marshal.dumps((_CACHE_VERSION, path, raw, data))
    except ValueError:  # TOML dates and times: marshal does not take them; parse each time
        return
    tmp = f"{cache}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, mode)  # whatever the umask: a group spool's members read it too
            os.write(fd, blob)
        finally:
            os.close(fd)
        os.rename(tmp, cache)
    except OSError:  # no spool yet (the first put makes it), or not ours to write
        try:
            os.unlink(tmp)
        except OSError:
            pass


def check_priority(p: int) -> int:
    """Return p if it is a priority 0-9, else raise UsageError."""
    if not 0 <= p <= 9:
        raise UsageError(f"bad priority {p}: use 0 (most urgent) to 9")
    return p
