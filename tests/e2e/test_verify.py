"""dropr-ls --verify on spools filled by the real commands: dropr-put, dropr-send, dropr-serve."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

from helpers import Pair, command_path


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_what_the_server_stored_verifies_and_a_flipped_byte_is_caught(pair: Pair) -> None:
    a, b = pair.a, pair.b
    pair.deliver([b"first", b"second" * 1000, b"third"])
    ok = b.run("dropr-ls", "--verify", "--in", "--json", check=True)
    assert json.loads(ok.stdout) == {
        "checked": 3,
        "ok": 3,
        "corrupt": 0,
        "unchecked": 0,
        "bytes": 5 + 6000 + 5,
    }
    [victim] = [p for p in (b.spool / "in" / "default" / "ready").iterdir() if p.read_bytes() == b"third"]
    flip(victim)
    bad = b.run("dropr-ls", "--verify")
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.decode() == (
        "verified 3 messages (5.9KiB): 2 ok, 1 corrupt (moved to corrupt/), 0 unchecked (no checksum kept)\n"
    )
    [line] = bad.stderr.decode().splitlines()
    moved = b.spool / "corrupt" / f"in=default=ready={victim.name}"
    assert line.startswith(f"dropr-ls: corrupt path={victim} moved={moved} reason=checksum ")
    assert moved.read_bytes() == b"thir" + bytes([ord("d") ^ 1]) and not victim.exists()
    assert "was stored" in (moved.parent / f"{moved.name}.why").read_text()
    assert b.run("dropr-ls", "--verify").returncode == 0  # what is left is whole
    # the sender's side: sent and processed files keep their header's checksum
    out = a.run("dropr-ls", "--verify", "--out", "--json", check=True)
    assert json.loads(out.stdout)["ok"] == 3


def test_a_terminal_gets_a_progress_bar_a_pipe_does_not(pair: Pair) -> None:
    pair.a.run(
        "dropr-put", "--lines", "--to", pair.url, input="".join(f"m{i}\n" for i in range(50)), check=True
    )
    flip(sorted((pair.peer_dir() / "queued").iterdir())[20])
    controller, terminal = pty.openpty()
    try:
        p = subprocess.run(
            [command_path("dropr-ls"), "--verify"], env=pair.a.env, stdout=subprocess.PIPE,
            stderr=terminal, timeout=60,
        )  # fmt: skip
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert p.returncode == 1
    assert b"\rdropr-ls: [" in shown and b"] 50/50 verified" in shown
    assert b"\ndropr-ls: corrupt path=" in shown, "the log line starts a line of its own"
    piped = pair.a.run("dropr-ls", "--verify")
    assert piped.returncode == 0 and piped.stderr == b""
    assert pair.a.run("dropr-ls", "--verify", "-q").stderr == b""


def test_verify_refuses_what_does_not_apply(pair: Pair) -> None:
    for extra in (["-l"], ["--prom"], ["0190f3c2a1b4c5d6e7f8a9b0"]):
        p = pair.a.run("dropr-ls", "--verify", *extra)
        assert p.returncode == 64, p.stderr
        assert p.stderr.decode().startswith("dropr-ls: error: --verify checks every message")
