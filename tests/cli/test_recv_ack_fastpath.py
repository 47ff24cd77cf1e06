"""dropr-recv's and dropr-ack's fast parsers agree with their click commands, or step aside.

Both paths build the same library request (consume.RecvRequest, consume.AckRequest)
and call its check, so a rule between options says the same from either; a value
click's types refuse ends in the same exit code.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dropr.config import default_spool
from dropr_cli import ack as ack_cli
from dropr_cli import recv as recv_cli
from dropr_cli._common import main_for
from helpers import fill_inbox, inbox_states

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

ID = "0190f3c2a1b4c5d6e7f8a9b0"

# Command lines the fast path must understand exactly like click: every option, both
# spellings of a valued one, and combinations the library's check refuses later.
RECV_AGREE: list[list[str]] = [
    [],
    ["-n", "5"],
    ["-n", "007"],
    ["--all"],
    ["--wait"],
    ["--wait", "--timeout", "30s"],
    ["--wait", "--timeout=0"],
    ["--wait", "--timeout", "500ms"],
    ["--follow"],
    ["--follow", "-n", "10", "--ack", "--format", "json"],
    ["--lease", "2m"],
    ["--lease=90s"],
    ["--lease", "0.5s"],
    ["--format", "json"],
    ["--format=raw"],
    ["--format", "path"],
    ["--ack"],
    ["--channel", "jobs"],
    ["--channel=jobs", "-n", "3"],
    ["--channel", "--ack"],
    ["--exec", "cat"],
    ["--exec", "cat", "--jobs", "4", "--max-attempts", "0", "--timeout", "2m", "--once"],
    ["--exec=true", "--jobs=2", "--max-attempts=7", "--lease", "1h"],
    ["--exec", "--all"],
    ["-v"],
    ["-v", "--verbose", "-q"],
    ["-q", "-q", "--quiet"],
    ["--spool", "/s"],
    ["--spool=/s", "--config", "/c.toml"],
    # refused by RecvRequest.check, but parsed alike
    ["-n", "2", "--all"],
    ["--exec", "true", "--follow"],
    ["--once"],
    ["--jobs", "3"],
    ["--timeout", "1s"],
    ["--follow", "--wait"],
]

RECV_DEFER: list[list[str]] = [
    ["--help"],
    ["-h"],
    ["--version"],
    ["-n"],
    ["-n=5"],
    ["-n", "1", "-n", "2"],
    ["--format", "json", "--format", "raw"],
    ["--all=yes"],
    ["--wait=1"],
    ["-vv"],
    ["-vq"],
    ["--bogus"],
    ["extra"],
    ["-"],
    ["--", "x"],
    ["--all", "--help"],
]

ACK_AGREE: list[list[str]] = [
    [ID],
    [ID, "web1," + ID, "other"],
    ["-"],
    ["--release", ID],
    ["--release", "--delay", "10m", ID],
    ["--delay=1h", "--release", ID],
    ["--release", "--delay", "0", ID],
    ["--reject", ID],
    ["--reject", "--reason", "bad customer number", ID],
    ["--reason=", "--reject", ID],
    ["--reject", "--reason", "--release", ID],
    [ID, "--release"],
    ["--", "-x"],
    ["--", ID, "-"],
    ["-v", ID],
    ["-q", "--quiet", ID],
    ["--spool", "/s", ID],
    ["--spool=/s", "--config=/c.toml", "-"],
    ["--requeue", ID],
    ["--requeue", "-"],
    ["--requeue", "--out", ID, "other"],
    ["--requeue", "--all"],
    ["--requeue", "--all", "--channel", "jobs"],
    ["--requeue", "--all", "--channel=jobs"],
    ["--requeue", "--out", "--all", "--peer", "db1"],
    ["--all", "--peer=db1", "--requeue"],
    ["--requeue", "--channel", "jobs", ID],
    # refused by AckRequest.check, but parsed alike
    ["--requeue", "--release", ID],
    ["--requeue", "--reject", "--reason", "x", ID],
    ["--requeue", "--delay", "1s", ID],
    ["--out", ID],
    ["--all"],
    ["--channel", "jobs", ID],
    ["--peer", "db1", ID],
    ["--requeue", "--all", ID],
    ["--requeue", "--out", "--channel", "c", "--all"],
    ["--requeue", "--channel", "../x", "--all"],
    [],
    ["--release", "--reject", ID],
    ["--delay", "1s", ID],
    ["--reason", "x", ID],
    ["-", ID],
    [" "],
]

ACK_DEFER: list[list[str]] = [
    ["--help"],
    ["-h", ID],
    ["--version"],
    ["--delay"],
    ["--reason"],
    ["--delay", "1s", "--delay", "2s", ID],
    ["--release=yes", ID],
    ["-vv", ID],
    ["--bogus", ID],
    ["-x", ID],
    ["--channel"],
    ["--peer"],
    ["--requeue=yes", ID],
    ["--all=1", "--requeue"],
    ["--channel", "a", "--channel", "b", "--requeue", "--all"],
]


def normalize(o: dict[str, Any], req: Any) -> dict[str, Any]:
    """Reduce either parser's result to what the library gets: the request, the spool, -v/-q."""
    return {
        **{k: getattr(req, k) for k in type(req).__slots__},
        "spool": o.get("--spool") or default_spool(),
        "config": o.get("--config") or os.environ.get("DROPR_CONFIG"),
        "verbose": int(o.get("verbose", 0)),
        "quiet": int(o.get("quiet", 0)),
    }


