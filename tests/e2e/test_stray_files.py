"""Stray files in the spool (a README, a dot-file, "zzz" put into a state folder by hand)
against the installed commands: nothing crashes, no message is lost or stuck, the
process working on a folder moves a stray to corrupt/, and dropr-ls moves nothing.

Node "a" puts to node "b"'s dropr-serve on 127.0.0.1 and delivers with dropr-send --once.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import Node, Pair

STRAYS = ("README", ".hidden", "zzz", "0zzz")
WHY = "not a message name\n"


def touch(folder: Path, names: tuple[str, ...] = STRAYS) -> None:
    for name in names:
        (folder / name).write_text("left here by hand\n")


def assert_moved_aside(node: Node, rel: str, names: tuple[str, ...] = STRAYS) -> None:
    """Each stray of SPOOL/rel is in corrupt/, with its .why, and gone from rel."""
    for name in names:
        dest = node.spool / "corrupt" / f"{rel.replace('/', '=')}={name}"
        assert dest.read_text() == "left here by hand\n", dest
        assert Path(f"{dest}.why").read_text() == WHY
        assert not (node.spool / rel / name).exists()


def no_traceback(p: subprocess.CompletedProcess[bytes]) -> str:
    err = p.stderr.decode(errors="replace")
    assert "Traceback" not in err and "Error:" not in err, err
    return err


def test_recv_all_prints_every_message_past_strays_in_ready(pair: Pair) -> None:
    ids = pair.deliver_lines(3)
    b = pair.b
    touch(b.spool / "in/default/ready")
    p = b.run("dropr-recv", "--all")
    assert p.returncode == 0, no_traceback(p)
    assert [ln.split("\t")[0] for ln in p.stdout.decode().splitlines()] == ids
    assert "corrupt" in no_traceback(p), "the move is logged"
    assert_moved_aside(b, "in/default/ready")
    p = b.run("dropr-ack", "-", input=p.stdout)
    assert p.returncode == 0, no_traceback(p)
    assert b.states("in") == dict.fromkeys(ids, "done")


def test_recv_exec_once_handles_every_message_past_a_stray(pair: Pair, tmp_path: Path) -> None:
    ids = pair.deliver_lines(2)
    b = pair.b
    touch(b.spool / "in/default/ready", ("README",))
    p = b.run("dropr-recv", "--exec", "cat >/dev/null", "--once")
    assert p.returncode == 0, no_traceback(p)
    assert b.states("in") == dict.fromkeys(ids, "done")
    assert_moved_aside(b, "in/default/ready", ("README",))


def test_ls_counts_only_messages_and_moves_nothing(pair: Pair) -> None:
    ids = pair.deliver_lines(2)
    (other,) = pair.deliver_lines(1, "--channel", "other")
    b = pair.b
    assert b.run("dropr-recv", "--channel", "other", "--ack").returncode == 0
    touch(b.spool / "in/default/ready")
    touch(b.spool / "in/other/ready", ("zzz",))  # the only file there: no oldest message
    (b.spool / "in/README").write_text("a file beside the channels\n")
    for args in ([], ["-l"], ["--json"], ["--json", "-l"], ["--prom"], ["--in", "--state", "ready"]):
        p = b.run("dropr-ls", *args)
        assert p.returncode == 0, (args, no_traceback(p))
        assert "stray" in no_traceback(p), args
    rows = {(r["name"], r["state"]): r for r in b.ls("--in")}
    assert rows[("default", "ready")]["count"] == 2
    assert rows[("other", "ready")]["count"] == 0 and rows[("other", "ready")]["oldest"] is None
    assert {r["id"] for r in b.ls("-l", "--in", "--state", "ready")} == set(ids)
    assert json.loads(b.run("dropr-ls", "--json", other, check=True).stdout)["state"] == "done"
    assert {f.name for f in (b.spool / "in/default/ready").iterdir()} >= set(STRAYS), "nothing moved"
    assert list((b.spool / "corrupt").iterdir()) == []


def test_send_delivers_past_strays_in_queued(pair: Pair) -> None:
    ids = pair.put_lines(2)
    a = pair.a
    queued = pair.peer_dir() / "queued"
    touch(queued)
    (a.spool / "out/README").write_text("a file beside the peers\n")
    p = a.run("dropr-ls", "-l")
    assert p.returncode == 0, no_traceback(p)
    assert len(p.stdout.splitlines()) == 2
    p = pair.send()
    assert p.returncode == 0, no_traceback(p)
    assert pair.b.states("in") == dict.fromkeys(ids, "ready")
    assert_moved_aside(a, f"out/{queued.parent.name}/queued")


def test_ack_and_release_past_strays_in_claimed_and_wait(pair: Pair) -> None:
    ids = pair.deliver_lines(2)
    b = pair.b
    p = b.run("dropr-recv", "-n", "2", check=True)
    touch(b.spool / "in/default/claimed", ("README",))
    touch(b.spool / "in/default/wait", (".hidden",))
    p = b.run("dropr-ack", "--release", "--delay", "1h", ids[0])
    assert p.returncode == 0, no_traceback(p)
    p = b.run("dropr-ack", ids[1])
    assert p.returncode == 0, no_traceback(p)
    assert b.states("in") == {ids[0]: "wait", ids[1]: "done"}
    p = b.run("dropr-recv")  # sweeps wait/ and claimed/: nothing due
    assert p.returncode == 1, no_traceback(p)
    assert_moved_aside(b, "in/default/claimed", ("README",))
    assert_moved_aside(b, "in/default/wait", (".hidden",))
