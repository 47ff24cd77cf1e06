"""dropr-recv and dropr-ack as installed, on an inbox filled by a real peer.

Node "a" puts to node "b"'s dropr-serve and delivers with dropr-send --once;
the consumers then run at "b". Every wait polls with a deadline; only
processes these tests started (and their children) are signalled, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import CLAIM_FIELDS, Node, Pair, alive, children, command_path, wait_until

HANDLER_ENV = (
    "DROPR_ID",
    "DROPR_CHANNEL",
    "DROPR_ORIGIN",
    "DROPR_PRIORITY",
    "DROPR_ATTEMPT",
    "DROPR_PATH",
)


def in_state(b: Node, ident: str) -> str | None:
    """Return the inbox state of one message at b (None if not there)."""
    return b.states("in").get(ident)


def detail(b: Node, ident: str) -> dict[str, Any]:
    """Return dropr-ls --json ID for the inbox record of one message."""
    recs = [r for r in b.ls(ident) if r["box"] == "in"]
    assert len(recs) == 1, recs
    return recs[0]


def waiting(b: Node) -> list[str]:
    """Return the wake-up sockets of consumers waiting on b's default channel."""
    wake = b.spool / "wake"
    return [n for n in os.listdir(wake) if n.startswith("recv-default-")] if wake.is_dir() else []


