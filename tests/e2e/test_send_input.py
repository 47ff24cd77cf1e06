"""dropr-send against bad input: a peer that fails over and over, a failure count left
in peer.json, a spool path that is not ASCII, and --peer names that name no peer.

Every process runs on 127.0.0.1 with its spool in tmp_path; every wait polls with a
deadline. Only processes these tests started are signalled, by pid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Node, Nodes, expect_error, free_port, one_error_line, wait_until

TEMPFAIL = 75
USAGE = 64
UNAVAILABLE = 69
DEADLINE = 60.0


def down_peer(node: Node) -> tuple[str, Path]:
    """Put one message for a loopback port nobody listens on; return its id and peer folder."""
    ident = node.put("for a peer that is down", "--to", f"http://127.0.0.1:{free_port()}/")
    (folder,) = (node.spool / "out").iterdir()
    return ident, folder


def deferred(stderr: bytes) -> list[str]:
    return [ln for ln in stderr.decode().splitlines() if "deferred peer=" in ln]


# -- a failing peer: one try per pass, a backoff that cannot overflow -----------------------------


@pytest.mark.parametrize("now", [False, True])
def test_once_tries_a_failing_peer_once_per_pass(nodes: Nodes, now: bool) -> None:
    # With --now a failed peer used to be tried again at once, in a tight loop, until
    # the 1024th failure overflowed the backoff and crashed the sender.
    a = nodes("a")
    a.config('[send]\nbackoff_min = "1ms"\nbackoff_max = "1ms"\n')  # due again at once
    ident, folder = down_peer(a)
    p = a.send_once(*(["--now"] if now else []))
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()
    assert len(deferred(p.stderr)) == 1, p.stderr.decode()
    assert json.loads((folder / "peer.json").read_text())["failures"] == 1
    assert a.states("out") == {ident: "queued"}


@pytest.mark.parametrize("failures", [1024, pytest.param(10**400, id="10**400"), "many", -3, None, 1.5e308])
def test_a_bad_failure_count_in_peer_json_is_survived(nodes: Nodes, failures: Any) -> None:
    # peer.json may hold the huge count the tight loop left behind, or anything else.
    a = nodes("a")
    ident, folder = down_peer(a)
    (folder / "peer.json").write_text(json.dumps({"failures": failures, "until": "soon"}))
    p = a.send_once()
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()
    (line,) = deferred(p.stderr)
    retry_in = float(line.rsplit("retry_in=", 1)[1].rstrip("s"))
    assert 0 < retry_in <= 300  # send.backoff_max
    st = json.loads((folder / "peer.json").read_text())
    assert st["until"] <= time.time() + 300
    assert a.states("out") == {ident: "queued"}


def test_daemon_with_now_backs_off_after_its_first_failure(nodes: Nodes) -> None:
    a = nodes("a")
    a.config('[send]\nbackoff_min = "30s"\n')
    _, folder = down_peer(a)
    (folder / "peer.json").write_text(json.dumps({"failures": 3, "until": time.time() + 3600}))
    p = a.start_sender("--now", wait=False)
    log = a.send_log
    wait_until(lambda: deferred(log.read_bytes()), DEADLINE, "the first failed attempt")  # --now
    # A negative check needs a window: a sender retrying in a tight loop fails hundreds
    # of times in it; one that backs off (30 s) not once more.
    time.sleep(1)
    assert p.poll() is None, log.read_text()
    assert len(deferred(log.read_bytes())) == 1, log.read_text()
    assert json.loads((folder / "peer.json").read_text())["failures"] == 4


# -- a spool path that is not ASCII ------------------------------------------------------------------


def test_a_spool_under_a_non_ascii_directory_delivers(nodes: Nodes, tmp_path: Path) -> None:
    # pycurl encodes a str path as ASCII: the upload of a file under "sé" crashed the sender.
    a, b = nodes("a"), nodes("b")
    url = b.serve()
    a.spool = tmp_path / "sé" / "a"
    a.env["DROPR_SPOOL"] = os.fsdecode(a.spool)
    ident = a.put("from a non-ASCII path", "--to", url)
    p = a.send_once()
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {ident: "sent"}
    (rec,) = b.ls("-l", "--in")
    assert rec["id"] == ident
    assert Path(rec["path"]).read_bytes() == b"from a non-ASCII path"


# -- --peer names --------------------------------------------------------------------------------


def test_an_unknown_peer_is_an_error_and_nothing_is_sent(nodes: Nodes) -> None:
    # A typo used to exit 0, silently, while the real peer's messages stayed queued.
    a, b = nodes("a"), nodes("b")
    url = b.serve()
    a.config(f'[peers.b]\nurl = "{url}"\n[peers.c]\nurl = "http://127.0.0.1:{free_port()}/"\n')
    ident = a.put("stays queued", "--to", "b")
    p = a.send_once("--peer", "b", "--peer", "nosuch", timeout=30)
    line = expect_error(p, UNAVAILABLE, "dropr-send")
    assert "unknown peer 'nosuch' (known: b, c);" in line, line
    assert a.states("out") == {ident: "queued"}
    assert b.ls("-l", "--in") == []
    p = a.send_once("--peer", "b")
    assert p.returncode == 0, p.stderr.decode()
    assert a.states("out") == {ident: "sent"}


def test_a_daemon_warns_about_an_unknown_peer_and_delivers_to_the_others(nodes: Nodes) -> None:
    """A service is not to exit (and be restarted over and over) because a URL peer's
    outbox folder does not exist yet: the first put for it makes it."""
    a, b = nodes("a"), nodes("b")
    url = b.serve()
    a.config(f'[peers.b]\nurl = "{url}"\n')
    a.start_sender("--peer", "b", "--peer", "later", wait=False)
    log = a.send_log
    ident = a.put("goes", "--to", "b")
    wait_until(lambda: a.states("out").get(ident) == "sent", DEADLINE, "the daemon to deliver to b")
    assert "unknown peer=later known=b" in log.read_text()


def test_an_outbox_folder_is_a_known_peer(nodes: Nodes) -> None:
    a = nodes("a")
    ident, folder = down_peer(a)
    p = a.send_once("--peer", folder.name)
    assert p.returncode == TEMPFAIL, p.stderr.decode()
    assert a.states("out") == {ident: "queued"}
    line = expect_error(a.send_once("--peer", "elsewhere"), UNAVAILABLE, "dropr-send")
    assert f"(known: {folder.name});" in line, line


@pytest.mark.parametrize("name", ["..", "", ".", "a/b", "../a", "http://127.0.0.1:9/"])
def test_a_name_that_cannot_be_a_peer_is_a_usage_error(nodes: Nodes, name: str) -> None:
    a = nodes("a")
    ident, _ = down_peer(a)
    line = expect_error(a.send_once("--peer", name), USAGE, "dropr-send")
    assert f"bad --peer {name!r}" in line, line
    assert a.states("out") == {ident: "queued"}


def test_a_peer_url_names_the_folder_to_give(nodes: Nodes) -> None:
    a = nodes("a")
    url = f"http://127.0.0.1:{free_port()}/"
    a.put("x", "--to", url)
    (folder,) = (a.spool / "out").iterdir()
    line = one_error_line(a.send_once("--peer", url).stderr, "dropr-send")
    assert line.endswith(f"--peer {folder.name}"), line
