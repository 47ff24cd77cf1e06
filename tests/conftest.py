"""Shared fixtures for every test suite: spools in tmp_path, the installed commands.

Keep this generic: suites for the sender, the server and the consumers add their
own conftest next to their tests. Everything here is reached through fixtures,
never `from conftest import ...`: with one conftest per folder, that name means
whichever conftest pytest imported last.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def command_path(name: str) -> str:
    """Return the installed console script `name` of the venv running the tests."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}; run pip install -e .")
    return str(path)


def clean_env(spool: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """Return os.environ without DROPR_* settings or completion triggers, plus a spool and extra."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DROPR_") and not k.endswith("_COMPLETE")
    }
    if spool is not None:
        env["DROPR_SPOOL"] = str(spool)
    env.update(extra)
    return env


def run_cmd(
    name: str,
    *args: str,
    input: bytes | str | None = b"",
    env: Mapping[str, str] | None = None,
    spool: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """Run an installed dropr command to completion; stdout and stderr are captured bytes.

    `spool` becomes DROPR_SPOOL; `env` adds to (does not replace) a clean environment.
    """
    full_env = clean_env(spool, **(dict(env) if env else {}))
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(
        [command_path(name), *args],
        input=data,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def one_error_line(stderr: bytes | str, prog: str) -> str:
    """Assert stderr is exactly one `prog: error: ...` line and no traceback; return it."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    assert "Traceback" not in text, text
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {text!r}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def expect_error(res: subprocess.CompletedProcess[bytes], code: int, prog: str) -> str:
    """Assert a failure with code, nothing on stdout and one error line; return the line."""
    assert res.returncode == code, (res.returncode, res.stderr.decode(errors="replace"))
    assert res.stdout == b"", res.stdout
    return one_error_line(res.stderr, prog)


class Cmd:
    """The helpers above, handed to tests by the `cmd` fixture."""

    run = staticmethod(run_cmd)
    path = staticmethod(command_path)
    env = staticmethod(clean_env)
    one_error_line = staticmethod(one_error_line)
    expect_error = staticmethod(expect_error)


@pytest.fixture(name="run_cmd")
def run_cmd_fixture() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """run_cmd(name, *args, input=b"", env=None, spool=None): run an installed command."""
    return run_cmd


@pytest.fixture
def cmd() -> type[Cmd]:
    """The helpers: cmd.run, cmd.path, cmd.env, cmd.one_error_line, cmd.expect_error."""
    return Cmd


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A spool directory path inside tmp_path (not yet created: first use creates it)."""
    return tmp_path / "spool"


@pytest.fixture
def clean_dropr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove DROPR_* variables from this test's environment (for in-process tests)."""
    for k in list(os.environ):
        if k.startswith("DROPR_"):
            monkeypatch.delenv(k)
