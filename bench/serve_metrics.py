"""Benchmark section for dropr-serve's GET /metrics (#18): what counting costs a request.

Registered into the harness by ``run.py`` importing this module.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time

from delivery import Server
from harness import Ctx, section

# Run in a fresh interpreter: prometheus_client chooses its multiprocess mode on import, and
# dropr-serve runs in that mode (PROMETHEUS_MULTIPROC_DIR is set by the caller).
_PROBE = r"""
import io, json, os, sys, time
from dropr import protocol as wire
from dropr.config import Config
from dropr.server import make_app
from dropr.spool import Spool

spool = Spool(sys.argv[1], Config())
app = make_app(spool)
assert app.meter is not None and app.meter.shared, "not in multiprocess mode"
env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/health", "REMOTE_ADDR": "127.0.0.1"}
def start_response(status, headers):
    pass
def per_call(n):
    t0 = time.perf_counter()
    for _ in range(n):
        app(env, start_response)
    return (time.perf_counter() - t0) / n * 1e6
meter, n, out = app.meter, int(sys.argv[2]), {"with": [], "without": [], "upload": []}
for _ in range(7):  # interleaved: the machine's drift falls on both alike
    app.meter = meter
    out["with"].append(per_call(n))
    app.meter = None
    out["without"].append(per_call(n))
stored = [wire.STORED] * 500
results = [{wire.ID: str(i), wire.STATUS_KEY: wire.STORED} for i in range(500)]
sizes = [1024] * 500
for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(200):
        meter.upload(iter(sizes), stored, results)
    out["upload"].append((time.perf_counter() - t0) / 200 * 1e6)
print(json.dumps(out))
"""


def _served_health_us(url: str, n: int) -> float:
    """Return the µs per GET /v1/health of a real dropr-serve over one kept-alive connection."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(50):  # warm: the connection, the worker's thread, the counters' files
            c.request("GET", "/v1/health")
            c.getresponse().read()
        t0 = time.perf_counter()
        for _ in range(n):
            c.request("GET", "/v1/health")
            c.getresponse().read()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        c.close()


@section("metrics", "(#18) GET /metrics: counting per request, against a served /v1/health")
def serve_metrics(ctx: Ctx) -> None:
    """A request's counting (App.__call__ with its meter, minus without), in multiprocess
    mode as dropr-serve runs, against the whole cost of a request served by a real
    dropr-serve (two workers, one kept-alive connection, the client's side included)
    measured in the same run: the limit the counting adds to."""
    n = ctx.n(2000)
    for r in range(ctx.repeat):
        root = ctx.fresh("metrics")
        srv = Server(ctx, root / "B")
        try:
            served = statistics.median(_served_health_us(srv.url, n) for _ in range(3))
        finally:
            srv.stop()
        shared = root / "multiproc"
        shared.mkdir()
        env = dict(ctx.env(), PROMETHEUS_MULTIPROC_DIR=str(shared), DROPR_NODE="b")
        py = ctx.interpreter(ctx.cmd("dropr-serve"))
        p = subprocess.run([py, "-c", _PROBE, str(root / "P"), str(n)], capture_output=True, text=True,
                           env=env, timeout=600, check=False)  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"metrics probe failed: {p.stderr.strip()[-500:]}")
        got = json.loads(p.stdout)
        with_, without = statistics.median(got["with"]), statistics.median(got["without"])
        cost = with_ - without
        print(f"  run {r + 1}/{ctx.repeat}: App health {without:.1f} µs, with counting {with_:.1f} µs; "
              f"served health {served:.0f} µs per request")  # fmt: skip
        ctx.figure("metrics.request", "counting per request (App with meter − without)", cost, "µs")
        ctx.figure(
            "metrics.ratio",
            "counting / a served health request",
            cost / served,
            target=("<=", 0.05),
            percent=True,
        )
        ctx.figure(
            "metrics.upload",
            "counting an upload of 500 messages (info)",
            statistics.median(got["upload"]),
            "µs",
        )
        ctx.remove_at_end(f"metrics-{r}", root)
    sys.stdout.flush()
