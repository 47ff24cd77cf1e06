"""The real binaries too: dropr-put under strace does what the seam records, and every
crash state of what it did recovers with the printed id intact."""

from __future__ import annotations

import os
import re
from pathlib import Path

import crash_explorer as ce
import crash_strace as cs
import pytest
from dropr.config import Peer, url_peer_name
from dropr.spool import Spool
from dropr.spool._trace import Event, TracingFS
from helpers import clean_env

pytestmark = [
    pytest.mark.usefixtures("clean_dropr_env"),
    pytest.mark.skipif(not cs.have_strace(), reason="strace is not installed or may not trace here"),
]
URL = "http://127.0.0.1:9/a/"
PAYLOAD = b"traced payload\n"


def shapes(events: list[Event], root: str) -> list[tuple[str, ...]]:
    """Each operation as (name, paths relative to root with pids, sequence numbers and ids
    replaced), descriptors' closes left out (strace's are not told apart from reads')."""
    out = []
    for ev in events:
        if ev.name == "close":
            continue
        paths = [
            re.sub(r"\d+\.\d+\.|node\.\d+|[0-9a-f]{14,}", "X", os.path.relpath(p, root)) for p in ev.paths
        ]
        out.append((ev.name, *paths))
    return out


def test_dropr_put_makes_the_calls_the_seam_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    traced = cs.traced_put(tmp_path / "bin" / "world", PAYLOAD, URL, clean_env())
    root = tmp_path / "lib" / "world" / "var" / "spool" / "dropr"
    root.parent.parent.mkdir(parents=True)  # as traced_put's world/var
    fs = TracingFS()
    monkeypatch.setenv("DROPR_NODE", "here")
    batch = Spool(str(root), fs=fs).batch([Peer(url_peer_name(URL), URL)])
    r, w = os.pipe()
    os.write(w, PAYLOAD)
    os.close(w)
    try:
        batch.add_stream(r)
    finally:
        os.close(r)
    batch.commit()
    assert shapes(traced.events, traced.root) == shapes(fs.events, str(root))


def test_every_crash_state_of_a_traced_put_keeps_the_printed_id(tmp_path: Path) -> None:
    rec = cs.traced_put(tmp_path / "world", PAYLOAD, URL, clean_env())
    n = 0
    for st in ce.states(rec, 300, seed=16):
        dest = tmp_path / f"state{n}"
        dest.mkdir()
        assert ce.check(rec, ce.materialise(rec, st, str(dest)), st.k) == [], st.how
        n += 1
    assert n >= 50


def test_every_crash_state_of_a_traced_recv_and_ack_keeps_each_message_once(tmp_path: Path) -> None:
    rec = cs.traced_recv_ack(tmp_path / "world", [b"first", b"second"], clean_env())
    names = [ev.name for ev in rec.events]
    assert "rename" in names and "utime" in names, names  # claims, then the ack
    n = 0
    for st in ce.states(rec, 300, seed=16):
        dest = tmp_path / f"state{n}"
        dest.mkdir()
        assert ce.check(rec, ce.materialise(rec, st, str(dest)), st.k) == [], st.how
        n += 1
    assert n >= 10


def test_the_reader_keeps_resumed_calls_and_each_process_descriptors(tmp_path: Path) -> None:
    # Found with the send+store trace (#16): a call strace prints as <unfinished ...>, then
    # resumed, ends in a padded ")   = 5", which the reader took for no call at all; and
    # two processes' descriptor 5 were taken for one file. A thread shares its creator's.
    def h(text: str) -> str:
        return "".join(f"\\x{b:02x}" for b in text.encode())

    w = str(tmp_path / "w")
    log = tmp_path / "log"
    log.write_text(
        f'100 openat(AT_FDCWD<{h("/")}>, "{h(w + "/x")}", O_WRONLY|O_CREAT|O_EXCL, 0600 <unfinished ...>\n'
        f'200 openat(AT_FDCWD<{h("/")}>, "{h(w + "/y")}", O_WRONLY|O_CREAT|O_EXCL, 0600) = 5<{h(w + "/y")}>\n'
        f"100 <... openat resumed>)            = 5<{h(w + '/x')}>\n"
        "100 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_THREAD, exit_signal=0}, 88) = 101\n"
        f"101 fsync(5<{h(w + '/x')}>)                = 0\n"
        f"200 utimensat(7<{h('/tmp/gone')}>(deleted), NULL, NULL, 0) = 0\n"
        f"200 fsync(5<{h(w + '/y')}>)                = 0\n"
    )
    got = [(ev.name, ev.paths, ev.fd) for ev in cs.events(str(log), w)]
    x, y = cs.FD_TABLE * 100 + 5, cs.FD_TABLE * 200 + 5
    assert got == [
        ("create", (w + "/y",), y),
        ("create", (w + "/x",), x),
        ("fsync", (), x),
        ("fsync", (), y),
    ]
