"""dropr-serve's GET /metrics: counts of what it answered, and the spool's gauges.

Written with prometheus_client. Counted for each request (App.__call__): its route,
outcome and status code, and the time to its answer; for each upload (App.messages):
the answer of each message (stored, duplicate, refused by reason class) and the
payload bytes read. The spool's gauges are dropr-ls --prom's (report.prom), read from
the spool at each scrape, as dropr-ls reads it: a scrape of a spool of a million
messages takes a second or more.

Several workers: prometheus_client's multiprocess mode. dropr-serve's master makes a
private directory and names it in PROMETHEUS_MULTIPROC_DIR before prometheus_client
is imported (the library chooses its mode on import: serving.metrics_dir); each
worker writes its counts to memory-mapped files of its own there, a scrape sums
every file (MultiProcessCollector), a worker that exits is marked dead (its counts
stay in the sums: a counter never goes back while dropr-serve runs, HUP included),
and the master removes the directory at exit (the next start, one a SIGKILL left):
the counts start from 0 with each run.

Who may read them: a loopback client, unless the request came through a proxy (it
carries Forwarded, X-Forwarded-For or X-Real-IP: behind nginx every client is
127.0.0.1), and any client with a bearer token from serve.metrics_tokens.

The hot path: a request costs a clock read, a dict lookup and three increments of a
mapped file (under prometheus_client's lock); an upload, a pass over its parts' sizes
and a count of its answers. Figures: bench/README.md, "metrics".
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import protocol as wire
from .server import HTTPError

if TYPE_CHECKING:
    from .spool import Spool

log = logging.getLogger(__name__)

# Request latency buckets (seconds): a health probe takes a millisecond, a batch of
# 500 messages tens of milliseconds, a 1 GiB message minutes.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
OTHER = "other"  # the route of every path dropr does not serve: a label per path would grow without end
OK, REFUSED, TRY_LATER, ERROR = "ok", "refused", "try_later", "error"  # a request's outcome
# A refused message's reason class, by how its reason (server.Upload) begins; else "other".
REASON_CLASSES = (
    ("checksum", "checksum"),
    ("too large", "too_large"),
    ("payload", "length"),  # longer, or shorter, than its header says
    ("truncated message header", "header"),
    ("not a dropr message header", "header"),
    ("bad message header", "header"),
)


def multiprocess() -> bool:
    """Tell whether prometheus_client counts in PROMETHEUS_MULTIPROC_DIR (chosen on its import)."""
    return values.ValueClass is not values.MutexValue


def reason_class(reason: str) -> str:
    """Return the class of a message's refusal (a label): header, too_large, length, checksum, other."""
    for prefix, cls in REASON_CLASSES:
        if reason.startswith(prefix):
            return cls
    return "other"


def outcome(code: str) -> str:
    """Return a request's outcome by its status line: ok, refused, try_later (503) or error (500)."""
    if code == wire.HTTP_OK:
        return OK
    if code == wire.HTTP_UNAVAILABLE:
        return TRY_LATER
    return ERROR if code == wire.HTTP_INTERNAL else REFUSED