def recv_json(b: Node, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run dropr-recv --format json; return its exit status and the records."""
    p = b.run("dropr-recv", "--format", "json", *args)
    return p.returncode, [json.loads(line) for line in p.stdout.decode().splitlines()]


def run_bounded(node: Node, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run a command that must end by itself within timeout (killed and failed if not)."""
    try:
        return node.run(*args, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        err = (exc.stderr or b"").decode(errors="replace").splitlines()
        tail = "\n".join(err[-3:])
        raise AssertionError(
            f"{args[0]} still running after {timeout}s; {len(err)} stderr lines, the last:\n{tail}"
        ) from None


def descendants(pid: int) -> list[int]:
    """Return every descendant of pid, children first."""
    out: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children(p)
    return out


def kill_quiet(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def q(path: Path) -> str:
    return shlex.quote(str(path))


# -- leases ---------------------------------------------------------------------


def test_lease_expiry_redelivers_with_attempt_2(pair: Pair) -> None:
    (ident,) = pair.deliver([b"lease me"])
    b = pair.b
    t0 = time.monotonic()
    rc, recs = recv_json(b, "--lease", "1s")
    assert rc == 0 and [r["id"] for r in recs] == [ident]
    assert recs[0]["attempt"] == 1
    p = b.run("dropr-recv")
    if time.monotonic() - t0 < 0.7:  # only meaningful while the lease surely holds
        assert p.returncode == 1, "a claimed message was handed out again while its lease held"
        assert p.stdout == b""

    def again() -> list[dict[str, Any]] | None:
        rc, recs = recv_json(b, "--lease", "5m")
        return recs if rc == 0 else None

    recs = wait_until(again, 15, "the message to come back after its lease")
    assert time.monotonic() - t0 >= 1.0
    assert [r["id"] for r in recs] == [ident]
    assert recs[0]["attempt"] == 2
    assert Path(recs[0]["path"]).read_bytes() == b"lease me"
    rec = detail(b, ident)
    assert rec["state"] == "claimed" and rec["attempts"] == 1
    assert "lease" in (rec["error"] or "")
    b.run("dropr-ack", ident, check=True)
    assert in_state(b, ident) == "done"


def test_six_consumers_never_share_a_message(pair: Pair, tmp_path: Path) -> None:
    ids = pair.deliver_lines(300)
    b = pair.b
    recv = shlex.quote(command_path("dropr-recv"))
    loop = f"while :; do {recv} -n 5 --lease 5m || {{ rc=$?; break; }}; done; exit $rc"
    outs = [tmp_path / f"consumer{i}.out" for i in range(6)]
    procs = []
    for out in outs:
        with open(out, "wb") as f:
            procs.append(b.start("/bin/sh", "-c", loop, stdout=f))
    for p in procs:
        p.wait(90)
    rcs = [p.returncode for p in procs]
    assert rcs == [1] * 6, f"each loop must end on 'nothing ready' (exit 1): {rcs}"
    got: list[str] = []
    per = []
    for out in outs:
        lines = out.read_text().splitlines()
        per.append(len(lines))
        for line in lines:
            ident, path = line.split("\t")
            assert "/claimed/" in path
            got.append(ident)
    dup = {i for i in got if got.count(i) > 1}
    assert not dup, f"{len(dup)} messages went to two consumers: {sorted(dup)[:5]}"
    assert sorted(got) == sorted(ids), f"per consumer: {per}"
    assert sum(1 for n in per if n) >= 2, f"no concurrency at all: {per}"
    states = b.states("in")
    assert set(states.values()) == {"claimed"} and len(states) == 300


# -- handler mode -----------------------------------------------------------------


def test_handler_success_payload_and_environment(pair: Pair, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    payloads = [b"", b"plain text\n", bytes(range(256)) * 64, os.urandom(300_000)]
    ids = pair.deliver(payloads, "--channel", "jobs", "--priority", "2")
    handler = (
        f'cat > {q(out)}/$DROPR_ID && cp "$DROPR_PATH" {q(out)}/$DROPR_ID.viapath && '
        f'printf \'%s\\n\' "$DROPR_ID" "$DROPR_CHANNEL" "$DROPR_ORIGIN" "$DROPR_PRIORITY" '
        f'"$DROPR_ATTEMPT" "$DROPR_PATH" > {q(out)}/$DROPR_ID.env'
    )
    p = run_bounded(pair.b, "dropr-recv", "--exec", handler, "--channel", "jobs", "--once", timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    for ident, payload in zip(ids, payloads, strict=True):
        assert (out / ident).read_bytes() == payload, f"stdin payload of {ident} differs"
        assert (out / f"{ident}.viapath").read_bytes() == payload
        env = dict(zip(HANDLER_ENV, (out / f"{ident}.env").read_text().splitlines(), strict=True))
        assert env["DROPR_ID"] == ident
        assert env["DROPR_CHANNEL"] == "jobs"
        assert env["DROPR_ORIGIN"] == "a"
        assert env["DROPR_PRIORITY"] == "2"
        assert env["DROPR_ATTEMPT"] == "1"
        assert env["DROPR_PATH"].startswith(str(pair.b.spool) + "/")
        assert "/jobs/claimed/" in env["DROPR_PATH"] and env["DROPR_PATH"].endswith(ident)
    assert pair.b.states("in") == {i: "done" for i in ids}


def test_handler_failure_retried_then_dead_with_reason(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"poison"])
    runs = tmp_path / "runs"
    handler = f"echo run >> {q(runs)}; echo 'first line' >&2; echo 'boom: cannot frobnicate' >&2; exit 3"
    b = pair.b
    logs = []

    def attempt() -> bool:
        p = run_bounded(b, "dropr-recv", "--exec", handler, "--once", "--max-attempts", "2", timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        logs.append(p.stderr.decode())
        return in_state(b, ident) == "dead"

    wait_until(attempt, 20, "the message to go dead after 2 failed attempts")
    assert runs.read_text().splitlines() == ["run", "run"], "exactly --max-attempts runs"
    log = "".join(logs)
    assert f"failed id={ident}" in log and f"dead id={ident}" in log
    rec = detail(b, ident)
    assert rec["state"] == "dead"
    assert "exit status 3" in rec["error"] and "boom: cannot frobnicate" in rec["error"]
    assert "first line" not in rec["error"], "the reason carries the handler's last stderr line"
    text = b.run("dropr-ls", ident, check=True).stdout.decode()
    assert "dead" in text and "exit status 3" in text and "boom: cannot frobnicate" in text
    listing = b.run("dropr-ls", "--in", "--state", "dead", "-l", check=True).stdout.decode()
    (line,) = listing.splitlines()
    assert ident in line and "exit status 3" in line and "boom: cannot frobnicate" in line
    # dead is final: nothing more to consume
    assert b.run("dropr-recv").returncode == 1


def test_handler_exit_75_releases(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"not now"])
    runs = tmp_path / "runs"
    b = pair.b
    handler = f"echo run >> {q(runs)}; exit 75"
    p = run_bounded(b, "dropr-recv", "--exec", handler, "--once", "--max-attempts", "1", timeout=5)
    assert p.returncode == 0, p.stderr.decode()
    assert runs.read_text().splitlines() == ["run"]
    assert in_state(b, ident) in ("ready", "wait"), "exit 75 releases: not done, not dead"

    def again() -> list[dict[str, Any]] | None:
        rc, recs = recv_json(b)
        return recs if rc == 0 else None

    recs = wait_until(again, 15, "the released message to be ready again")
    assert recs[0]["id"] == ident and recs[0]["attempt"] == 2


def test_handler_exit_75_is_not_a_failure(pair: Pair, tmp_path: Path) -> None:
    """A release (75) never counts toward --max-attempts, even with --max-attempts 1."""
    (ident,) = pair.deliver([b"not now"])
    runs = tmp_path / "runs"
    b = pair.b
    handler = f"echo run >> {q(runs)}; exit 75"
    proc = b.start("dropr-recv", "--exec", handler, "--max-attempts", "1", stderr=subprocess.DEVNULL)
    wait_until(lambda: runs.exists(), 15, "the handler to run")
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    assert in_state(b, ident) in ("ready", "wait")
    rec = detail(b, ident)
    assert "75" in (rec["error"] or "")


def recv_with_1s_timeout(
    b: Node, handler: str, *, max_attempts: int, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """Run dropr-recv --once --exec handler --timeout 1s; it must end within timeout."""
    return run_bounded(
        b,
        "dropr-recv",
        "--exec",
        handler,
        "--timeout",
        "1s",
        "--max-attempts",
        str(max_attempts),
        "--once",
        timeout=timeout,
    )


def test_handler_timeout_terminates_and_counts_as_failed(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"slow"])
    b = pair.b
    sh = tmp_path / "sh.pid"
    handler = f"echo $$ > {q(sh)}; echo 'napping now' >&2; exec sleep 30"
    t0 = time.monotonic()
    p = recv_with_1s_timeout(b, handler, max_attempts=1, timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.decode()
    assert 1.0 <= took < 5.0, f"TERM at --timeout ends a plain sleep at once; took {took:.1f}s"
    assert not alive(int(sh.read_text())), "the handler still runs after its timeout"
    rec = detail(b, ident)
    assert rec["state"] == "dead"
    assert "timed out after 1s" in rec["error"] and "napping now" in rec["error"]


def test_handler_ignoring_term_is_killed(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"stubborn"])
    b = pair.b
    sh = tmp_path / "sh.pid"
    handler = f"trap '' TERM; echo $$ > {q(sh)}; i=0; while [ $i -lt 400 ]; do sleep 0.1; i=$((i+1)); done"
    t0 = time.monotonic()
    p = recv_with_1s_timeout(b, handler, max_attempts=2, timeout=40)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.decode()
    assert took < 20, f"KILL should follow TERM after a short grace; took {took:.1f}s"
    assert not alive(int(sh.read_text()))
    rec = detail(b, ident)
    assert rec["state"] == "wait", "one failed attempt of two: waiting for its retry"
    assert "timed out after 1s" in rec["error"]


def test_handler_timeout_kills_the_whole_handler(pair: Pair, tmp_path: Path) -> None:
    pair.deliver([b"slow"])
    b = pair.b
    kid = tmp_path / "child.pid"
    late = tmp_path / "late"
    # the child lets go of dropr-recv's stdout and stderr, so only its being alive tells
    handler = f"(sleep 20; echo late > {q(late)}) >/dev/null 2>&1 & echo $! > {q(kid)}; wait"
    try:
        p = recv_with_1s_timeout(b, handler, max_attempts=1, timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        pid = int(kid.read_text())
        deadline = time.monotonic() + 2
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid), "a child of the timed-out handler is still running"
    finally:
        if kid.exists():
            pid = int(kid.read_text())
            for d in descendants(pid):
                kill_quiet(d)
            kill_quiet(pid)


def test_lease_is_renewed_while_the_handler_runs(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"long job"])
    b = pair.b
    out = tmp_path / "out"
    handler = f"sleep 2.5; cat > {q(out)}"
    args = ("--exec", handler, "--lease", "1s", "--once")
    proc = b.start("dropr-recv", *args, stderr=subprocess.DEVNULL)
    wait_until(lambda: in_state(b, ident) == "claimed", 15, "the handler to claim")
    stolen = []
    while proc.poll() is None:
        p = b.run("dropr-recv", "--lease", "5m")
        if p.returncode == 0:
            stolen.append(time.monotonic())
            break  # keep it: releasing would let the first consumer run it again
    proc.wait(30)
    assert not stolen, "another consumer got the message while its handler ran"
    assert out.read_bytes() == b"long job"
    assert in_state(b, ident) == "done"


def test_handler_daemon_is_woken_by_an_arrival(pair: Pair, tmp_path: Path) -> None:
    b = pair.b
    out = tmp_path / "out"
    out.mkdir()
    b.start("dropr-recv", "--exec", f"cat > {q(out)}/$DROPR_ID", stderr=subprocess.DEVNULL)
    wait_until(lambda: waiting(b), 15, "dropr-recv --exec to wait")
    (ident,) = pair.deliver([b"hot"])
    t_stored = time.monotonic()
    wait_until(lambda: (out / ident).exists() and in_state(b, ident) == "done", 15, "the handler")
    latency = time.monotonic() - t_stored
    assert (out / ident).read_bytes() == b"hot"
    assert latency < 0.8, f"handled {latency:.2f}s after the message was stored"


def test_jobs_run_concurrently(pair: Pair, tmp_path: Path) -> None:
    ids = pair.deliver([f"job {i}".encode() for i in range(6)])
    out = tmp_path / "out"
    out.mkdir()
    handler = (
        f"date +%s.%N > {q(out)}/$DROPR_ID.start; sleep 1; "
        f"cat > {q(out)}/$DROPR_ID; date +%s.%N > {q(out)}/$DROPR_ID.end"
    )
    t0 = time.monotonic()
    p = run_bounded(pair.b, "dropr-recv", "--exec", handler, "--jobs", "3", "--once", timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.decode()
    spans = [(float((out / f"{i}.start").read_text()), float((out / f"{i}.end").read_text())) for i in ids]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3, f"at most and at least 3 handlers at once; saw {peak}"
    assert took < 5.5, f"6 one-second handlers, 3 at a time, took {took:.1f}s"
    assert pair.b.states("in") == {i: "done" for i in ids}


# -- dropr-ack ---------------------------------------------------------------------


def test_release_reject_and_unknown_ids(pair: Pair) -> None:
    ids = pair.deliver([b"one", b"two", b"three", b"four"])
    b = pair.b
    p = b.run("dropr-recv", "-n", "4", check=True)
    assert [ln.split("\t")[0] for ln in p.stdout.decode().splitlines()] == ids
    one, two, three, four = ids

    assert b.run("dropr-ack", "--release", one).returncode == 0
    assert in_state(b, one) == "ready"
    t_rel = time.monotonic()
    assert b.run("dropr-ack", "--release", "--delay", "2s", two).returncode == 0
    assert in_state(b, two) == "wait"
    assert detail(b, two).get("next_attempt")
    p = b.run("dropr-ack", "--reject", "--reason", "no such customer", three)
    assert p.returncode == 0, p.stderr.decode()
    rec = detail(b, three)
    assert rec["state"] == "dead" and rec["error"] == "no such customer"

    unknown = "0123456789abcdef01234567"
    p = b.run("dropr-ack", four, unknown, one)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert unknown in err and one in err, err
    assert four not in err
    assert len(err.splitlines()) == 2, "one error line per id that is not claimed"
    assert in_state(b, four) == "done"
    assert in_state(b, one) == "ready", "a failed ack must not touch a released message"
    assert b.run("dropr-ack", "--reject", three).returncode == 1, "a dead message is not claimed"
    assert b.run("dropr-ack", four).returncode == 1, "acking twice is an error the second time"

    rc, recs = recv_json(b, "--all")
    assert rc == 0 and [r["id"] for r in recs] == [one]
    assert recs[0]["attempt"] == 2
    if time.monotonic() - t_rel < 1.5:
        assert in_state(b, two) == "wait", "--delay 2s: not ready before its time"

    def later() -> list[dict[str, Any]] | None:
        rc, recs = recv_json(b)
        return recs if rc == 0 else None

    recs = wait_until(later, 15, "the delayed message to be ready")
    assert time.monotonic() - t_rel >= 2.0
    assert [r["id"] for r in recs] == [two] and recs[0]["attempt"] == 2
    b.run("dropr-ack", one, two, check=True)
    assert b.states("in") == {one: "done", two: "done", three: "dead", four: "done"}


# -- formats -----------------------------------------------------------------------


def test_formats_json_and_raw(pair: Pair) -> None:
    a_ids = pair.deliver([b"low"], "--priority", "9", "--channel", "orders")
    b_ids = pair.deliver([b"urgent"], "--priority", "0", "--channel", "orders")
    c_ids = pair.deliver([b"normal!"], "--channel", "orders")
    b = pair.b
    before = time.time()
    rc, recs = recv_json(b, "--channel", "orders", "-n", "3")
    assert rc == 0
    assert [r["id"] for r in recs] == b_ids + c_ids + a_ids, "priority first, then arrival"
    for r, payload, prio in zip(recs, [b"urgent", b"normal!", b"low"], [0, 5, 9], strict=True):
        assert set(r) == CLAIM_FIELDS
        assert r["channel"] == "orders" and r["origin"] == "a"
        assert r["priority"] == prio and r["size"] == len(payload) and r["attempt"] == 1
        assert Path(r["path"]).read_bytes() == payload
        assert before - 120 < r["created"] <= before + 1
    p = b.run("dropr-ack", "-", input="".join(f"{r['id']}\n" for r in recs))
    assert p.returncode == 0, p.stderr.decode()

    payload = bytes(range(256)) * 4096 + b"\x00tail"
    (raw_id,) = pair.deliver([payload])
    p = b.run("dropr-recv", "--format", "raw")
    assert p.returncode == 0 and p.stdout == payload, "raw is the payload, byte for byte"
    assert in_state(b, raw_id) == "claimed"
    b.run("dropr-ack", raw_id, check=True)

    (acked,) = pair.deliver([b"at most once"])
    p = b.run("dropr-recv", "--format", "raw", "--ack")
    assert p.returncode == 0 and p.stdout == b"at most once"
    assert in_state(b, acked) == "done"
    p = b.run("dropr-recv", "--format", "raw")
    assert p.returncode == 1 and p.stdout == b""


# -- waiting -----------------------------------------------------------------------


def test_wait_on_empty_inbox_times_out(pair: Pair) -> None:
    b = pair.b
    t0 = time.monotonic()
    p = b.run("dropr-recv")
    assert p.returncode == 1 and p.stdout == b""
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    p = run_bounded(b, "dropr-recv", "--wait", "--timeout", "1s", timeout=15)
    took = time.monotonic() - t0
    assert p.returncode == 75, p.stderr.decode()
    assert p.stdout == b""
    assert 1.0 <= took < 5.0, took


def test_wait_is_woken_by_an_arrival(pair: Pair) -> None:
    b = pair.b
    proc = b.start(
        "dropr-recv",
        "--wait",
        "--timeout",
        "30s",
        "--format",
        "raw",
        "--ack",
        stdout=subprocess.PIPE,
    )
    wait_until(lambda: waiting(b), 15, "dropr-recv to wait")
    pair.deliver([b"wake up"])
    t_stored = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    latency = time.monotonic() - t_stored
    assert proc.returncode == 0
    assert out == b"wake up"
    # a waiter that is not woken finds the message only at its next 1 s rescan
    assert latency < 0.5, f"dropr-recv --wait returned {latency:.2f}s after the message was stored"


# -- crashes and signals -----------------------------------------------------------


def test_sigkill_mid_handler_recovered_by_lease(pair: Pair, tmp_path: Path) -> None:
    (ident,) = pair.deliver([b"survive me"])
    b = pair.b
    proc = b.start("dropr-recv", "--exec", "sleep 30", "--lease", "2s", stderr=subprocess.DEVNULL)
    kids = wait_until(lambda: descendants(proc.pid), 15, "the handler to start")
    t_kill = time.monotonic()
    proc.kill()
    for k in kids:
        kill_quiet(k)
    proc.wait(10)
    assert in_state(b, ident) == "claimed"
    out = tmp_path / "got"
    handler = f"cat > {q(out)}; echo $DROPR_ATTEMPT > {q(out)}.attempt"

    def rerun() -> bool:
        p = run_bounded(b, "dropr-recv", "--exec", handler, "--once", "--lease", "2s", timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        return out.exists()

    wait_until(rerun, 20, "a new consumer to get the message back by lease expiry")
    assert time.monotonic() - t_kill > 0.5
    assert out.read_bytes() == b"survive me"
    assert (tmp_path / "got.attempt").read_text().strip() == "2"
    assert in_state(b, ident) == "done"


def test_sigterm_lets_the_running_handler_finish(pair: Pair, tmp_path: Path) -> None:
    ids = pair.deliver([b"first", b"second", b"third"])
    b = pair.b
    out = tmp_path / "out"
    out.mkdir()
    handler = f"touch {q(out)}/$DROPR_ID.start; sleep 1; cat > {q(out)}/$DROPR_ID"
    proc = b.start("dropr-recv", "--exec", handler, stderr=subprocess.DEVNULL)
    started = wait_until(
        lambda: [p for p in out.iterdir() if p.name.endswith(".start")], 15, "a handler to start"
    )
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(20)
    finally:
        for k in kids:
            kill_quiet(k)
    assert rc == 0
    first = started[0].name.removesuffix(".start")
    states = b.states("in")
    assert set(states) == set(ids), "nothing lost"
    assert states[first] in ("done", "ready"), "the running handler finished or was released"
    payloads = dict(zip(ids, [b"first", b"second", b"third"], strict=True))
    if states[first] == "done":
        assert (out / first).read_bytes() == payloads[first]
    assert "claimed" not in states.values() and "dead" not in states.values()
    assert list(states.values()).count("done") <= 1, "no new handler after TERM"
    assert not [k for k in kids if alive(k)], "no handler left running"
    p = run_bounded(b, "dropr-recv", "--exec", handler, "--once", timeout=30)
    assert p.returncode == 0
    assert b.states("in") == {i: "done" for i in ids}
    for i, payload in payloads.items():
        assert (out / i).read_bytes() == payload


# -- a long-running consumer: dropr-recv --follow | ... | dropr-ack - ------------------------------


def test_follow_pipeline_consumes_arrivals_until_term(pair: Pair) -> None:
    b = pair.b
    recv, ack = shlex.quote(command_path("dropr-recv")), shlex.quote(command_path("dropr-ack"))
    # the filter in the middle stands for the application: it passes on the ids it handled
    # (a line-buffered filter: cut or grep would hold the ids in their stdio buffers)
    handler = 'while IFS=$(printf \'\\t\') read -r id path; do test -s "$path" && echo "$id"; done'
    pipeline = f"{recv} --follow -n 50 | {handler} | {ack} -"
    p = b.start("/bin/sh", "-c", pipeline, start_new_session=True)
    try:
        first = pair.deliver_lines(120)
        wait_until(lambda: set(b.states("in").values()) == {"done"}, 60, "the first 120 to be acked")
        time.sleep(0.3)  # the pipeline idles, waiting for arrivals
        assert p.poll() is None, "--follow must keep running when the inbox is empty"
        more = pair.deliver_lines(30)
        wait_until(lambda: len(b.states("in")) == 150 and set(b.states("in").values()) == {"done"},
                   60, "the 30 that came later to be acked")  # fmt: skip
        assert set(b.states("in")) == set(first + more)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
    p.wait(30)  # TERM to the group ends it (the shell by the signal; dropr-recv exits 0, below)


def test_follow_stops_on_term_leaving_printed_messages_claimed(pair: Pair, tmp_path: Path) -> None:
    ids = pair.deliver_lines(10)
    b = pair.b
    out = tmp_path / "follow.out"
    with open(out, "wb") as f:
        p = b.start("dropr-recv", "--follow", "-n", "4", stdout=f)
    wait_until(lambda: len(out.read_bytes().splitlines()) == 10, 30, "all 10 to be printed")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    printed = [line.split("\t")[0] for line in out.read_text().splitlines()]
    assert sorted(printed) == sorted(ids) and len(set(printed)) == 10
    assert set(b.states("in").values()) == {"claimed"}, "printed, not acked: claimed until the lease ends"


def test_ack_finishes_ids_as_they_arrive_on_stdin(pair: Pair) -> None:
    ids = pair.deliver_lines(3)
    b = pair.b
    rc, recs = recv_json(b, "-n", "3")
    assert rc == 0 and len(recs) == 3
    p = b.start("dropr-ack", "-", stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None
    try:
        p.stdin.write(f"{ids[0]}\n".encode())
        p.stdin.flush()
        # the first id is done while stdin is still open: no waiting for the end of input
        wait_until(lambda: in_state(b, ids[0]) == "done", 30, "the first id to be acked")
        assert in_state(b, ids[1]) == "claimed"
        p.stdin.write(f"{ids[1]}\nnot-claimed\n{ids[2]}".encode())  # the last line unterminated
    finally:
        p.stdin.close()
    assert p.wait(30) == 1, "one id was not claimed: exit 1, the others done"
    assert p.stderr is not None and b"not-claimed is not claimed" in p.stderr.read()
    assert {in_state(b, i) for i in ids} == {"done"}
