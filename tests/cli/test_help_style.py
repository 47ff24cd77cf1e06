"""--help and usage errors written one way across the seven commands.

Metavars say what a value is (NAME, N, DUR, SIZE, FILE, DIR, ...), never click's
generic TEXT or INTEGER RANGE or a one-letter P, C or F; every default shows as
"[default: ...]" (never "[1]" in the help text); a usage error is one line with
one stop before the pointer to --help.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from helpers import clean_env, command_path

ROOT = Path(__file__).resolve().parents[2]
with open(ROOT / "pyproject.toml", "rb") as f:
    SCRIPTS = dict(tomllib.load(f)["project"]["scripts"])
GENERIC = {"TEXT", "INTEGER", "INTEGER RANGE", "FLOAT", "PATH", "FILENAME", "DIRECTORY", "FILE PATH"}
SAME_METAVAR = {"--peer": "NAME", "--channel": "NAME", "--spool": "DIR", "--config": "FILE"}


def command(prog: str) -> click.Command:
    module = __import__(SCRIPTS[prog].split(":", 1)[0], fromlist=["_"])
    cmd = getattr(module, "cmd", None) or module.command()
    assert isinstance(cmd, click.Command)
    return cmd


def valued_options(prog: str) -> list[tuple[click.Option, str, click.Context]]:
    cmd = command(prog)
    ctx = click.Context(cmd, info_name=prog, **cmd.context_settings)
    out = []
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Option) and not p.is_flag and not p.count and p.name != "help":
            out.append((p, p.make_metavar(ctx), ctx))
    return out


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_metavars_say_what_the_value_is(prog: str) -> None:
    for opt, metavar, _ in valued_options(prog):
        name = max(opt.opts, key=len)
        if isinstance(opt.type, click.Choice):
            continue
        if opt.metavar is None:
            assert metavar not in GENERIC, f"{prog} {name}: click's generic metavar {metavar}"
        assert len(metavar) > 1 or metavar == "N", f"{prog} {name}: one-letter metavar {metavar}"
        if name in SAME_METAVAR:
            assert metavar == SAME_METAVAR[name], f"{prog} {name} {metavar}: write {SAME_METAVAR[name]}"


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_defaults_show_one_way(prog: str) -> None:
    for opt, _, ctx in valued_options(prog):
        name = max(opt.opts, key=len)
        assert "[" not in (opt.help or ""), f"{prog} {name}: a default in the help text; use show_default"
        default = opt.get_default(ctx, call=False)
        if default not in (None, (), False) and not repr(default).endswith("UNSET"):
            assert opt.show_default, f"{prog} {name}: default {default!r} not shown"
        record = opt.get_help_record(ctx)
        assert record is not None and "default: (" not in record[1], f"{prog} {name}: use cls=Option"


def test_effective_defaults_are_shown() -> None:
    """Options that are None in the code (so that a rule can tell "not given") still show
    the value in effect."""
    text = subprocess.run(
        [command_path("dropr-recv"), "--help"], env=clean_env(), capture_output=True, text=True, timeout=60
    ).stdout
    flat = " ".join(text.split())
    assert "-n N Claim up to N messages" in flat and "[default: 1; x>=1]" in flat
    assert "With --exec: handlers at once. [default: 1; 1<=x<=1024]" in flat
    assert "[default: 5; x>=0]" in flat
    assert "[default: $DROPR_SPOOL, else /var/spool/dropr for root" in flat


@pytest.mark.parametrize(
    "prog, args",
    [
        ("dropr-angel", []),
        ("dropr-ls", ["--bogus"]),
        ("dropr-send", ["--batch", "x"]),
        ("dropr-recv", ["--bogus"]),
        ("dropr-put", ["--to"]),
    ],
)
def test_usage_errors_have_one_stop(prog: str, args: list[str], tmp_path: Path) -> None:
    p = subprocess.run(
        [command_path(prog), *args],
        env=clean_env(tmp_path / "spool"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 64, p.stderr
    [line] = p.stderr.splitlines()
    assert line.startswith(f"{prog}: error: ") and line.endswith(f"; see '{prog} --help'"), line
    assert not re.search(r"[.?!:;,]['\"]?[.;]", line.replace("...", "")), f"doubled punctuation: {line}"
