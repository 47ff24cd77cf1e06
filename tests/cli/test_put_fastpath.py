"""dropr-put's hand-written fast parser agrees with its click command, or steps aside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from dropr import put
from dropr.config import default_spool
from dropr_cli import put as put_cli
from helpers import NOWHERE

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

# Command lines the fast path must understand exactly like click.
AGREE: list[list[str]] = [
    [],
    ["--to", "a"],
    ["--to=a"],
    ["--to", "a", "--to", "b"],
    ["--to", "a", "--to=b", "--to", "a"],
    ["--to", "http://127.0.0.1:9/"],
    ["--to", "a=b"],
    ["--to", "-v"],
    ["--to", "--lines"],
    ["--channel", "--to", "--to", "a"],
    ["--to", "a", "--channel", "jobs"],
    ["--channel=jobs", "--to", "a"],
    ["--to", "a", "--priority", "0"],
    ["--priority=9", "--to", "a"],
    ["--to", "a", "--priority", "07"],
    ["--to", "a", "--ttl", "5m"],
    ["--to", "a", "--ttl", "500ms"],
    ["--to", "a", "--ttl", "1.5h"],
    ["--to", "a", "--ttl", "0"],
    ["--to", "a", "--ttl=7d"],
    ["--to", "a", "--id", "order-4711"],
    ["--to", "a", "--id=x"],
    ["--to", "a", "--file", "/some/file"],
    ["--file=rel/file", "--to", "a"],
    ["--to", "a", "--lines"],
    ["--to", "a", "--lines", "--lines"],
    ["--to", "a", "--null"],
    ["--to", "a", "--wait"],
    ["--to", "a", "--wait", "--timeout", "30s"],
    ["--to", "a", "-v"],
    ["--to", "a", "-v", "--verbose"],
    ["-q", "--to", "a"],
    ["-q", "-q", "--quiet", "--to", "a"],
    ["--verbose", "--quiet", "--to", "a"],
    ["--spool", "/s", "--to", "a"],
    ["--spool=/s", "--config", "/c.toml", "--to", "a"],
    [
        "--to",
        "a",
        "--channel",
        "c",
        "--priority",
        "3",
        "--ttl",
        "2h",
        "--id",
        "i",
        "--file",
        "f",
        "--spool",
        "/s",
    ],
]

# Command lines the fast path may not handle; it must return None (click decides).
DEFER: list[list[str]] = [
    ["--help"],
    ["-h"],
    ["--version"],
    ["--to", "a", "--help"],
    ["--to"],
    ["--to", "a", "--channel"],
    ["-vv", "--to", "a"],
    ["-vq", "--to", "a"],
    ["--to", "a", "--priority", "1", "--priority", "2"],
    ["--to", "a", "--id", "x", "--id", "y"],
    ["--to", "a", "--spool", "/a", "--spool", "/b"],
    ["--to", "a", "extra"],
    ["--to", "a", "--", "x"],
    ["--lin", "--to", "a"],
    ["--to", "a", "--lines=yes"],
    ["--to", "a", "--wait=1"],
    ["--bogus"],
    ["-x", "--to", "a"],
    ["--to", "a", "-"],
]


def normalize(o: dict[str, Any], opts: put.PutOptions) -> dict[str, Any]:
    """Reduce either parser's result to what the library gets: the options, the spool, -v/-q."""
    return {
        **{k: getattr(opts, k) for k in put.PutOptions.__slots__},
        "spool": o.get("--spool") or default_spool(),
        "config": o.get("--config") or os.environ.get("DROPR_CONFIG"),
        "verbose": int(o.get("verbose", 0)),
        "quiet": int(o.get("quiet", 0)),
    }


def via_fast(argv: list[str]) -> dict[str, Any]:
    o = put_cli._fast_parse(list(argv))
    assert o is not None, "a common command line should take the fast path"
    return normalize(o, put_cli._options_from(o))


def via_click(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def capture(o: dict[str, Any], opts: put.PutOptions) -> int:
        seen.update(normalize(o, opts))
        return 0

    monkeypatch.setattr(put_cli, "_start", capture)
    rv = put_cli.command().main(args=list(argv), prog_name="dropr-put", standalone_mode=False)
    assert rv == 0 and seen, f"click did not run the command for {argv}"
    return seen


@pytest.mark.parametrize("argv", AGREE, ids=lambda a: " ".join(a) or "(none)")
def test_fast_parse_agrees_with_click(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert via_fast(argv) == via_click(argv, monkeypatch)


@pytest.mark.parametrize("argv", DEFER, ids=lambda a: " ".join(a))
def test_fast_parse_defers_the_unusual(argv: list[str]) -> None:
    assert put_cli._fast_parse(list(argv)) is None


def test_fast_parse_agrees_on_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DROPR_SPOOL", str(tmp_path / "env-spool"))
    monkeypatch.setenv("DROPR_CONFIG", str(tmp_path / "env.toml"))
    for argv in (["--to", "a"], ["--to", "a", "--spool", str(tmp_path / "arg")]):
        assert via_fast(argv) == via_click(argv, monkeypatch)


def test_completion_goes_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_DROPR_PUT_COMPLETE", "bash_complete")
    assert put_cli._fast_parse(["--to", "a"]) is None


def test_fast_parse_does_not_modify_argv() -> None:
    argv = ["--to", "a", "--lines"]
    put_cli._fast_parse(argv)
    assert argv == ["--to", "a", "--lines"]


# -- both paths end in the same exit code ------------------------------------------


ERRORS: list[tuple[list[str], int]] = [
    (["--to", NOWHERE, "--priority", "12"], 64),
    (["--to", NOWHERE, "--priority", "-1"], 64),
    (["--to", NOWHERE, "--priority", "x"], 64),
    (["--to", NOWHERE, "--timeout", "5s"], 64),
    (["--to", NOWHERE, "--lines", "--null"], 64),
    (["--to", NOWHERE, "--lines", "--id", "x"], 64),
    (["--to", NOWHERE, "--lines", "--file", "f"], 64),
    (["--to", "nope"], 69),
    (["--to", NOWHERE, "--channel", "../x"], 65),
    (["--to", NOWHERE, "--id", "../x"], 65),
    (["--to", NOWHERE, "--file", "/nonexistent/dropr-test-input"], 66),
]


def _both(
    argv: list[str], spool: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[tuple[int, str], tuple[int, str]]:
    args = [*argv, "--spool", str(spool)]
    fast_code = put_cli.main(list(args))
    fast_err = capsys.readouterr().err
    from dropr_cli._common import main_for

    click_code = main_for(put_cli.command())(list(args))
    click_err = capsys.readouterr().err
    return (fast_code, fast_err), (click_code, click_err)


@pytest.mark.parametrize("argv, code", ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else str(a))
def test_both_paths_exit_alike(
    argv: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fast_code, fast_err), (click_code, click_err) = _both(argv, tmp_path / "spool", capsys)
    assert (fast_code, click_code) == (code, code), (fast_err, click_err)
    for err in (fast_err, click_err):
        assert err.count("\n") == 1 and err.startswith("dropr-put: error: "), err


@pytest.mark.parametrize(
    "argv", [["--to", NOWHERE, "--ttl", "bogus"], ["--to", NOWHERE, "--wait", "--timeout", "soon"]]
)
def test_bad_duration_exits_alike(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fast_code, _), (click_code, _) = _both(argv, tmp_path / "spool", capsys)
    assert fast_code == click_code == 64
