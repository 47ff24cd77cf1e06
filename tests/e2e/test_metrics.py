"""GET /metrics on a real dropr-serve with two workers, after real deliveries.

The counts after dropr-send's uploads (stored, duplicate, refused by reason class, try
later, bytes), their sums over both workers and over a worker that died, who may read
them (loopback, a proxy's client, a token: the addresses other than loopback in a
network namespace of the test's own, "metrics-*"), and the examples that query them:
every metric name in examples/prometheus and examples/grafana is one dropr exports,
and promtool (Debian's prometheus package, `make sysdeps`) accepts the rules and both
expositions where it is installed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Nodes, alive, children, command_path, expect_error, serve_url, wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "prometheus" / "dropr.rules.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "dropr.json"
SCRAPER_TOKEN = "scrape-" + "x" * 24


def scrape(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET url/metrics; return status, headers and body (of an error answer too)."""
    req = urllib.request.Request(url + "metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metrics(url: str) -> str:
    status, headers, body = scrape(url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version="), headers
    return body.decode()


def value(text: str, metric: str, /, **labels: str) -> float:
    """Sum the samples of metric whose labels include labels (0 where there is none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def names(text: str) -> set[str]:
    """Every metric name of an exposition: its families' and its samples' (_total, _bucket...)."""
    out = set()
    for fam in text_string_to_metric_families(text):
        out.add(fam.name)
        out.update(s.name for s in fam.samples)
    out.update(re.findall(r"^# TYPE (\S+)", text, re.M))
    return out


def test_counts_after_real_deliveries(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    url = b.serve("--workers", "2", "--max-size", "1KiB")
    payloads = [b"x" * 10, b"y" * 20, b"z" * 30]
    for p in payloads[:2]:
        a.put(p, "--to", url)
    a.put(payloads[2], "--to", url, "--id", "metrics-dup-1")
    a.put(b"w" * 2048, "--to", url)  # over --max-size: refused for good
    a.send_once()
    text = metrics(url)
    assert value(text, "dropr_serve_messages_total", outcome="stored") == 3
    assert value(text, "dropr_serve_messages_total", outcome="refused", reason="too_large") == 1
    assert value(text, "dropr_serve_messages_total", outcome="duplicate") == 0
    assert value(text, "dropr_serve_received_bytes_total") == 60
    assert value(text, "dropr_serve_requests_total", route="/v1/messages", outcome="ok", code="200") >= 1
    # the spool's gauges, as dropr-ls --prom gives them
    assert value(text, "dropr_messages", box="in", name="default", state="ready") == 3
    assert value(text, "dropr_bytes", box="in", name="default", state="ready") == 60

    # the same message from a second spool of node a: a duplicate at b
    a2 = nodes("a2")
    a2.env["DROPR_NODE"] = "a"
    a2.put(payloads[2], "--to", url, "--id", "metrics-dup-1")
    assert a2.send_once().returncode == 0
    text = metrics(url)
    assert value(text, "dropr_serve_messages_total", outcome="duplicate") == 1
    assert value(text, "dropr_serve_messages_total", outcome="stored") == 3
    assert value(text, "dropr_serve_received_bytes_total") == 90
    assert value(text, "dropr_serve_request_duration_seconds_count", route="/v1/messages") >= 2
    assert value(text, "dropr_serve_requests_total", route="/metrics", outcome="ok") >= 1  # the scrape before


def test_try_later_and_who_may_read(nodes: Nodes) -> None:
    a, c = nodes("a"), nodes("c")
    c.config('[serve]\nmin_free = "1000000TiB"\n')  # never that much free: every upload is 503
    url = c.serve("--workers", "2")
    a.put(b"later", "--to", url)
    a.send_once()
    text = metrics(url)
    assert (
        value(text, "dropr_serve_requests_total", route="/v1/messages", outcome="try_later", code="503") >= 1
    )
    assert value(text, "dropr_serve_messages_total") == 0  # nothing was answered per message
    # through a proxy every client is loopback: not let in, and no token is configured
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        status, _, body = scrape(url, {header: "192.0.2.9"})
        assert status == 403, body
        assert "serve.metrics_tokens" in json.loads(body)["error"]
    assert scrape(url)[0] == 200  # the same client without the proxy's header
    status, _, body = scrape(url + "v1/")  # /v1/metrics is no route
    assert status == 404


def test_bad_metrics_tokens_is_one_line(nodes: Nodes) -> None:
    b = nodes("b")
    b.config('[serve]\nmetrics_tokens = "not a list"\n')
    line = expect_error(b.run("dropr-serve", "--listen", "127.0.0.1:0"), 78, "dropr-serve")
    assert "serve.metrics_tokens must be a list of tokens in quotes" in line


def _worker_of(server_port: int, client_port: int, workers: list[int]) -> int | None:
    """Return which worker holds the server side of a loopback connection (from /proc)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == client_port:
            inode = f[9]
    for pid in workers:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def _metrics_dir(pid: int) -> Path | None:
    """Return the metrics directory a worker has its files mapped from."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        m = re.search(r"(/\S*/dropr-serve-metrics\.[^/]+)/", line)
        if m:
            return Path(m.group(1))
    return None


def test_workers_are_summed_and_a_dead_workers_counts_stay(nodes: Nodes) -> None:
    b = nodes("b")
    url = b.serve("--workers", "2")
    assert b.serve_proc is not None
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    workers = wait_until(lambda: children(b.serve_proc.pid) if len(children(b.serve_proc.pid)) == 2 else [],
                         20, "two workers")  # fmt: skip
    served: dict[int, int] = {}  # worker -> health requests it answered
    conns = []
    try:
        while len(served) < 2 and len(conns) < 64:  # kept open: a busy worker leaves the next to the other
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conns.append(c)
            for _ in range(3):
                c.request("GET", "/v1/health")
                assert c.getresponse().read()
            w = _worker_of(port, c.sock.getsockname()[1], workers)
            assert w is not None
            served[w] = served.get(w, 0) + 3
    finally:
        for c in conns:
            c.close()
    assert len(served) == 2, f"every connection went to one worker: {served}"
    total = sum(served.values())
    assert value(metrics(url), "dropr_serve_requests_total", route="/v1/health") == total

    shared = _metrics_dir(workers[0])
    assert shared is not None and shared.is_dir()
    assert shared.stat().st_mode & 0o777 == 0o700
    victim = max(served, key=lambda w: served[w])
    os.kill(victim, signal.SIGKILL)  # a crash: gunicorn starts another worker
    wait_until(lambda: victim not in children(b.serve_proc.pid) and len(children(b.serve_proc.pid)) == 2,
               20, "a new worker")  # fmt: skip
    assert value(metrics(url), "dropr_serve_requests_total", route="/v1/health") == total
    b.stop_serve()
    assert not shared.exists(), "the metrics directory outlived dropr-serve"


# -- who may read, from an address other than loopback ---------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace whose loopback also has 192.0.2.1, an address that is no loopback:
    a connection to it comes from it."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (make sysdeps installs it)")
    ns = f"metrics-{os.getpid()}{secrets.token_hex(2)}"
    p = ip("netns", "add", ns, check=False)
    if p.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root and iproute2): {p.stderr.strip()}")
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", "192.0.2.1/32", "dev", "lo")
        yield ns
    finally:
        ip("netns", "del", ns, check=False)


def _curl(ns: str, url: str, *args: str) -> tuple[int, str, str]:
    """GET url from inside ns; return status, response headers and body."""
    p = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "20", "-D", "-", url, *args],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    head, _, body = p.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), head, body


@pytest.mark.netns
def test_other_addresses_need_a_metrics_token(netns: str, nodes: Nodes) -> None:
    b = nodes("b")
    b.config(f'[serve]\ntokens = {{"tok-a-{"y" * 20}" = "a"}}\nmetrics_tokens = ["{SCRAPER_TOKEN}"]\n')
    os.chmod(b.spool / "dropr.toml", 0o600)
    cmd = [
        command_path("dropr-serve"),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "192.0.2.1:0",
        "--workers",
        "2",
    ]
    with open(b.serve_log, "wb") as log:
        p = subprocess.Popen(
            ["ip", "netns", "exec", netns, *cmd], env=b.env, stderr=log, stdin=subprocess.DEVNULL
        )
    b.procs.append(p)  # `ip netns exec` execs the command: this pid is dropr-serve's
    serve_url(p, b.serve_log, 20)

    def both() -> list[str]:
        found = re.findall(r"url=(\S+)", b.serve_log.read_text())
        return found if len(found) == 2 else []

    urls = wait_until(both, 20, "dropr-serve to listen on both addresses")
    local = next(u for u in urls if "127.0.0.1" in u) + "metrics"
    other = next(u for u in urls if "192.0.2.1" in u) + "metrics"

    status, _, body = _curl(netns, local)
    assert status == 200 and "dropr_serve_received_bytes_total 0.0" in body
    status, head, body = _curl(netns, other)
    assert status == 401, body
    assert re.search(r"(?im)^www-authenticate: Bearer$", head), head
    assert json.loads(body) == {"error": "no bearer token for /metrics"}
    status, head, body = _curl(netns, other, "-H", "Authorization: Bearer not-the-token")
    assert status == 401 and 'error="invalid_token"' in head, head
    status, head, body = _curl(netns, other, "-H", f"Authorization: Bearer {SCRAPER_TOKEN}")
    assert status == 200, body
    assert value(body, "dropr_serve_requests_total", route="/metrics", outcome="refused", code="401") == 2
    # a client's delivery token is no metrics token
    status, _, body = _curl(netns, other, "-H", f"Authorization: Bearer tok-a-{'y' * 20}")
    assert status == 401, body
    # through a proxy on loopback: the token, as from anywhere else
    assert _curl(netns, local, "-H", "X-Forwarded-For: 198.51.100.7")[0] == 401
    assert _curl(netns, local, "-H", "X-Forwarded-For: 198.51.100.7", "-H",
                 f"Authorization: Bearer {SCRAPER_TOKEN}")[0] == 200  # fmt: skip
    assert "warning" not in b.serve_log.read_text()


# -- the examples ---------------------------------------------------------------------------


def _expressions() -> list[tuple[str, str]]:
    """Return (where, PromQL) of every rule in the rules file and every panel target of the
    dashboard. Each rule's expr is on one line (checked), so no YAML parser is needed."""
    text = RULES.read_text()
    rules = re.findall(r"^\s+expr:\s*(.+)$", text, re.M)
    assert len(rules) == len(re.findall(r"^\s+- (?:alert|record):", text, re.M)), "one one-line expr per rule"
    assert not [e for e in rules if e.strip() in ("|", ">", "|-", ">-")], "write each expr on one line"
    out = [(RULES.name, e) for e in rules]
    board = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, object]]) -> Iterator[dict[str, object]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))  # type: ignore[arg-type]

    for p in panels(board["panels"]):
        for t in p.get("targets", []):  # type: ignore[attr-defined]
            out.append((f"{DASHBOARD.name}: {p['title']}", t["expr"]))
    return out


