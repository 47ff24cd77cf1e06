"""What dropr-send says on stderr (dropr-send.8, LOGGING): by default a line per batch or
interval (``sent peer=P count=N bytes=B in=S``, ``processed peer=P count=N``), a line per
message only with -v, and a message that dies always with its id."""

from __future__ import annotations

import logging
import re
import signal
import subprocess

import pytest
from helpers import Node, Nodes, Pair, stop, wait_until

SUMMARY = re.compile(r"^dropr-send: sent peer=(\S+) count=(\d+) bytes=(\d+) in=\d+\.\d\ds$")


def err_lines(p: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert p.returncode == 0, p.stderr.decode()
    return p.stderr.decode().splitlines()


def consume(b: Node, ids: list[str]) -> None:
    """Claim and ack every message at b."""
    got = b.run("dropr-recv", "--all", check=True).stdout.decode().splitlines()
    assert sorted(line.split("\t")[0] for line in got) == sorted(ids)
    b.run("dropr-ack", *ids, check=True)


def poll_processed(a: Node, ids: list[str], *args: str) -> list[str]:
    """Run --once passes at a until every id is processed; return the stderr lines of all."""
    seen: list[str] = []

    def done() -> bool:
        seen.extend(err_lines(a.send_once(*args)))
        return set(a.states("out").values()) == {"processed"}

    wait_until(done, 30, "the receipts")
    return seen


def test_by_default_a_line_per_batch_and_none_per_message(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ids = pair.put_lines(7)
    lines = err_lines(a.send_once("--batch", "5", "--concurrency", "1"))
    sums = [SUMMARY.match(line) for line in lines]
    assert all(sums), lines  # nothing else: no line per message
    assert [int(s[2]) for s in sums if s] == [5, 2]  # the first batch at once, the rest as it ends
    assert all(int(s[3]) > 5 * len("message 0") for s in sums if s)  # the bytes uploaded
    peer = sums[0][1] if sums[0] else ""
    consume(b, ids)
    lines = poll_processed(a, ids)
    assert [line for line in lines if line.startswith("dropr-send: processed ")] == [
        f"dropr-send: processed peer={peer} count=7"
    ]
    assert not [line for line in lines if "id=" in line], lines


def test_verbose_adds_a_line_per_message(pair: Pair) -> None:
    a, b = pair.a, pair.b
    ids = pair.put_lines(3)
    lines = err_lines(a.send_once("-v"))
    peer = next(m[1] for m in map(SUMMARY.match, lines) if m)
    assert [line for line in lines if " sent id=" in line] == [
        f"dropr-send: sent id={i} peer={peer}" for i in ids
    ]
    assert f"dropr-send: sent peer={peer} count=3" in " ".join(lines)
    consume(b, ids)
    lines = poll_processed(a, ids, "-v")
    assert sorted(line for line in lines if " processed id=" in line) == sorted(
        f"dropr-send: processed id={i} peer={peer}" for i in ids
    )
    assert f"dropr-send: processed peer={peer} count=3" in lines


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_a_refused_message_dies_with_its_id_with_or_without_v(nodes: Nodes, verbose: list[str]) -> None:
    a, b = nodes("a"), nodes("b")
    url = b.serve("--max-size", "1KiB")
    big = a.put(b"x" * 2048, "--to", url)
    small = a.put(b"fits", "--to", url)
    lines = err_lines(a.send_once(*verbose))
    dead = [line for line in lines if line.startswith("dropr-send: dead ")]
    assert len(dead) == 1 and dead[0].startswith(f"dropr-send: dead id={big} peer="), lines
    assert "too large" in dead[0]
    others = [line for line in lines if line not in dead]
    if verbose:
        assert [line for line in others if " id=" in line] == [
            f"dropr-send: sent id={small} {dead[0].split()[3]}"
        ]
    else:
        assert [bool(SUMMARY.match(line)) for line in others] == [True], lines
        assert small not in "".join(lines)


def test_a_daemon_sums_up_as_it_goes_and_as_it_stops(pair: Pair) -> None:
    a = pair.a
    ids = pair.put_lines(4)
    p = a.start_sender()
    try:
        wait_until(lambda: "count=4" in a.send_log.read_text(), 30, "the summary of the first batch")
        more = pair.put_lines(2)
        wait_until(lambda: set(a.states("out")) >= set(ids + more), 30, "the second batch")
        wait_until(lambda: all(a.states("out")[i] == "sent" for i in more), 30, "the second batch sent")
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        stop(p)
    lines = a.send_log.read_text().splitlines()
    counts = [int(m[2]) for m in map(SUMMARY.match, lines) if m]
    assert counts == [4, 2], lines  # the second batch within LOG_EVERY: written as it stopped
    assert not [line for line in lines if "id=" in line], lines


def test_no_logging_call_per_message_unless_debug(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, at the INFO level: a handful of logging calls for 300 messages."""
    from dropr.sender import Sender, SendOptions
    from dropr.spool import Spool

    pair.put_lines(300)
    calls = []
    real = logging.Logger.isEnabledFor

    def counted(self: logging.Logger, level: int) -> bool:
        calls.append(level)
        return real(self, level)

    root = logging.getLogger("dropr")
    level = root.level
    monkeypatch.setenv("DROPR_NODE", "a")
    sp = Spool(str(pair.a.spool))
    root.setLevel(logging.INFO)  # what dropr-send runs at without -v or -q
    try:
        with monkeypatch.context() as mp:
            mp.setattr(logging.Logger, "isEnabledFor", counted)
            assert Sender(sp, SendOptions(once=True, batch=50)).run_once() == 0
    finally:
        root.setLevel(level)
    assert set(pair.a.states("out").values()) == {"sent"}
    assert 1 <= len(calls) < 40, calls  # per batch (6 of 50) and per pass, not per message


@pytest.mark.parametrize(("quiet", "shows_dead"), [(["-q"], True), (["-q", "-q"], False)])
def test_quiet_keeps_warnings_once_and_only_errors_twice(
    nodes: Nodes, quiet: list[str], shows_dead: bool
) -> None:
    """dropr-send.8: -q once, only warnings (deferred, dead) and errors; twice, only errors."""
    a, b = nodes("a"), nodes("b")
    url = b.serve("--max-size", "1KiB")
    big = a.put(b"x" * 2048, "--to", url)
    a.put(b"fits", "--to", url)
    lines = err_lines(a.send_once(*quiet))
    assert not [line for line in lines if SUMMARY.match(line)], lines  # the summary is info
    dead = [line for line in lines if line.startswith(f"dropr-send: dead id={big} ")]
    assert len(dead) == shows_dead, lines
    assert len(lines) == shows_dead, lines