def worker_gone(pid: int, path: str) -> None:
    """Mark a worker that exited dead in the metrics directory (its counts stay in the sums)."""
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class SpoolGauges(Collector):
    """The gauges of dropr-ls --prom, read from the spool at each scrape (report.prom)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration: the names are report.prom's

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.parser import text_string_to_metric_families

        from . import report

        flt = report.Filter()
        rows = report.summary(self.spool, flt)
        yield from text_string_to_metric_families(report.prom(rows, report.peers(self.spool, flt, rows)))


class Meter:
    """The counters of one dropr-serve, and its answer to GET /metrics."""

    def __init__(self, spool: Spool, tokens: Iterable[str], routes: Iterable[str]) -> None:
        self.tokens = [t.encode() for t in tokens]
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry()
        self.shared = multiprocess()
        own = None if self.shared else self.registry  # shared: each worker's files, summed at a scrape
        if self.shared:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(SpoolGauges(spool))
        self.requests = Counter(
            "dropr_serve_requests",
            "Requests answered, by route, outcome (ok, refused, try_later, error) and status code.",
            ["route", "outcome", "code"],
            registry=own,
        )
        self.latency = Histogram(
            "dropr_serve_request_duration_seconds",
            "Time from a request's headers to its answer, by route.",
            ["route"],
            buckets=BUCKETS,
            registry=own,
        )
        self.messages = Counter(
            "dropr_serve_messages",
            "Messages of uploads answered, by outcome (stored, duplicate, refused) and reason class.",
            ["outcome", "reason"],
            registry=own,
        )
        self.received = Counter(
            "dropr_serve_received_bytes",
            "Payload bytes read from uploads, whatever their answer.",
            registry=own,
        )
        self._kids: dict[tuple[str, str], tuple[Any, Any]] = {}  # (path, status) -> its counter, histogram
        self.failed = False  # counting failed once: said in the log

    def request(self, path: str, code: str, began: float) -> None:
        """Count one answer: its route, outcome and status, and the time since began (perf_counter)."""
        took = time.perf_counter() - began
        kids = self._kids.get((path, code))
        try:
            if kids is None:
                kids = self._labelled(path, code)
            kids[0].inc()
            kids[1].observe(took)
        except (OSError, ValueError) as exc:  # ValueError: a file closed by a failed reopen
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """Say once that counting fails (its directory removed, or its disk full): the
        request is answered all the same; the counts of this worker stop growing."""
        if not self.failed:
            self.failed = True
            log.error("error metrics reason=cannot count: %s; requests are served all the same", exc)

    def _labelled(self, path: str, code: str) -> tuple[Any, Any]:
        known = path in self.routes
        route = "/" + path.lstrip("/") if known else OTHER
        kids = (self.requests.labels(route, outcome(code), code[:3]), self.latency.labels(route))
        if known:  # the paths served, by the statuses dropr answers: a few dozen at most
            self._kids[(path, code)] = kids
        return kids

    def upload(self, sizes: Iterable[int], stored: list[str], results: list[dict[str, str]]) -> None:
        """Count an upload's messages by answer, and its payload bytes."""
        try:
            self._upload(sum(sizes), stored, results)
        except (OSError, ValueError) as exc:  # ValueError: a file closed by a failed reopen
            self._failed(exc)

    def _upload(self, size: int, stored: list[str], results: list[dict[str, str]]) -> None:
        self.received.inc(size)
        n = stored.count(wire.STORED)
        if n:
            self.messages.labels(wire.STORED, "").inc(n)
        if len(stored) > n:
            self.messages.labels(wire.DUPLICATE, "").inc(len(stored) - n)
        if len(results) > len(stored):  # refusals, the rare case: by reason class
            classes: dict[str, int] = {}
            for r in results:
                if r[wire.STATUS_KEY] == wire.REFUSED:
                    cls = reason_class(r.get(wire.REASON, ""))
                    classes[cls] = classes.get(cls, 0) + 1
            for cls, count in classes.items():
                self.messages.labels(wire.REFUSED, cls).inc(count)

    def answer(self, environ: dict[str, Any]) -> tuple[bytes, str]:
        """Return the Prometheus text and its content type, or raise the 401 or 403."""
        self.check(environ)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def check(self, environ: dict[str, Any]) -> None:
        """Let a loopback client in, or one with a token of serve.metrics_tokens; else raise."""
        if is_loopback(environ):
            return
        if not self.tokens:
            why = "answered to loopback clients only; give scrapers a token in serve.metrics_tokens"
            raise HTTPError(wire.HTTP_FORBIDDEN, f"/{wire.METRICS} is {why}")
        scheme = wire.BEARER.lower() + " "
        auth = environ.get(wire.AUTH_ENVIRON, "")
        token = (auth[len(scheme) :].strip() if auth[: len(scheme)].lower() == scheme else "").encode()
        known = False
        for tok in self.tokens:  # every one: the time taken tells nothing
            known |= hmac.compare_digest(tok, token)
        if not known:  # RFC 6750 3, as for the upload routes
            why, challenge = ("unknown", wire.INVALID_TOKEN) if token else ("no", wire.BEARER)
            headers = ((wire.WWW_AUTHENTICATE, challenge),)
            raise HTTPError(wire.HTTP_UNAUTHORIZED, f"{why} bearer token for /{wire.METRICS}", headers)


def is_loopback(environ: dict[str, Any]) -> bool:
    """Tell whether a request comes from a loopback address, and not through a proxy."""
    if any(h in environ for h in wire.PROXY_ENVIRON):
        return False
    try:
        ip = ipaddress.ip_address(str(environ.get("REMOTE_ADDR") or "").partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, from a dual-stack socket
    return bool((mapped or ip).is_loopback)