def test_examples_query_only_metrics_dropr_exports(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    url = b.serve("--workers", "2")
    a.put(b"hello", "--to", url)
    a.send_once()
    served = metrics(url)
    ls = a.run("dropr-ls", "--prom", check=True).stdout.decode()
    exported = names(served) | names(ls)
    exprs = _expressions()
    assert len(exprs) >= 10, exprs
    for where, expr in exprs:
        used = set(re.findall(r"\bdropr_[a-z0-9_]+", expr))
        assert used, f"{where}: {expr} names no dropr metric"
        assert used <= exported, f"{where}: {sorted(used - exported)} not exported by dropr"
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: make sysdeps)")
    for what, text in (("/metrics", served), ("dropr-ls --prom", ls)):
        p = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, f"{what}: {p.stdout}{p.stderr}"
    p = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_metrics_dir_is_private_per_run(nodes: Nodes) -> None:
    """Two servers at once: two directories, neither the environment's."""
    b, c = nodes("b"), nodes("c")
    b.env["PROMETHEUS_MULTIPROC_DIR"] = str(b.spool)  # another run's, say: not used
    for n in (b, c):
        n.serve("--workers", "2")
    dirs = []
    for n in (b, c):
        assert n.serve_proc is not None
        d = _metrics_dir(n.serve_proc.pid)  # the master maps its (empty) counts at start, too
        assert d is not None
        dirs.append(d)
    assert dirs[0] != dirs[1]
    assert b.spool not in dirs
    assert not any(p.name.endswith(".db") for p in b.spool.iterdir())


