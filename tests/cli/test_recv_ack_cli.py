"""dropr-recv and dropr-ack: help, option errors and exit codes, `dropr-ack -` input.

The commands run in-process through their console entry points (the place
where exceptions become exit codes) inside click's CliRunner isolation. The
inbox is filled through the library, the way dropr-serve stores: a tmp file
holding the payload alone, committed with Spool.store and a message Header.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dropr_cli import ack as ack_cli
from dropr_cli import recv as recv_cli
from helpers import Called, call_main, fill_inbox, inbox_states, one_error_line

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

Main = Callable[[list[str] | None], int]


def recv(spool: Path, *args: str) -> Called:
    return call_main(recv_cli.main, ["--spool", str(spool), *args])


def ack(spool: Path, *args: str, stdin: bytes = b"") -> Called:
    return call_main(ack_cli.main, ["--spool", str(spool), *args], stdin)


@pytest.fixture
def inbox(tmp_path: Path) -> tuple[Path, list[str]]:
    spool = tmp_path / "spool"
    return spool, fill_inbox(spool, [b"one", b"two", b"three"])


# -- help -----------------------------------------------------------------------------


@pytest.mark.parametrize("main", [recv_cli.main, ack_cli.main], ids=["dropr-recv", "dropr-ack"])
def test_help_has_examples_and_h_works(main: Main) -> None:
    long = call_main(main, ["--help"])
    short = call_main(main, ["-h"])
    assert long.rc == 0 and short.rc == 0
    assert b"Examples:" in long.out
    assert short.out == long.out
    assert long.err == ""


# -- dropr-recv ---------------------------------------------------------------------

RECV_USAGE = [
    ["--format", "raw", "-n", "2"],
    ["--format", "raw", "--all"],
    ["-n", "2", "--all"],
    ["-n", "0"],
    ["-n", "many"],
    ["--format", "xml"],
    ["--lease", "soon"],
    ["--timeout", "1s"],
    ["--wait", "--timeout", "forever"],
    ["--once"],
    ["--jobs", "2"],
    ["--exec", "true", "--once", "--wait"],
    ["--exec", "true", "--follow"],
    ["--follow", "--all"],
    ["--follow", "--wait"],
    ["--follow", "--timeout", "1s"],
    ["--follow", "--format", "raw"],
    ["--follow", "-n", "0"],
    ["--exec", "true", "--once", "-n", "2"],
    ["--exec", "true", "--once", "--all"],
    ["--exec", "true", "--once", "--ack"],
    ["--exec", "true", "--once", "--format", "json"],
    ["--exec", "true", "--once", "--jobs", "0"],
    ["--exec"],
    ["--no-such-option"],
    ["an-argument"],
]


@pytest.mark.parametrize("args", RECV_USAGE, ids=" ".join)
def test_recv_usage_errors_exit_64_and_claim_nothing(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    spool, ids = inbox
    res = recv(spool, *args)
    assert res.rc == 64, res.err
    one_error_line(res.err, "dropr-recv")
    assert res.out == b""
    assert inbox_states(spool) == {i: "ready" for i in ids}, "a usage error must not claim anything"


def test_recv_path_format_and_nothing_ready(inbox: tuple[Path, list[str]]) -> None:
    spool, ids = inbox
    res = recv(spool, "-n", "2")
    assert res.rc == 0, res.err
    lines = res.out.decode().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ids[:2]
    for line, payload in zip(lines, [b"one", b"two"], strict=True):
        ident, path = line.split("\t")
        assert Path(path).read_bytes() == payload and path.endswith(ident)
    res = recv(spool, "--all")
    assert res.rc == 0 and len(res.out.splitlines()) == 1
    res = recv(spool)
    assert res.rc == 1 and res.out == b""
    res = recv(spool, "--wait", "--timeout", "100ms")
    assert res.rc == 75 and res.out == b""


def test_recv_on_a_channel_never_used(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    fill_inbox(spool, [b"x"])
    assert recv(spool, "--channel", "nothing-here").rc == 1


# -- dropr-ack ----------------------------------------------------------------------

ACK_USAGE = [
    ["--delay", "1s", "ID"],
    ["--release", "--reject", "ID"],
    ["--reason", "because", "ID"],
    ["--release", "--delay", "soon", "ID"],
    ["--reject", "--reason"],
    [],
    ["--release"],
    ["--no-such-option", "ID"],
]


@pytest.mark.parametrize("args", ACK_USAGE, ids=lambda a: " ".join(a) or "no-ids")
def test_ack_usage_errors_exit_64_and_touch_nothing(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    spool, ids = inbox
    assert recv(spool, "--all").rc == 0
    args = [ids[0] if a == "ID" else a for a in args]
    res = ack(spool, *args)
    assert res.rc == 64, res.err
    one_error_line(res.err, "dropr-ack")
    assert inbox_states(spool) == {i: "claimed" for i in ids}


def test_ack_reads_recv_output_from_stdin(inbox: tuple[Path, list[str]]) -> None:
    spool, ids = inbox
    res = recv(spool, "--all")
    assert res.rc == 0
    assert res.out.count(b"\t") == 3, "ID<TAB>PATH lines"
    res = ack(spool, "-", stdin=res.out)
    assert res.rc == 0, res.err
    assert res.err == ""
    assert inbox_states(spool) == {i: "done" for i in ids}


def test_ack_stdin_accepts_plain_ids_blank_lines_and_origin_form(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = fill_inbox(spool, [b"a", b"b", b"c"])
    assert recv(spool, "--all").rc == 0
    text = f"{ids[0]}\n\n  {ids[1]}  \nweb1,{ids[2]}\n"
    res = ack(spool, "-", stdin=text.encode())
    assert res.rc == 0, res.err
    assert inbox_states(spool) == {i: "done" for i in ids}


def test_ack_stdin_unknown_id_is_an_error_for_that_id_only(inbox: tuple[Path, list[str]]) -> None:
    spool, ids = inbox
    listing = recv(spool, "--all").out.decode()
    unknown = "0123456789abcdef01234567"
    lines = listing.splitlines()
    text = "\n".join([lines[0], unknown, *lines[1:]]) + "\n"
    res = ack(spool, "-", stdin=text.encode())
    assert res.rc == 1
    line = one_error_line(res.err, "dropr-ack")
    assert unknown in line
    assert inbox_states(spool) == {i: "done" for i in ids}


def test_ack_release_and_reject_from_stdin(inbox: tuple[Path, list[str]]) -> None:
    spool, ids = inbox
    assert recv(spool, "--all").rc == 0
    res = ack(spool, "--release", "-", stdin=f"{ids[0]}\n".encode())
    assert res.rc == 0, res.err
    res = ack(spool, "--release", "--delay", "1h", "-", stdin=f"{ids[1]}\n".encode())
    assert res.rc == 0, res.err
    res = ack(spool, "--reject", "--reason", "bad input", "-", stdin=f"{ids[2]}\n".encode())
    assert res.rc == 0, res.err
    assert inbox_states(spool) == {ids[0]: "ready", ids[1]: "wait", ids[2]: "dead"}
    # none is claimed any more: each is an error now, all reported
    res = ack(spool, *ids)
    assert res.rc == 1
    assert len(res.err.splitlines()) == 3


# -- logging: library lines carry the command's prefix ----------------------------------------


def test_library_lines_carry_the_prefix_without_v(cmd: Any, inbox: tuple[Path, list[str]]) -> None:
    """A library warning (here: a stray file moved to corrupt/) is written as every command
    writes its lines, "dropr-recv: ...", not bare by Python's last-resort handler."""
    spool, _ = inbox
    (spool / "in" / "default" / "ready" / "README").write_text("not a message")
    res = cmd.run("dropr-recv", spool=spool)
    assert res.returncode == 0
    [line] = res.stderr.decode().splitlines()
    assert line.startswith("dropr-recv: corrupt path=") and "README" in line, line
    (spool / "in" / "default" / "dead" / "notes.txt").write_text("not a message")
    res = cmd.run("dropr-ack", "--requeue", "--all", spool=spool)
    [line] = res.stderr.decode().splitlines()
    assert line.startswith("dropr-ack: corrupt path=") and "notes.txt" in line, line
