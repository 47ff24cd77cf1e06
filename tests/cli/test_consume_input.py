"""Bad input to dropr-recv, dropr-ack and dropr-ls: one error line and the exit code their
man pages give, nothing claimed or finished.

The commands run in-process through their console entry points (the place where
exceptions become exit codes), as in test_recv_ack_cli; the inbox is filled the way
dropr-serve stores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dropr_cli import ack as ack_cli
from dropr_cli import ls as ls_cli
from dropr_cli import recv as recv_cli
from helpers import Called, call_main, fill_inbox, inbox_states, one_error_line

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

ROOT = Path(__file__).resolve().parents[2]
Main = Callable[[list[str] | None], int]


def recv(spool: Path, *args: str) -> Called:
    return call_main(recv_cli.main, ["--spool", str(spool), *args])


def ack(spool: Path, *args: str, stdin: bytes = b"") -> Called:
    return call_main(ack_cli.main, ["--spool", str(spool), *args], stdin)


def ls(spool: Path, *args: str) -> Called:
    return call_main(ls_cli.main, ["--spool", str(spool), *args])


def exit_status(page: str) -> dict[str, str]:
    """Map each code in a man page's EXIT STATUS to its text (roff markup dropped)."""
    text = (ROOT / "man" / page).read_text()
    section = text.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    codes: dict[str, str] = {}
    for entry in re.split(r"\n\.TP[^\n]*\n", section)[1:]:
        head, _, body = entry.partition("\n")
        codes[head.removeprefix(".B ").strip()] = re.sub(r"\\f.|\\-|^\.\w+ ", "", body, flags=re.M)
    return codes


@pytest.fixture
def inbox(tmp_path: Path) -> tuple[Path, list[str]]:
    spool = tmp_path / "spool"
    return spool, fill_inbox(spool, [b"one", b"two"])


# -- dropr-recv ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "   ", "\t\n"], ids=["empty", "blanks", "whitespace"])
def test_recv_empty_exec_is_a_usage_error(inbox: tuple[Path, list[str]], command: str) -> None:
    """sh -c '' exits 0: every ready message would be acked unread."""
    spool, ids = inbox
    res = recv(spool, "--exec", command, "--once")
    assert res.rc == 64, res.err
    assert "--exec" in one_error_line(res.err, "dropr-recv")
    assert inbox_states(spool) == {i: "ready" for i in ids}


SHORT_LEASES = [
    ["--lease", "0"],
    ["--lease", "999ms"],
    ["--lease", "0s", "-n", "2"],
    ["--exec", "true", "--once", "--lease", "0"],
]