def test_serving_goes_on_when_counting_fails(nodes: Nodes) -> None:
    """The metrics directory removed under a running server (a /tmp cleaner): new workers
    cannot count, and answer all the same, saying so once each in the log."""
    b = nodes("b")
    url = b.serve("--workers", "2")
    assert b.serve_proc is not None
    master = b.serve_proc.pid
    shared = _metrics_dir(master)
    assert shared is not None
    shutil.rmtree(shared)
    old = wait_until(lambda: children(master) if len(children(master)) == 2 else [], 20, "two workers")
    for w in old:
        os.kill(w, signal.SIGKILL)
    wait_until(lambda: len(set(children(master)) - set(old)) == 2, 20, "two new workers")
    for _ in range(6):
        with urllib.request.urlopen(url + "v1/health", timeout=30) as r:
            assert r.status == 200
    assert scrape(url)[0] == 200
    errors = [ln for ln in b.serve_log.read_text().splitlines() if "error metrics" in ln]
    assert 1 <= len(errors) <= 2, errors  # once per worker that counted
    assert all("requests are served all the same" in ln for ln in errors), errors


def test_a_killed_runs_directory_goes_at_the_next_start(nodes: Nodes, tmp_path: Path) -> None:
    """SIGKILL leaves a run's directory behind; the next dropr-serve removes it, and not the
    directory of a run still going."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    b, c, d = nodes("b"), nodes("c"), nodes("d")
    for n in (b, c, d):
        n.env["TMPDIR"] = str(tmpdir)
    b.serve("--workers", "2")
    c.serve("--workers", "2")
    assert b.serve_proc is not None and c.serve_proc is not None
    killed, running = _metrics_dir(b.serve_proc.pid), _metrics_dir(c.serve_proc.pid)
    assert killed is not None and running is not None and killed.parent == tmpdir
    workers = children(b.serve_proc.pid)
    b.stop_serve(signal.SIGKILL)
    wait_until(lambda: not any(alive(w) for w in workers), 20, "b's workers to exit")
    assert killed.is_dir()  # nothing removed it
    d.serve("--workers", "2")
    assert d.serve_proc is not None
    new = _metrics_dir(d.serve_proc.pid)
    assert new is not None
    assert not killed.exists()
    assert running.is_dir()
    assert sorted(p.name for p in tmpdir.iterdir()) == sorted([running.name, new.name])
