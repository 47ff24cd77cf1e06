"""Shared fixtures for every test suite: spools in tmp_path, the installed commands.

Keep this generic: suites for the sender, the server and the consumers add their
own conftest next to their tests. Plain helpers live in tests/helpers.py (`from
helpers import ...`); never `from conftest import ...`: with one conftest per
folder, that name means whichever conftest pytest imported last.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import clean_env, command_path, expect_error, one_error_line, run_cmd


class Cmd:
    """The command helpers of helpers.py, handed to tests by the `cmd` fixture."""

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