def via_fast(cli: ModuleType, argv: list[str]) -> dict[str, Any]:
    o = cli._fast_parse(list(argv))
    assert o is not None, "a common command line should take the fast path"
    return normalize(o, cli._request(o))


def via_click(cli: ModuleType, prog: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def capture(o: dict[str, Any], req: Any) -> int:
        seen.update(normalize(o, req))
        return 0

    monkeypatch.setattr(cli, "_start", capture)
    rv = cli.command().main(args=list(argv), prog_name=prog, standalone_mode=False)
    assert rv == 0 and seen, f"click did not run the command for {argv}"
    return seen


CASES = [(recv_cli, "dropr-recv", a) for a in RECV_AGREE] + [(ack_cli, "dropr-ack", a) for a in ACK_AGREE]
DEFERS = [(recv_cli, a) for a in RECV_DEFER] + [(ack_cli, a) for a in ACK_DEFER]


def case_id(x: Any) -> str:
    if isinstance(x, list):
        return " ".join(x) or "(none)"
    return x.__name__.rsplit(".", 1)[-1] if isinstance(x, ModuleType) else ""


@pytest.mark.parametrize("cli, prog, argv", CASES, ids=case_id)
def test_fast_parse_agrees_with_click(
    cli: ModuleType, prog: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert via_fast(cli, argv) == via_click(cli, prog, argv, monkeypatch)


@pytest.mark.parametrize("cli, argv", DEFERS, ids=case_id)
def test_fast_parse_defers_the_unusual(cli: ModuleType, argv: list[str]) -> None:
    assert cli._fast_parse(list(argv)) is None


@pytest.mark.parametrize("cli, prog", [(recv_cli, "dropr-recv"), (ack_cli, "dropr-ack")], ids=case_id)
def test_fast_parse_agrees_on_environment(
    cli: ModuleType, prog: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DROPR_SPOOL", str(tmp_path / "env-spool"))
    monkeypatch.setenv("DROPR_CONFIG", str(tmp_path / "env.toml"))
    for argv in ([ID], [ID, "--spool", str(tmp_path / "arg")]):
        argv = argv if cli is ack_cli else argv[1:]
        assert via_fast(cli, argv) == via_click(cli, prog, argv, monkeypatch)


@pytest.mark.parametrize("cli", [recv_cli, ack_cli], ids=case_id)
def test_completion_goes_to_click(cli: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_DROPR_RECV_COMPLETE", "bash_complete")
    monkeypatch.setenv("_DROPR_ACK_COMPLETE", "bash_complete")
    assert cli._fast_parse([ID] if cli is ack_cli else []) is None


# -- both paths end in the same exit code, and a rule in the same words -------------

Outcome = tuple[int, str, bytes]


Both = Callable[[ModuleType, list[str], Path], tuple[Outcome, Outcome]]


@pytest.fixture
def both(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Both:
    """Run a command line (with --spool) by the fast path, then by click; (code, stderr, stdout) each."""

    def run(cli: ModuleType, argv: list[str], spool: Path) -> tuple[Outcome, Outcome]:
        args = [*argv, "--spool", str(spool)]
        got = []
        for main in (cli.main, main_for(cli.command())):
            monkeypatch.setattr("sys.stdin", io.StringIO(""))
            code = main(list(args))
            out, err = capsysbinary.readouterr()
            got.append((code, err.decode(), out))
        return got[0], got[1]

    return run


def argv_id(a: Any) -> str:
    return " ".join(a) if isinstance(a, list) else ""


# (argv, exit code, the message's words): the rules of RecvRequest.check and recv
RECV_RULES: list[tuple[list[str], int, str]] = [
    (["-n", "2", "--all"], 64, "-n and --all exclude each other"),
    (["--timeout", "1s"], 64, "--timeout without --exec goes with --wait"),
    (["--once"], 64, "--once, --jobs and --max-attempts go with --exec"),
    (["--jobs", "2"], 64, "--once, --jobs and --max-attempts go with --exec"),
    (["--max-attempts", "3"], 64, "--once, --jobs and --max-attempts go with --exec"),
    (["--follow", "--all"], 64, "--follow runs until stopped; --all, --wait, --timeout and --format raw"),
    (["--follow", "--wait"], 64, "--follow runs until stopped"),
    (["--follow", "--timeout", "1s"], 64, "--follow runs until stopped"),
    (["--follow", "--format", "raw"], 64, "--follow runs until stopped"),
    (["--exec", " "], 64, "--exec needs a command; an empty one would ack every message unread"),
    (["--exec", "true", "-n", "2"], 64, "--exec runs handlers; -n, --all, --wait, --follow, --ack and"),
    (["--exec", "true", "--all"], 64, "--exec runs handlers"),
    (["--exec", "true", "--wait"], 64, "--exec runs handlers"),
    (["--exec", "true", "--follow"], 64, "--exec runs handlers"),
    (["--exec", "true", "--ack"], 64, "--exec runs handlers"),
    (["--exec", "true", "--format", "json"], 64, "--exec runs handlers"),
    (["--lease", "500ms"], 64, "bad --lease '0.5s': must be at least 1s"),
    (["--lease", "0"], 64, "must be at least 1s"),
    (["--channel", "../x"], 65, "bad channel '../x'"),
    (["--format", "raw", "-n", "2"], 64, "--format raw prints one payload; drop -n/--all"),
    (["--format", "raw", "--all"], 64, "--format raw prints one payload"),
]

# values click's types refuse: the same exit code, click's words or the fast path's
RECV_BAD_VALUES: list[list[str]] = [
    ["-n", "0"],
    ["-n", "many"],
    ["--format", "xml"],
    ["--lease", "soon"],
    ["--wait", "--timeout", "forever"],
    ["--exec", "true", "--jobs", "0"],
    ["--exec", "true", "--jobs", "2000"],
    ["--exec", "true", "--max-attempts", "-1"],
    ["--exec", "true", "--max-attempts", "x"],
]

ACK_RULES: list[tuple[list[str], int, str]] = [
    (["--release", "--reject", ID], 64, "--release and --reject exclude each other"),
    (["--delay", "1s", ID], 64, "--delay goes with --release"),
    (["--reason", "x", ID], 64, "--reason goes with --reject"),
    (["--reject", "--delay", "1s", ID], 64, "--delay goes with --release"),
    ([], 64, "no ids; give ID... or - to read them from stdin"),
    (["-", ID], 64, "give ids as arguments or - to read them from stdin, not both"),
    ([" "], 64, "an empty id; give ID... or - to read them from stdin"),
    ([ID], 1, f"{ID} is not claimed (lease lost, already finished, or unknown)"),
    (["--requeue", "--release", ID], 64, "--requeue goes alone: not with --release, --reject, --delay or"),
    (["--requeue", "--reject", ID], 64, "--requeue goes alone"),
    (["--requeue", "--reason", "x", ID], 64, "--requeue goes alone"),
    (["--requeue", "--delay", "1s", ID], 64, "--requeue goes alone"),
    (["--out", ID], 64, "--out, --all, --channel and --peer go with --requeue"),
    (["--all"], 64, "--out, --all, --channel and --peer go with --requeue"),
    (["--channel", "c", ID], 64, "--out, --all, --channel and --peer go with --requeue"),
    (["--peer", "p", ID], 64, "--out, --all, --channel and --peer go with --requeue"),
    (["--requeue", "--all", ID], 64, "--all requeues every dead message there; give no ids with it"),
    (["--requeue"], 64, "no ids; give ID... or - to read them from stdin"),
    (["--requeue", "--out", "--channel", "c", "--all"], 64, "--channel picks an inbox channel, --out and"),
    (["--requeue", "--peer", "p", "--channel", "c", "--all"], 64, "--channel picks an inbox channel"),
    (["--requeue", "--channel", "../x", "--all"], 65, "bad channel '../x'"),
    (["--requeue", "--peer", "../x", "--all"], 65, "bad peer '../x'"),
    (["--requeue", ID], 1, f"{ID} is not dead in the inbox (not finished, requeued already, or unknown)"),
    (["--requeue", "--out", ID], 1, f"{ID} is not dead in the outbox (not given up, requeued already, or"),
    (["--requeue", "--all", "--channel", "nope"], 1, "no channel 'nope' in the inbox of"),
    (["--requeue", "--all", "--peer", "nope"], 1, "no peer 'nope' in the outbox of"),
]

ACK_BAD_VALUES: list[list[str]] = [
    ["--release", "--delay", "soon", ID],
    ["--release", "--delay", "-1s", ID],
]


def _one_line(err: str, prog: str) -> str:
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.mark.parametrize("argv, code, words", RECV_RULES, ids=argv_id)
def test_recv_rules_say_the_same_from_both_paths(
    argv: list[str], code: int, words: str, tmp_path: Path, both: Both
) -> None:
    spool = tmp_path / "spool"
    ids = fill_inbox(spool, [b"one", b"two"])
    fast, slow = both(recv_cli, argv, spool)
    assert fast == slow
    assert fast[0] == code and fast[2] == b""
    assert words in _one_line(fast[1], "dropr-recv")
    assert inbox_states(spool) == {i: "ready" for i in ids}, "a refused command line claims nothing"


@pytest.mark.parametrize("argv", RECV_BAD_VALUES, ids=" ".join)
def test_recv_bad_values_exit_alike(argv: list[str], tmp_path: Path, both: Both) -> None:
    spool = tmp_path / "spool"
    (fast_code, fast_err, _), (click_code, click_err, _) = both(recv_cli, argv, spool)
    assert fast_code == click_code == 64
    _one_line(fast_err, "dropr-recv")
    _one_line(click_err, "dropr-recv")
    assert not spool.exists(), "a bad command line leaves no trace"


def test_recv_nothing_ready_and_timeout_exit_alike(tmp_path: Path, both: Both) -> None:
    spool = tmp_path / "spool"
    fill_inbox(spool, [])
    assert both(recv_cli, [], spool) == ((1, "", b""),) * 2
    waited = both(recv_cli, ["--wait", "--timeout", "0"], spool)
    assert waited == ((75, "", b""),) * 2


def test_recv_claims_alike(tmp_path: Path, both: Both) -> None:
    spool = tmp_path / "spool"
    ids = fill_inbox(spool, [b"a", b"b", b"c", b"d"])
    fast, slow = both(recv_cli, ["-n", "2", "--format", "json", "--ack"], spool)
    assert fast[:2] == slow[:2] == (0, "")
    assert fast[2].count(b"\n") == slow[2].count(b"\n") == 2
    assert inbox_states(spool) == {i: "done" for i in ids}


@pytest.mark.parametrize("argv, code, words", ACK_RULES, ids=argv_id)
def test_ack_rules_say_the_same_from_both_paths(
    argv: list[str], code: int, words: str, tmp_path: Path, both: Both
) -> None:
    spool = tmp_path / "spool"
    fill_inbox(spool, [])
    fast, slow = both(ack_cli, argv, spool)
    assert fast == slow
    assert fast[0] == code and fast[2] == b""
    assert words in _one_line(fast[1], "dropr-ack")


@pytest.mark.parametrize("argv", ACK_BAD_VALUES, ids=" ".join)
def test_ack_bad_values_exit_alike(argv: list[str], tmp_path: Path, both: Both) -> None:
    spool = tmp_path / "spool"
    (fast_code, fast_err, _), (click_code, click_err, _) = both(ack_cli, argv, spool)
    assert fast_code == click_code == 64
    _one_line(fast_err, "dropr-ack")
    _one_line(click_err, "dropr-ack")
    assert not spool.exists(), "a bad command line leaves no trace"


def test_ack_empty_stdin_exits_1_from_both_paths_without_a_spool(tmp_path: Path, both: Both) -> None:
    spool = tmp_path / "spool"
    assert both(ack_cli, ["-"], spool) == ((1, "", b""),) * 2
    assert not spool.exists(), "nothing to finish: the spool is not even opened"


def test_ack_finishes_alike(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = fill_inbox(spool, [b"a", b"b"])
    from helpers import call_main

    def claim() -> None:
        assert call_main(recv_cli.main, ["--spool", str(spool), "--all"]).rc == 0

    claim()
    fast_code = ack_cli.main(["--release", ids[0], "--spool", str(spool)])
    slow_code = main_for(ack_cli.command())(["--reject", "--reason", "no", ids[1], "--spool", str(spool)])
    assert (fast_code, slow_code) == (0, 0)
    assert inbox_states(spool) == {ids[0]: "ready", ids[1]: "dead"}


def test_requeue_alike(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = fill_inbox(spool, [b"a", b"b"])
    from helpers import call_main

    assert call_main(recv_cli.main, ["--spool", str(spool), "--all"]).rc == 0
    assert ack_cli.main(["--reject", *ids, "--spool", str(spool)]) == 0
    fast = call_main(ack_cli.main, ["--requeue", ids[0], "--spool", str(spool)])
    slow = call_main(main_for(ack_cli.command()), ["--requeue", "--all", "--spool", str(spool)])
    assert (fast.rc, fast.out, fast.err) == (0, f"{ids[0]}\n".encode(), "")
    assert (slow.rc, slow.out, slow.err) == (0, f"{ids[1]}\n".encode(), "")
    assert inbox_states(spool) == {ids[0]: "ready", ids[1]: "ready"}
