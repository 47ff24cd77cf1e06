"""Delivery between two real spools: dropr-put, dropr-send and dropr-serve as installed.

Every process runs on 127.0.0.1 with its spool in tmp_path; every wait polls
with a deadline. Only processes these tests started are signalled, by pid.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from helpers import Node, Nodes, children, free_port, listdir, make_ca, unstored, vm_hwm, wait_until

TEMPFAIL = 75
USAGE = 64
DEADLINE = 60.0  # the virtual disk here can be slow; a healthy run takes a fraction of this


# -- helpers -------------------------------------------------------------------------------------


def inbox(node: Node, channel: str | None = None) -> list[dict[str, Any]]:
    """Return every inbox record of node (all channels and states)."""
    args = ["-l", "--in"] + (["--channel", channel] if channel else [])
    return node.ls(*args)


def outbox(node: Node) -> list[dict[str, Any]]:
    """Return every outbox record of node."""
    return node.ls("-l", "--out")


def ls_text(node: Node, *args: str) -> str:
    """Return dropr-ls's human output."""
    return node.run("dropr-ls", *args, check=True).stdout.decode()


def peer_health(text: str, peer: str) -> str:
    """Return the line of dropr-ls's peer table (PEER BACKLOG OLDEST LAST-OK LAST-ERROR)."""
    lines = [ln for ln in text.splitlines() if ln.startswith(peer)]
    assert lines, text
    return lines[-1]


def ready_dir(node: Node, channel: str = "default") -> Path:
    return node.spool / "in" / channel / "ready"


class PeakRSS(threading.Thread):
    """Sample VmHWM of a changing set of pids until stopped; keep the peak per pid."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak: dict[int, int] = {}
        self.halt = threading.Event()

    def sample(self) -> None:
        for pid in self.pids():
            v = vm_hwm(pid)
            if v is not None:
                self.peak[pid] = max(v, self.peak.get(pid, 0))

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.01)

    def stop(self) -> dict[int, int]:
        self.halt.set()
        self.join(10)
        self.sample()
        return self.peak


def health(url: str) -> bytes:
    with urllib.request.urlopen(url + "v1/health", timeout=10) as r:
        return bytes(r.read())


def two_nodes(nodes: Nodes, b_config: str = "") -> tuple[Node, Node, str]:
    """Node a (sender) and node b (serving); return them and b's URL."""
    a, b = nodes("a"), nodes("b")
    if b_config:
        b.config(b_config)
    url = b.serve()
    return a, b, url


# -- order and availability ----------------------------------------------------------------------


def _put_mixed(a: Node, url: str, first: bytes = b"high 0") -> tuple[list[str], str, list[str]]:
    """Put three p9, then three p0 messages, then one p5; return (p0 ids, p5 id, p9 ids)."""
    low = [a.put(f"low {i}", "--to", url, "--priority", "9") for i in range(3)]
    high = [a.put(first if i == 0 else f"high {i}", "--to", url, "--priority", "0") for i in range(3)]
    mid = a.put("mid", "--to", url)
    return high, mid, low


def _sent_order(stderr: bytes) -> list[str]:
    """Return the ids in the order dropr-send -v logged them as sent (a debug line each)."""
    return [
        line.split("id=")[1].split()[0]
        for line in stderr.decode().splitlines()
        if line.startswith("dropr-send: sent id=")
    ]


def _recv_order(b: Node) -> list[str]:
    """Claim everything at b and return the ids in the order dropr-recv hands them out."""
    p = b.run("dropr-recv", "--all", check=True)
    return [line.split("\t")[0] for line in p.stdout.decode().splitlines()]


def test_priority_order(nodes: Nodes) -> None:
    """One batch of one message at a time: sent in outbox order, consumed in that order."""
    a, b, url = two_nodes(nodes)
    high, mid, low = _put_mixed(a, url)
    # --concurrency 1: one request at a time, so the order of sending is observable
    p = a.send_once("--batch", "1", "--concurrency", "1", "-v")
    assert p.returncode == 0, p.stderr.decode()
    assert _sent_order(p.stderr) == high + [mid] + low
    # the inbox names sort by priority, then the origin's order; dropr-ls -l --in lists so
    assert [r["id"] for r in inbox(b)] == high + [mid] + low
    assert _recv_order(b) == high + [mid] + low
    assert {r["state"] for r in outbox(a)} == {"sent"}


