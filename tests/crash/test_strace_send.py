"""The real binaries too, across two hosts: dropr-send --once at a and dropr-serve at b
under one strace do what the seam records, and every crash state of what they did keeps
each printed id at a and each id b answered stored, once (tests/crash_strace_send.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import crash_explorer as ce
import crash_strace as cs
import crash_strace_send as css
import pytest
from dropr.spool._trace import Event
from helpers import clean_env

pytestmark = [
    pytest.mark.usefixtures("clean_dropr_env"),
    pytest.mark.skipif(not cs.have_strace(), reason="strace is not installed or may not trace here"),
]
# the operations that make or lose a message: names, syncs and the checksum, not the bytes
# of each write (strace sees libcurl's and gunicorn's reads cut otherwise) nor the opens
# for reading; and nothing in lock/: flock files and purge stamps (lock/purge.lock is
# made by a plain open, which the seam does not record), which hold no message
MATTERS = ("create", "mkdir", "link", "rename", "unlink", "symlink", "fsync", "fdatasync", "fsync_dir",
           "syncfs", "set_sum", "utime")  # fmt: skip


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> css.SendStore:
    return css.traced_send_store(tmp_path_factory.mktemp("traced") / "world", clean_env())


@pytest.fixture
def trees(tmp_path: Path) -> Iterator[Path]:
    """Where the states' trees are made: in memory if we may (hundreds made and dropped)."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="dropr-crash-send-", dir=shm or tmp_path) as d:
        yield Path(d)


def matters(events: list[Event], root: str, peer: str) -> list[tuple[str, ...]]:
    """The operations on root that matter, each as (name, its paths relative to root with
    the peer's folder, ids, sequence numbers and pids replaced); a descriptor's fsync or
    checksum by the path it was opened on."""
    opened: dict[int, str] = {}
    out = []
    for ev in events:
        if ev.name in ("create", "open_sync"):
            opened[ev.fd] = ev.paths[0]
        paths = ev.paths if ev.paths or ev.fd < 0 else (opened.get(ev.fd, "?"),)
        if ev.name not in MATTERS or not paths[-1].startswith(root + "/"):
            continue
        rel = [os.path.relpath(p, root) if p.startswith("/") else p for p in paths]
        if rel[-1].startswith("lock/"):
            continue
        rel = [re.sub(r"[0-9a-f]{14,}|\b\d+\.\d+\.|\.\d+\.new$", "X", p.replace(peer, "PEER")) for p in rel]
        out.append((ev.name, *rel))
    return out


def test_dropr_send_and_serve_make_the_calls_the_seam_records(traced: css.SendStore, tmp_path: Path) -> None:
    seam_a, seam_b, seam_peer = css.seam_send_store(tmp_path / "world")
    for view, seam, peer in ((traced.a, seam_a, seam_peer), (traced.b, seam_b, seam_peer)):
        got = matters(view.events, view.root, traced.peer)
        assert got == matters(seam.events, seam.root, peer), view.root
    a_ops, b_ops = (matters(v.events, v.root, traced.peer) for v in (traced.a, traced.b))
    assert [op[0] for op in a_ops].count("link") == len(css.PAYLOADS), a_ops  # queued -> sent
    assert ("fsync_dir", "out/PEER/sent") in a_ops, a_ops
    assert [op[0] for op in b_ops].count("link") == len(css.PAYLOADS), b_ops  # -> ready
    assert ("fsync_dir", "in/default/ready") in b_ops, b_ops


def test_b_promises_what_it_answered_stored_once_its_names_are_synced(traced: css.SendStore) -> None:
    stored = traced.b.promises
    assert sorted(p.ident for p in stored) == sorted(traced.ids)
    ready_synced = ce.point(traced.rec, "fsync_dir", "/in/default/ready")
    sent = ce.point(traced.rec, "link", "", nth=-1)
    assert "/sent/" in traced.rec.events[sent].paths[1]
    assert all(ready_synced < p.at <= sent for p in stored), ([p.at for p in stored], ready_synced, sent)


def test_every_crash_state_of_a_traced_send_and_store_keeps_each_message_once(
    traced: css.SendStore, trees: Path
) -> None:
    # about 500 states of the few thousand distinct ones, 2 s; make torture checks 10,000
    n, found = css.explore(traced, 500, trees, seed=16)
    assert found == []
    assert n >= 400


def test_the_checks_catch_a_store_answered_before_its_inbox_names_are_synced(
    traced: css.SendStore, trees: Path
) -> None:
    # b's fsync of ready/ left out of the recording (an op that changes nothing in its
    # place): its links may be lost at a crash after it answered stored
    synced = ce.point(traced.rec, "fsync_dir", "/in/default/ready")
    events = list(traced.rec.events)
    events[synced] = Event("close", ())
    bad = dataclasses.replace(
        traced,
        rec=dataclasses.replace(traced.rec, events=events),
        a=dataclasses.replace(traced.a, events=events),
        b=dataclasses.replace(traced.b, events=events),
    )
    n, found = css.explore(bad, 300, trees, seed=16, stop_after=1)
    assert found, n
    assert "is in 0 inbox places" in found[0] or "which b has not stored" in found[0], found[0]


def test_the_commands_recover_a_crash_state_of_each_window_as_the_checks_do(
    traced: css.SendStore, tmp_path: Path
) -> None:
    # the checks complete a cut move and resend by library calls, as the commands would;
    # here the commands themselves (dropr-serve at b, dropr-send --once at a) recover the
    # first state of each window a seeded sample shows
    picked: dict[str, ce.State] = {}
    for st in ce.states(traced.rec, 400, seed=16):
        for kind in css.kinds(traced, st) - set(picked):
            picked[kind] = st
    assert set(picked) == {"resent", "moved", "indexed"}, set(picked)
    for kind, st in picked.items():
        assert css.recover_by_the_commands(traced, st, tmp_path / kind) == [], (kind, st.how)
