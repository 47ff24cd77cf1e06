"""Shared fixtures and helpers for every test suite: spools in tmp_path, installed commands.

Keep this generic: suites for the sender, the server and the consumers add their
own fixtures next to their tests and use only what is here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NOWHERE = "http://127.0.0.1:9/"  # loopback discard port: puts never connect, nothing listens


def command_path(name: str) -> str:
    """Return the installed console script `name` of the venv running the tests."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN}; run pip install -e .")
    return str(path)


def clean_env(spool: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """Return an environment without the user's DROPR_* settings, optionally with a spool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_") and not k.endswith("_COMPLETE")}
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

    `spool` is passed as DROPR_SPOOL; `env` adds to (not replaces) a clean environment.
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


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> object:
    """Poll pred until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {pred}")
        time.sleep(interval)


def one_error_line(stderr: bytes, prog: str) -> str:
    """Assert stderr is exactly one `prog: error: ...` line without a traceback; return it."""
    text = stderr.decode(errors="replace")
    lines = text.splitlines()
    assert "Traceback" not in text, text
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {text!r}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A spool directory path inside tmp_path (not yet created: first use creates it)."""
    return tmp_path / "spool"


@pytest.fixture
def clean_dropr_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove DROPR_* variables from this test's environment (in-process tests)."""
    for k in list(os.environ):
        if k.startswith("DROPR_"):
            monkeypatch.delenv(k)