def test_priority_order_default_concurrency(nodes: Nodes) -> None:
    """Pipelined batches may land out of order; the inbox still keeps priority, then origin order."""
    a, b, url = two_nodes(nodes)
    high, mid, low = _put_mixed(a, url, first=os.urandom(1 << 20) * 48)  # 48 MiB: a slow batch
    p = a.send_once("--batch", "1")
    assert p.returncode == 0, p.stderr.decode()
    assert [r["id"] for r in inbox(b)] == high + [mid] + low
    assert _recv_order(b) == high + [mid] + low


def test_progress_bar_on_a_terminal(nodes: Nodes) -> None:
    """--once with stderr on a terminal draws a bar that ends at every queued message sent."""
    import pty

    from helpers import command_path

    a, b, url = two_nodes(nodes)
    for i in range(7):
        a.put(f"m{i}", "--to", url)
    main, tty = pty.openpty()
    try:
        p = subprocess.run(
            [command_path("dropr-send"), "--once"],
            env=a.env,
            stderr=tty,
            stdout=subprocess.DEVNULL,
            timeout=DEADLINE,
        )
        os.close(tty)
        tty = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
        if tty >= 0:
            os.close(tty)
    assert p.returncode == 0
    assert b"] 7/7 sent" in shown, shown
    assert len(inbox(b)) == 7
    # not on a terminal: no bar
    a.put("m7", "--to", url)
    q = a.send_once()
    assert q.returncode == 0 and b"1/1 sent" not in q.stderr and b"[" not in q.stderr, q.stderr


