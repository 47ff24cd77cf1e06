"""Fetch end to end: a laptop nobody can reach fetches what its hub holds for it.

Real nodes on 127.0.0.1: "hub" serves and holds messages for "laptop" (hold = true);
laptop runs dropr-send --fetch hub (--once, or the daemon). Every wait polls with a
deadline; only processes these tests started are signalled, by pid.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dropr.spool.relay import RELAYED_MARK
from helpers import (
    NOWHERE,
    Node,
    Nodes,
    command_path,
    expect_error,
    inbox_states,
    listdir,
    out_states,
    wait_until,
)

HUB_TOKEN = "tok-laptop-1"
MALLORY_TOKEN = "tok-mallory-1"


def hub_and_laptop(nodes: Nodes, *, laptop: str = "laptop", token: str = HUB_TOKEN) -> tuple[Node, Node]:
    """Start hub (holding messages for laptop) and configure a fetching node; return both."""
    hub = nodes("hub")
    tokens = f'"{HUB_TOKEN}" = "laptop"\n"{MALLORY_TOKEN}" = "mallory"\n'
    hub.config(f"[peers.laptop]\nhold = true\n[serve.tokens]\n{tokens}")
    url = hub.serve()
    lap = nodes(laptop)
    lap.config(f'[peers.hub]\nurl = "{url}"\ntoken = "{token}"\nfetch = true\n')
    return hub, lap


def put_lines(node: Node, n: int, to: str = "laptop") -> list[str]:
    p = node.run("dropr-put", "--lines", "--to", to, input="".join(f"m{i}\n" for i in range(n)), check=True)
    ids = p.stdout.decode().split()
    assert len(ids) == n
    return ids


def received(node: Node) -> list[str]:
    """Return every inbox name of the default channel, in any state."""
    return [
        n for st in ("ready", "claimed", "done", "dead") for n in listdir(node.spool / "in" / "default" / st)
    ]


def consume_all(node: Node) -> None:
    recv, ack = shlex.quote(command_path("dropr-recv")), shlex.quote(command_path("dropr-ack"))
    p = subprocess.run(
        ["/bin/sh", "-c", f"{recv} -n 1000 | {ack} -"], env=node.env, capture_output=True, timeout=60
    )
    assert p.returncode == 0, p.stderr.decode()


def test_fetch_rounds_once(nodes: Nodes) -> None:
    """--once fetches in rounds (batch 100) until the hub has nothing more; the hub's own
    dropr-send never touches a held peer; a second run finds nothing and exits 0."""
    hub, lap = hub_and_laptop(nodes)
    ids = put_lines(hub, 250)
    assert (hub.spool / "out" / "laptop" / "url").read_text().strip() == "hold"
    hub.send_once(check=True)  # the hub's sender leaves the held queue alone
    assert set(out_states(hub, "laptop").values()) == {"queued"}
    p = lap.send_once("--fetch", "hub", "--batch", "100")
    assert p.returncode == 0, p.stderr.decode()
    names = received(lap)
    assert sorted(n.split(",")[2] for n in names) == sorted(ids)
    assert {n.split(",")[1] for n in names} == {"hub"}  # stored under the hub's node
    assert out_states(hub, "laptop") == dict.fromkeys(ids, "sent")
    assert (lap.spool / "in" / "default" / "ready" / names[0]).read_bytes() in {
        f"m{i}".encode() for i in range(250)
    }
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert len(received(lap)) == 250


def test_receipts_flow_back_and_put_wait_returns(nodes: Nodes) -> None:
    """A message consumed at laptop becomes processed at hub with a later fetch, and a
    dropr-put --wait at the hub returns 0 once the laptop's daemon has fetched it,
    its consumer acked it, and the receipt came back; a rejected one goes dead there."""
    hub, lap = hub_and_laptop(nodes)
    first = hub.put("one", "--to", "laptop")
    assert lap.send_once("--fetch", "hub").returncode == 0
    consume_all(lap)
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert out_states(hub, "laptop") == {first: "processed"}
    lap.start_sender()
    waiting = hub.start(
        "dropr-put",
        "--wait",
        "--timeout",
        "60",
        "--to",
        "laptop",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert waiting.stdin is not None
    waiting.stdin.write(b"two")
    waiting.stdin.close()
    wait_until(lambda: len(received(lap)) == 2, 30, "the daemon to fetch the second message")
    consume_all(lap)
    assert waiting.wait(60) == 0
    assert waiting.stdout is not None and waiting.stderr is not None
    assert waiting.stderr.read() == b""  # no "no dropr-send is running": the laptop fetches
    second = waiting.stdout.read().decode().strip()
    assert out_states(hub, "laptop") == {first: "processed", second: "processed"}
    third = hub.put("three", "--to", "laptop")
    wait_until(lambda: len(received(lap)) == 3, 30, "the third message")
    rej = lap.run("dropr-recv", check=True).stdout.decode().split()
    lap.run("dropr-ack", "--reject", "--reason", "no thanks", rej[0], check=True)
    wait_until(lambda: out_states(hub, "laptop")[third] == "dead", 30, "the rejection to reach the hub")
    assert "no thanks" in (hub.spool / "out" / "laptop" / "meta" / third).read_text()


def test_long_poll_brings_a_put_without_polling(nodes: Nodes) -> None:
    """The laptop's daemon holds a fetch open at the hub; a put there wakes it, and the
    message is ready at the laptop at once (within 3 s on a loaded machine), where the hold
    lasts 30 s."""
    hub, lap = hub_and_laptop(nodes)
    lap.start_sender()
    held = lambda: [n for n in listdir(hub.spool / "wake") if n.startswith("fetch-laptop-")]  # noqa: E731
    for round_ in range(3):
        wait_until(held, 20, "a fetch held at the hub")
        time.sleep(0.2)  # well into the hold
        t0 = time.monotonic()
        ident = hub.put(f"ping {round_}", "--to", "laptop")
        wait_until(lambda ident=ident: ident in inbox_states(lap.spool), 10, "the put to reach the laptop")
        took = time.monotonic() - t0
        assert took < 3.0, f"took {took:.2f} s: the held fetch (held up to 30 s) was not woken"


def test_a_client_fetches_only_its_own_messages(nodes: Nodes) -> None:
    """mallory's token fetches nothing (no messages are held for mallory), and no token
    fetches the laptop's messages as another node; the laptop's stay queued."""
    hub, mallory = hub_and_laptop(nodes, laptop="mallory", token=MALLORY_TOKEN)
    ids = put_lines(hub, 3)
    p = mallory.send_once("--fetch", "hub")
    assert p.returncode == 75, p.stderr.decode()
    assert "no messages are held for 'mallory'" in p.stderr.decode()
    assert received(mallory) == []
    liar = nodes("liar")  # mallory's token, from a node calling itself laptop
    liar.env["DROPR_NODE"] = "laptop"
    (liar.spool / "dropr.toml").write_text(
        f'[peers.hub]\nurl = "{hub.url}"\ntoken = "{MALLORY_TOKEN}"\nfetch = true\n'
    )
    p = liar.send_once("--fetch", "hub")
    assert p.returncode == 75, p.stderr.decode()
    assert "token of 'mallory' cannot fetch the messages of 'laptop'" in p.stderr.decode()
    assert received(liar) == []
    assert out_states(hub, "laptop") == dict.fromkeys(ids, "queued")


def test_kill_between_store_and_confirm_loses_nothing_twice(nodes: Nodes, tmp_path: Path) -> None:
    """The fetcher stores an answer, and its confirm hangs at the hub (this test holds the
    hub's fetch lock, as a slow or stopped holder would); kill -9 the fetcher there: the
    messages are in the laptop's inbox and still queued at the hub. A new fetcher gets
    them again, and its inbox answers duplicate for each: every message is there once.
    Once the hub goes on, it marks them sent, and nothing is fetched twice after."""
    hub, lap = hub_and_laptop(nodes)
    ids = put_lines(hub, 40)
    fd = os.open(hub.spool / "lock" / "fetch-laptop.lock", os.O_RDWR | os.O_CREAT, 0o600)
    log = tmp_path / "second.log"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        first = lap.start("dropr-send", "--once", "--fetch", "hub", stderr=subprocess.DEVNULL)
        wait_until(lambda: len(received(lap)) == 40, 30, "the first answer to be stored")
        time.sleep(0.3)  # its confirm is on its way, and waits for the lock
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert out_states(hub, "laptop") == dict.fromkeys(ids, "queued")
        with open(log, "wb") as err:
            second = lap.start("dropr-send", "--once", "--fetch", "hub", "-v", stderr=err)
        wait_until(
            lambda: "fetched peer=hub count=40 duplicate=40" in log.read_text(),
            30,
            "the second fetch to answer duplicate",
        )
        assert second.poll() is None  # its confirm waits for the lock too
        assert sorted(n.split(",")[2] for n in received(lap)) == sorted(ids)
    finally:
        os.close(fd)
    assert second.wait(30) == 0, log.read_text()
    assert out_states(hub, "laptop") == dict.fromkeys(ids, "sent")
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert sorted(n.split(",")[2] for n in received(lap)) == sorted(ids)
    fetched = [line for line in log.read_text().splitlines() if "fetched id=" in line]
    assert len(fetched) == 40 and all(line.endswith(" duplicate") for line in fetched), fetched


def test_nothing_ever_held_is_nothing_to_fetch(nodes: Nodes) -> None:
    """A held peer nothing was ever put for: the fetch finds nothing, exit 0; dropr-ls at
    the hub shows when it last fetched."""
    hub, lap = hub_and_laptop(nodes)
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert received(lap) == []
    hub.put("now one", "--to", "laptop")
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert len(received(lap)) == 1
    assert "ago" in hub.run("dropr-ls", check=True).stdout.decode().split("laptop")[-1]


def test_once_exit_codes(nodes: Nodes) -> None:
    """--fetch of an unknown or non-fetch peer: one usage line, 64; an unreachable holder: 75."""
    lap = nodes("laptop")
    lap.config(f'[peers.hub]\nurl = "{NOWHERE}"\nfetch = true\n[peers.web]\nurl = "{NOWHERE}"\n')
    line = expect_error(lap.send_once("--fetch", "nosuch"), 64, "dropr-send")
    assert "bad --fetch 'nosuch': no configured peer" in line
    line = expect_error(lap.send_once("--fetch", "web"), 64, "dropr-send")
    assert "a peer without fetch = true" in line
    p = lap.send_once("--fetch", "hub")
    assert p.returncode == 75, p.stderr.decode()
    assert "deferred fetch peer=hub" in p.stderr.decode()


def test_fetch_from_a_server_that_holds_nothing_for_it(nodes: Nodes) -> None:
    """A server with no held peer for this node answers 403 in words: exit 75, nothing stored."""
    srv = nodes("plain")
    url = srv.serve()
    lap = nodes("laptop")
    lap.config(f'[peers.hub]\nurl = "{url}"\nfetch = true\n')
    p = lap.send_once("--fetch", "hub")
    assert p.returncode == 75
    assert "no messages are held for 'laptop'" in p.stderr.decode()
    assert received(lap) == []


def _fetch(
    url: str, body: object, node: str = "laptop", method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    """POST v1/fetch by hand (no tokens: X-Dropr-Origin names the client); return the
    status, the headers and the body."""
    import json
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + "v1/fetch",
        data=data if method == "POST" else None,
        method=method,
        headers={"X-Dropr-Origin": node, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _parts(headers: dict[str, str], body: bytes) -> list[tuple[str, bytes]]:
    """Split a multipart answer into (Content-Disposition, content) pairs, in order."""
    boundary = headers["Content-Type"].split("boundary=")[1].encode()
    pieces = body.split(b"--" + boundary)
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n", body[:200]
    out = []
    for piece in pieces[1:-1]:
        head, _, content = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-disposition"))
        out.append((disposition.decode(), content.removesuffix(b"\r\n")))
    return out


@pytest.fixture
def open_hub(nodes: Nodes) -> Node:
    """A hub without tokens, holding messages for laptop, with two threads per worker."""
    hub = nodes("hub")
    hub.config("[peers.laptop]\nhold = true\n")
    hub.serve("--threads", "2", "--workers", "1")
    return hub


def test_the_answer_on_the_wire(open_hub: Node) -> None:
    """The answer is multipart/form-data: the control part "fetch" first, then each
    message as its outbox file (header and payload), named by the hub's outbox name.
    Confirming one moves it to sent; the next answer has the other only."""
    import json

    hub = open_hub
    ids = [hub.put(p, "--to", "laptop") for p in ("first", "second")]
    code, headers, body = _fetch(hub.url, {"max": 10, "max_bytes": 1 << 20})
    assert code == 200, body
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(headers["Content-Length"]) == len(body)
    parts = _parts(headers, body)
    assert 'name="fetch"' in parts[0][0]
    control = json.loads(parts[0][1])
    names = sorted(os.listdir(hub.spool / "out" / "laptop" / "queued"))
    assert control == {"node": "hub", "more": False, "ask": [], "last": names[-1]}
    for (disposition, content), name, ident, payload in zip(
        parts[1:], names, ids, (b"first", b"second"), strict=True
    ):
        assert disposition == f'Content-Disposition: form-data; name="m"; filename="{name}"'
        assert name.endswith("," + ident)
        assert content == (hub.spool / "out" / "laptop" / "queued" / name).read_bytes()
        assert content[256:] == payload
    code, headers, body = _fetch(hub.url, {"max": 10, "max_bytes": 1 << 20, "results": [
        {"name": names[0], "status": "stored"}]})  # fmt: skip
    assert code == 200
    assert out_states(hub, "laptop") == {ids[0]: "sent", ids[1]: "queued"}
    assert [d for d, _ in _parts(headers, body)][1:] == [
        f'Content-Disposition: form-data; name="m"; filename="{names[1]}"'
    ]
    code, _, body = _fetch(hub.url, {"max": 1, "after": names[1]})
    assert code == 200 and json.loads(_parts(_, body)[0][1])["more"] is False
    assert len(_parts(_, body)) == 1


@pytest.mark.parametrize(
    ("body", "method", "code", "why"),
    [
        (b"not json", "POST", 400, "bad fetch request: not JSON"),
        ({"wait": -1}, "POST", 400, "wait must be a number, 0 or more"),
        ({"after": "../x"}, "POST", 400, "after must be an outbox name"),
        ({"results": {}}, "POST", 400, "results must be a list"),
        (b"", "GET", 405, "GET is not allowed on /v1/fetch, only POST"),
    ],
)
def test_bad_fetch_requests_are_refused_in_words(
    open_hub: Node, body: object, method: str, code: int, why: str
) -> None:
    import json

    ident = open_hub.put("kept", "--to", "laptop")
    got, _, raw = _fetch(open_hub.url, body, method=method)
    assert got == code
    assert why in json.loads(raw)["error"]
    assert out_states(open_hub, "laptop") == {ident: "queued"}


def test_a_worker_holds_at_most_threads_minus_one_fetches(open_hub: Node) -> None:
    """With two threads, one fetch is held (until a put wakes it); a second one, while
    the first is held, is answered at once, empty: the worker keeps a thread free."""
    import json
    import threading

    hub = open_hub
    held: list[float] = []

    def first() -> None:
        t0 = time.monotonic()
        code, _, _ = _fetch(hub.url, {"wait": 20, "max": 10})
        held.append(time.monotonic() - t0)
        assert code == 200

    th = threading.Thread(target=first)
    th.start()
    wait_until(
        lambda: [n for n in listdir(hub.spool / "wake") if n.startswith("fetch-laptop-")], 10, "a held fetch"
    )
    t0 = time.monotonic()
    code, headers, body = _fetch(hub.url, {"wait": 20, "max": 10})
    assert code == 200 and time.monotonic() - t0 < 5
    assert len(_parts(headers, body)) == 1 and json.loads(_parts(headers, body)[0][1])["ask"] == []
    hub.put("wake up", "--to", "laptop")
    th.join(30)
    assert held and held[0] < 15


def test_stopping_the_holder_does_not_wait_for_held_fetches(nodes: Nodes) -> None:
    """TERM to the hub's dropr-serve answers its held fetch at once: it stops well within
    the 30 s a fetch may be held."""
    hub, lap = hub_and_laptop(nodes)
    lap.start_sender()
    wait_until(
        lambda: [n for n in listdir(hub.spool / "wake") if n.startswith("fetch-laptop-")], 20, "a held fetch"
    )
    t0 = time.monotonic()
    hub.stop_serve()
    assert time.monotonic() - t0 < 15


def test_a_message_relayed_to_the_holder_keeps_its_origin(nodes: Nodes) -> None:
    """A message the hub relayed (its header says o=a h=1, as the relay store writes it)
    is stored at the laptop under origin a, and its receipt is asked for under a."""
    from dropr import message as m

    hub, lap = hub_and_laptop(nodes)
    hub.put("own", "--to", "laptop")  # makes the folder
    ident, t = "relayed-1", m.now_us()
    hdr = m.Header(ident, "default", 5, t, 0, 7, m.crc32(b"relayed"), origin="a", hops=1)
    tmp = hub.spool / "tmp" / "relayed"
    tmp.write_bytes(hdr.pack() + b"relayed")
    os.link(tmp, hub.spool / "out" / "laptop" / "queued" / m.out_name(5, t, ident))
    tmp.unlink()
    (hub.spool / "out" / "laptop" / RELAYED_MARK).touch()  # as the relay store marks its folder
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert sorted(n.split(",")[1] for n in received(lap)) == ["a", "hub"]
    assert os.path.lexists(lap.spool / "rcv" / "a" / ident)
    consume_all(lap)
    assert lap.send_once("--fetch", "hub").returncode == 0
    assert set(out_states(hub, "laptop").values()) == {"processed"}