@pytest.mark.parametrize("args", SHORT_LEASES, ids=" ".join)
def test_recv_lease_below_a_second_is_a_usage_error(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    """A lease that ends at once lets a second consumer claim the message too."""
    spool, ids = inbox
    res = recv(spool, *args)
    assert res.rc == 64, res.err
    assert "--lease" in one_error_line(res.err, "dropr-recv")
    assert res.out == b""
    assert inbox_states(spool) == {i: "ready" for i in ids}


def test_recv_lease_of_a_second_is_the_minimum(inbox: tuple[Path, list[str]]) -> None:
    spool, ids = inbox
    res = recv(spool, "--lease", "1s")
    assert res.rc == 0, res.err
    assert res.out.split(b"\t")[0].decode() == ids[0]


def test_recv_wait_timeout_zero_gives_up_at_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    fill_inbox(spool, [b"x"])
    t0 = time.monotonic()
    res = recv(spool, "--channel", "empty", "--wait", "--timeout", "0")
    assert time.monotonic() - t0 < 5, "--timeout 0 must not wait"
    assert res.rc == 75 and res.out == b"", res.err
    res = recv(spool, "--wait", "--timeout", "0")
    assert res.rc == 0 and res.out.count(b"\t") == 1, "a ready message is still claimed"


def test_recv_man_page_says_what_timeout_zero_and_a_short_lease_do() -> None:
    text = (ROOT / "man" / "dropr-recv.1").read_text()
    options = text.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
    timeout = options.split(".BI \\-\\-timeout", 1)[1].split("\n.TP", 1)[0]
    lease = options.split(".BI \\-\\-lease", 1)[1].split("\n.TP", 1)[0]
    assert re.search(r"\b0\b", timeout), "--timeout 0 is documented"
    assert "1s" in lease or "1 s" in lease, "the least --lease is documented"
    assert "65" in exit_status("dropr-recv.1"), "a bad --channel exits 65"


# -- dropr-ack ----------------------------------------------------------------------


@pytest.mark.parametrize("stdin", [b"", b"\n\n  \n"], ids=["empty", "blank-lines"])
def test_ack_stdin_without_ids_exits_1(inbox: tuple[Path, list[str]], stdin: bytes) -> None:
    """As its man page says, and as dropr-recv exits 1 when nothing is ready."""
    spool, ids = inbox
    res = ack(spool, "-", stdin=stdin)
    assert res.rc == 1, res.err
    assert "1" in exit_status("dropr-ack.1")
    assert "read no id" in " ".join(exit_status("dropr-ack.1")["1"].split())
    assert inbox_states(spool) == {i: "ready" for i in ids}


BAD_IDS = [[""], ["  "], ["ID", ""], ["-", "ID"], ["ID", "-"], ["-", "-"]]


@pytest.mark.parametrize("args", BAD_IDS, ids=repr)
def test_ack_empty_id_or_dash_with_ids_is_usage(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    spool, ids = inbox
    assert recv(spool, "--all").rc == 0
    res = ack(spool, *[ids[0] if a == "ID" else a for a in args], stdin=f"{ids[1]}\n".encode())
    assert res.rc == 64, res.err
    one_error_line(res.err, "dropr-ack")
    assert inbox_states(spool) == {i: "claimed" for i in ids}, "nothing finished"


def test_ack_bad_delay_is_a_usage_error_as_the_man_page_says(inbox: tuple[Path, list[str]]) -> None:
    """A bad option value is a bad command line (64), not bad input data (65)."""
    spool, ids = inbox
    assert recv(spool).rc == 0
    res = ack(spool, "--release", "--delay", "soon", ids[0])
    assert res.rc == 64, res.err
    codes = exit_status("dropr-ack.1")
    assert "duration" in codes["64"] or "delay" in codes["64"]
    assert "duration" not in codes.get("65", "")


# -- dropr-ls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--json", "--prom"], ["--prom", "--json"], ["--out", "--in"], ["--in", "--out"], ["--prom", "-l"],
     ["--prom", "some-id"]],
    ids=" ".join,
)  # fmt: skip
def test_ls_conflicting_options_are_a_usage_error(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    spool, _ = inbox
    res = ls(spool, *args)
    assert res.rc == 64, res.err
    one_error_line(res.err, "dropr-ls")
    assert res.out == b""


@pytest.mark.parametrize("args", [["--peer", "../x"], ["--channel", "a/b"]], ids=" ".join)
def test_ls_bad_name_exits_65_as_the_man_page_says(inbox: tuple[Path, list[str]], args: list[str]) -> None:
    spool, _ = inbox
    res = ls(spool, *args)
    assert res.rc == 65, res.err
    one_error_line(res.err, "dropr-ls")
    assert "65" in exit_status("dropr-ls.1")


def test_ack_of_an_id_with_a_line_break_is_one_error_line(tmp_path: Path) -> None:
    """The id was echoed as it was: its line break split the error in two."""
    fill_inbox(tmp_path / "s", [b"x"])
    p = ack(tmp_path / "s", "a\nb", "x" * 5000)
    assert p.rc == 1
    lines = p.err.splitlines()
    assert len(lines) == 2 and all(len(line) < 400 for line in lines), lines
    assert "'a\\nb' is not claimed" in lines[0]