def test_peer_down_then_up(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ident = a.put("wait for me", "--to", url)
    p = a.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert "deferred" in p.stderr.decode()
    assert a.states("out") == {ident: "queued"}
    text = ls_text(a, "--out")
    # the peer's health line names the last error (curl cannot connect)
    peer_line = peer_health(text, "127.0.0.1_")
    assert "connect" in peer_line.lower(), text
    assert peer_line.split()[1] == "1", text  # backlog

    b.serve(listen=f"127.0.0.1:{port}")
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {ident: "sent"}
    recs = inbox(b)
    assert [r["id"] for r in recs] == [ident]
    assert Path(recs[0]["path"]).read_bytes() == b"wait for me"
    assert recs[0]["origin"] == "a"
    # after a success the health line shows it: no backlog, a last success
    cols = peer_health(ls_text(a, "--out"), "127.0.0.1_").split()
    assert cols[1] == "0" and cols[3] != "-", cols


def test_peer_down_message_shows_last_error(nodes: Nodes) -> None:
    a = nodes("a")
    url = f"http://127.0.0.1:{free_port()}/"
    ident = a.put("x", "--to", url)
    assert a.send_once().returncode == TEMPFAIL
    (rec,) = a.ls(ident)
    assert rec["state"] == "queued"
    assert rec["error"] and "connect" in rec["error"].lower()


def test_ttl_expires_while_the_peer_is_backed_off(nodes: Nodes) -> None:
    # A TTL used to be checked only when its message was picked for a batch: an expired
    # message waited out the peer's backoff, and so did dropr-put --ttl --wait.
    a = nodes("a")
    a.config('[send]\nbackoff_min = "60s"\nbackoff_max = "60s"\n')
    url = f"http://127.0.0.1:{free_port()}/"
    keep = a.put("no ttl", "--to", url)
    a.start_sender()
    wait_until(lambda: bool(a.ls(keep)[0]["error"]), DEADLINE, "the first failed attempt")
    t0 = time.monotonic()
    p = a.run("dropr-put", "--to", url, "--ttl", "1s", "--wait", "--timeout", "30s", input="expires")
    took = time.monotonic() - t0
    assert p.returncode == 1, p.stderr.decode()  # dead, in about a second, not after the backoff
    assert took < 15, took
    gone = p.stdout.decode().strip()
    assert a.states("out") == {keep: "queued", gone: "dead"}
    assert "ttl expired" in a.ls(gone)[0]["error"]


def test_multicast_one_inode(nodes: Nodes) -> None:
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    url_b, url_c = b.serve(), c.serve()
    a.config(f'[peers.b]\nurl = "{url_b}"\n[peers.c]\nurl = "{url_c}"\n')
    ident = a.put(b"to both", "--to", "b", "--to", "c")
    recs = outbox(a)
    assert sorted(r["name"] for r in recs) == ["b", "c"]
    assert {r["id"] for r in recs} == {ident}
    st = [os.stat(r["path"]) for r in recs]
    assert st[0].st_ino == st[1].st_ino and st[0].st_dev == st[1].st_dev
    assert st[0].st_nlink == 2, "one copy on disk, linked into both peers' queues"

    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    for node in (b, c):
        (rec,) = inbox(node)
        assert rec["id"] == ident and rec["origin"] == "a"
        assert Path(rec["path"]).read_bytes() == b"to both"
    recs = outbox(a)
    assert {(r["name"], r["state"]) for r in recs} == {("b", "sent"), ("c", "sent")}
    st = [os.stat(r["path"]) for r in recs]
    assert st[0].st_ino == st[1].st_ino and st[0].st_nlink == 2


def test_multicast_one_peer_down(nodes: Nodes) -> None:
    """A failing destination defers only its own copy; the other one is delivered."""
    a, b = nodes("a"), nodes("b")
    url_b = b.serve()
    a.config(f'[peers.b]\nurl = "{url_b}"\n[peers.down]\nurl = "http://127.0.0.1:{free_port()}/"\n')
    ident = a.put(b"half way", "--to", "b", "--to", "down")
    p = a.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    recs = {r["name"]: r for r in outbox(a)}
    assert recs["b"]["state"] == "sent" and recs["down"]["state"] == "queued"
    assert os.path.samefile(recs["b"]["path"], recs["down"]["path"])
    assert [r["id"] for r in inbox(b)] == [ident]
    assert "connect" in peer_health(ls_text(a, "--out"), "down").lower()


def test_hung_peer_does_not_stall_others(nodes: Nodes) -> None:
    """A peer that accepts connections and never answers is cut off by the timeout."""
    a, b = nodes("a"), nodes("b")
    url_b = b.serve()
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        url_h = f"http://127.0.0.1:{hung.getsockname()[1]}/"
        a.config(f'[peers.b]\nurl = "{url_b}"\n[peers.hung]\nurl = "{url_h}"\n[send]\ntimeout = "3s"\n')
        stuck = a.put(b"never answered", "--to", "hung")
        ident = a.put(b"goes through", "--to", "b")
        sender = a.start("dropr-send", "--once", stderr=subprocess.PIPE)
        wait_until(lambda: listdir(ready_dir(b)), DEADLINE, "delivery to the healthy peer")
        arrived = time.monotonic()
        assert sender.poll() is None, "the hung transfer ended before its timeout"
        _, err = sender.communicate(timeout=DEADLINE)
        ended = time.monotonic()
    assert sender.returncode == TEMPFAIL, err.decode()
    assert ended - arrived > 1.0  # b was served long before the hung peer timed out
    assert [r["id"] for r in inbox(b)] == [ident]
    states = a.states("out")
    assert states == {ident: "sent", stuck: "queued"}
    assert "timed out" in peer_health(ls_text(a, "--out"), "hung").lower()


def test_oversize_message_dead_not_the_peer(nodes: Nodes) -> None:
    """The peer's permanent refusal of one message makes it dead; the rest flows."""
    a, b = nodes("a"), nodes("b")
    url = b.serve("--max-size", "1KiB")
    big = a.put(os.urandom(2048), "--to", url)
    small = a.put(b"fits", "--to", url)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {big: "dead", small: "sent"}
    (rec,) = a.ls(big)
    assert "too large" in (rec["error"] or ""), rec
    assert [r["id"] for r in inbox(b)] == [small]


@pytest.mark.slow
def test_large_file_flat_memory(nodes: Nodes, tmp_path: Path) -> None:
    size = 200 << 20
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(size >> 20):
            chunk = i.to_bytes(8, "big") + block[8:]  # every MiB differs
            h.update(chunk)
            f.write(chunk)
    a, b, url = two_nodes(nodes)
    assert b.serve_proc is not None
    master = b.serve_proc.pid
    limit = 100 << 20

    def peak_of(*args: str) -> tuple[int, bytes]:
        """Run a dropr command of node a; return its peak RSS and its stdout."""
        proc = a.start(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        rss = PeakRSS(lambda: [proc.pid])
        rss.start()
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            peak = rss.stop()
        assert proc.returncode == 0, err.decode()
        assert peak, f"never sampled {args[0]}"
        return max(peak.values()), out

    put_peak, out = peak_of("dropr-put", "--to", url, "--file", str(src))
    ident = out.decode().strip()
    assert put_peak < limit, f"dropr-put peak RSS {put_peak >> 20} MiB"

    server = PeakRSS(lambda: [master, *children(master)])
    server.start()
    try:
        send_peak, _ = peak_of("dropr-send", "--once")
    finally:
        peak_serve = server.stop()
    assert send_peak < limit, f"dropr-send peak RSS {send_peak >> 20} MiB"
    assert any(pid != master for pid in peak_serve), "never sampled a dropr-serve worker"
    serve_peak = max(peak_serve.values())
    assert serve_peak < limit, f"dropr-serve peak RSS {serve_peak >> 20} MiB"

    (rec,) = inbox(b)
    assert rec["id"] == ident and rec["size"] == size
    got = hashlib.sha256()
    with open(rec["path"], "rb") as f:
        while chunk := f.read(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == h.hexdigest()
    assert unstored(b.spool) == []


BOUNDARYISH = (
    b"\r\n--------------------------d74496d66958873e\r\n"
    b'Content-Disposition: form-data; name="m"; filename="0000000000000000000000aa"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"DROPR1 id=evil ch=default p=0 c=0 d=0 s=3 k=00000000" + b" " * 150 + b"\n"
    b"\r\n--------------------------d74496d66958873e--\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    b"\r\n--\r\n--\r\n\r\n--"
)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(bytes(range(256)) * 3, id="all-bytes"),
        pytest.param(BOUNDARYISH, id="multipart-lookalike"),
        pytest.param(b"\r\n--", id="dashes"),
        pytest.param(b"\n" * 300 + b"\r", id="newlines"),
        pytest.param(b"DROPR1 " + b"x" * 248 + b"\n", id="header-lookalike"),
    ],
)
def test_payload_byte_exact(nodes: Nodes, payload: bytes) -> None:
    a, b, url = two_nodes(nodes)
    ident = a.put(payload, "--to", url)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    (rec,) = inbox(b)
    assert rec["id"] == ident
    assert Path(rec["path"]).read_bytes() == payload
    assert rec["size"] == len(payload)


def test_byte_exact_in_one_batch(nodes: Nodes) -> None:
    """Many odd payloads in one multipart request each arrive byte for byte."""
    a, b, url = two_nodes(nodes)
    payloads = [b"", bytes(range(256)), BOUNDARYISH, b"\r\n--", b"\x00" * 1000, os.urandom(70000)]
    ids = {a.put(pl, "--to", url): pl for pl in payloads}
    p = a.send_once("--batch", "100")
    assert p.returncode == 0, p.stderr.decode()
    recs = inbox(b)
    assert sorted(r["id"] for r in recs) == sorted(ids)
    for r in recs:
        assert Path(r["path"]).read_bytes() == ids[r["id"]]


# -- exactly once ---------------------------------------------------------------------------------


def _unsend(a: Node, ident: str) -> None:
    """Move a sent outbox entry back to queued, as if the peer's answer had been lost."""
    (rec,) = [r for r in outbox(a) if r["id"] == ident]
    assert rec["state"] == "sent"
    path = Path(rec["path"])
    os.rename(path, path.parent.parent / "queued" / path.name)
    assert a.states("out")[ident] == "queued"


def test_redelivery_after_lost_answer_stored_once(nodes: Nodes) -> None:
    a, b, url = two_nodes(nodes)
    ident = a.put("only once", "--to", url)
    assert a.send_once().returncode == 0
    _unsend(a, ident)

    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    assert "duplicate" in p.stderr.decode()
    recs = inbox(b)
    assert [r["id"] for r in recs] == [ident]
    assert Path(recs[0]["path"]).read_bytes() == b"only once"
    assert a.states("out") == {ident: "sent"}
    assert unstored(b.spool) == []


def test_redelivery_of_consumed_message_is_duplicate(nodes: Nodes) -> None:
    """The receiver remembers ids in any state: acked (done) is still a duplicate."""
    a, b, url = two_nodes(nodes)
    ident = a.put("consume me", "--to", url)
    assert a.send_once().returncode == 0
    p = b.run("dropr-recv", "--ack", check=True)
    assert ident in p.stdout.decode()
    assert b.states("in") == {ident: "done"}
    _unsend(a, ident)
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    assert b.states("in") == {ident: "done"}
    assert len(inbox(b)) == 1
    assert a.states("out")[ident] in ("sent", "processed")


def test_redelivery_in_one_batch_mixed(nodes: Nodes) -> None:
    """A batch holding both new and already stored messages stores each exactly once."""
    a, b, url = two_nodes(nodes)
    first = [a.put(f"m{i}", "--to", url) for i in range(3)]
    assert a.send_once().returncode == 0
    for ident in first:
        _unsend(a, ident)
    more = [a.put(f"n{i}", "--to", url) for i in range(3)]
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    recs = inbox(b)
    assert sorted(r["id"] for r in recs) == sorted(first + more)
    assert set(a.states("out").values()) == {"sent"}


# -- authentication and listen addresses ----------------------------------------------------------


def test_wrong_token_is_401_and_stays_queued(nodes: Nodes) -> None:
    a, b, url = two_nodes(nodes, '[serve.tokens]\n"tok-of-a" = "a"\n')
    a.config(f'[peers.b]\nurl = "{url}"\ntoken = "not-the-token"\n')
    ident = a.put("secret", "--to", "b")
    p = a.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert a.states("out") == {ident: "queued"}
    assert "401" in ls_text(a, "--out")
    assert inbox(b) == []

    a.config(f'[peers.b]\nurl = "{url}"\ntoken = "tok-of-a"\n')
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    (rec,) = inbox(b)
    assert rec["id"] == ident and rec["origin"] == "a"


def test_token_binds_identity_403(nodes: Nodes) -> None:
    """A client with a's token but another node name cannot deliver: 403, nothing stored."""
    a, b, url = two_nodes(nodes, '[serve.tokens]\n"tok-of-a" = "a"\n"tok-of-c" = "c"\n')
    evil = nodes("mallory")
    evil.config(f'[peers.b]\nurl = "{url}"\ntoken = "tok-of-a"\n')
    ident = evil.put("i am a", "--to", "b")
    p = evil.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert evil.states("out") == {ident: "queued"}
    assert "403" in ls_text(evil, "--out")
    assert inbox(b) == []
    assert listdir(b.spool / "rcv") == []
    assert unstored(b.spool) == []


def test_open_listen_refused_without_tokens(nodes: Nodes) -> None:
    b = nodes("b")
    p = b.run("dropr-serve", "--listen", "0.0.0.0:0", timeout=30)
    assert p.returncode == USAGE, p.stderr.decode()
    err = p.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropr-serve: error: "), err
    assert "0.0.0.0:0" in err and "serve.tokens" in err and "--insecure" in err

    url = b.serve("--insecure", listen="0.0.0.0:0")
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert b'"ok": true' in health(f"http://127.0.0.1:{port}/")
    b.stop_serve()


@pytest.mark.parametrize(
    ("addr", "says"),
    [
        ("127.0.0.1:65536", "0 to 65535"),
        ("::1:8080", "brackets"),
        ("127.0.0.1:0:0", "brackets"),
        ("http://127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:\uff10", "HOST:PORT"),  # a full-width digit
        ("[::1", "brackets"),
        ("[127.0.0.1]:0", "not an IPv6 address"),
        (":80", "HOST:PORT"),
    ],
)
def test_a_bad_listen_address_is_64_in_one_line(nodes: Nodes, addr: str, says: str) -> None:
    """A port past 65535 ended in a traceback, an IPv6 address without brackets in
    gunicorn's own error, and two colons in a misleading "refusing ... without tokens"."""
    p = nodes("b").run("dropr-serve", "--listen", addr, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropr-serve: error: bad --listen") and says in err, err


def test_ipv6_loopback_url_has_brackets(nodes: Nodes) -> None:
    """The listening line said url=http://::1:PORT/, which no client takes."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback: {exc.strerror}")
    b = nodes("b")
    url = b.serve(listen="[::1]:0")
    assert url.startswith("http://[::1]:"), url
    assert b'"ok": true' in health(url)


def test_open_listen_allowed_with_tokens(nodes: Nodes) -> None:
    b = nodes("b")
    b.config('[serve.tokens]\n"t" = "a"\n')
    url = b.serve(listen="0.0.0.0:0")
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert b'"ok": true' in health(f"http://127.0.0.1:{port}/")
    b.stop_serve()


# -- the daemon -----------------------------------------------------------------------------------


def test_daemon_delivers_fresh_put_fast(nodes: Nodes) -> None:
    a, b, url = two_nodes(nodes)
    a.put("warm-up", "--to", url)  # creates the peer; the daemon learns it on its next scan
    a.start_sender()
    ready = ready_dir(b)
    wait_until(lambda: len(listdir(ready)) == 1, DEADLINE, "the warm-up message")
    latencies = []
    for want in range(2, 7):
        a.put(f"fast {want}", "--to", url)
        returned = time.monotonic()
        wait_until(lambda w=want: len(listdir(ready)) >= w, 10, f"message {want} at b", interval=0.005)
        latencies.append(time.monotonic() - returned)
    # loose bound: a sender that polled instead of being woken would take seconds
    assert max(latencies) < 1.0, latencies
    assert len(inbox(b)) == 6


def test_second_sender_refused(nodes: Nodes) -> None:
    a, _, url = two_nodes(nodes)
    a.put("x", "--to", url)
    first = a.start_sender()
    for args in (["--once"], []):
        p = a.run("dropr-send", *args, timeout=30)
        assert p.returncode == TEMPFAIL, p.stderr.decode()
        err = p.stderr.decode()
        assert "already running" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0


def test_max_messages(nodes: Nodes) -> None:
    a, b, url = two_nodes(nodes)
    ids = a.put("\n".join(f"m{i}" for i in range(10)), "--to", url, "--lines").split()
    assert len(ids) == 10
    # the daemon exits by itself after 3 (--concurrency 1: no second request in flight)
    p = a.run("dropr-send", "--max-messages", "3", "--batch", "1", "--concurrency", "1", timeout=DEADLINE)
    assert p.returncode == 0, p.stderr.decode()
    states = a.states("out")
    assert {i for i, s in states.items() if s == "sent"} == set(ids[:3])
    assert list(states.values()).count("queued") == 7
    assert len(inbox(b)) == 3
    # --once stops early too
    p = a.send_once("--max-messages", "4", "--batch", "2", "--concurrency", "1")
    assert p.returncode == 0, p.stderr.decode()
    assert list(a.states("out").values()).count("sent") == 7
    assert a.send_once().returncode == 0
    assert len(inbox(b)) == 10


def test_max_messages_default_concurrency(nodes: Nodes) -> None:
    a, _, url = two_nodes(nodes)
    a.put("\n".join(f"m{i}" for i in range(10)), "--to", url, "--lines")
    p = a.run("dropr-send", "--max-messages", "3", "--batch", "1", timeout=DEADLINE)
    assert p.returncode == 0, p.stderr.decode()
    assert list(a.states("out").values()).count("sent") == 3


# -- TLS ------------------------------------------------------------------------------------------


def serve_tls(nodes: Nodes, tmp_path: Path) -> tuple[Node, Node, Path, str]:
    """Make nodes a and b, b serving https with a private CA's certificate: (a, b, CA, URL)."""
    ca, cert, key = make_ca(tmp_path / "certs")
    a, b = nodes("a"), nodes("b")
    return a, b, ca, b.serve("--certfile", str(cert), "--keyfile", str(key))


def test_tls_private_ca(nodes: Nodes, tmp_path: Path) -> None:
    a, b, ca, url = serve_tls(nodes, tmp_path)
    assert url.startswith("https://127.0.0.1:")

    # without the CA the certificate is not trusted: deferred, error shown, still queued
    a.config(f'[peers.b]\nurl = "{url}"\n')
    ident = a.put("over tls", "--to", "b")
    p = a.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert a.states("out") == {ident: "queued"}
    assert "certificate" in ls_text(a, "--out").lower()
    assert inbox(b) == []

    a.config(f'[peers.b]\nurl = "{url}"\ncafile = "{ca}"\n')
    p = a.send_once("--now")
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {ident: "sent"}
    (rec,) = inbox(b)
    assert rec["id"] == ident
    assert Path(rec["path"]).read_bytes() == b"over tls"


def _health_over_tls(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession | None, bool]:
    """GET /v1/health on a new TLS connection; return its session and whether it resumed one."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
    ):
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        return tls.session, tls.session_reused


def test_tls_context_is_kept_and_a_renewed_certificate_is_served(nodes: Nodes, tmp_path: Path) -> None:
    """dropr-serve keeps its TLS context from one connection to the next (gunicorn's
    default built one per connection, 1.2 ms each): a client's session resumes on its
    next connection, which a new context, with new ticket keys, cannot do. A certificate
    renewed in place is still served from the next connection on, without a restart, and
    files that do not load leave the one before in use."""
    ca, cert, key = make_ca(tmp_path / "certs")
    b = nodes("b")
    url = b.serve("--certfile", str(cert), "--keyfile", str(key), "--workers", "1")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    ctx = ssl.create_default_context(cafile=str(ca))
    session, resumed = _health_over_tls(port, ctx)
    assert session is not None and not resumed
    assert _health_over_tls(port, ctx, session)[1], "the next connection resumes the first one's session"

    ca2, cert2, key2 = make_ca(tmp_path / "renewed")  # another CA: only the new certificate passes
    os.replace(key2, key)
    os.replace(cert2, cert)
    ctx2 = ssl.create_default_context(cafile=str(ca2))
    _health_over_tls(port, ctx2)
    with pytest.raises(ssl.SSLCertVerificationError):
        _health_over_tls(port, ctx)

    # half a renewal: a key that does not parse (yet); the certificate before is still served
    good_key = key.read_bytes()
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot yet\n")
    _health_over_tls(port, ctx2)
    assert "cannot load the changed certificate or key" in b.serve_log.read_text()
    key.write_bytes(good_key)
    _health_over_tls(port, ctx2)


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("missing", 66, "cannot read --certfile"),
        ("not pem", 78, "no PEM certificate in"),
        ("no key", 78, "no PEM private key in"),
        ("other key", 78, "does not belong to the certificate"),
    ],
)
def test_tls_files_that_cannot_serve_fail_at_start_in_one_line(
    nodes: Nodes, tmp_path: Path, case: str, code: int, says: str
) -> None:
    """gunicorn checked only that the files exist (with a traceback if not): a certificate
    that did not parse, or a key of another certificate, started a server that failed
    every connection."""
    _, cert, key = make_ca(tmp_path / "certs")
    _, _, other_key = make_ca(tmp_path / "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    files = {
        "missing": (tmp_path / "gone.pem", key),
        "not pem": (junk, key),
        "no key": (cert, cert),
        "other key": (cert, other_key),
    }[case]
    b = nodes("b")
    p = b.run(
        "dropr-serve", "--listen", "127.0.0.1:0", "--certfile", str(files[0]), "--keyfile", str(files[1])
    )
    err = p.stderr.decode()
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropr-serve: error: ") and says in err, err


def test_tls_url_peer_with_global_cafile(nodes: Nodes, tmp_path: Path) -> None:
    """A peer given as an https URL uses send.cafile from the config."""
    a, b, ca, url = serve_tls(nodes, tmp_path)
    a.config(f'[send]\ncafile = "{ca}"\n')
    ident = a.put("by url", "--to", url)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    assert [r["id"] for r in inbox(b)] == [ident]
