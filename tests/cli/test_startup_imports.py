"""put, recv and ack run in shell loops: their usual command lines must not load click or typing.

Each costs milliseconds per start (typing about 3 ms, click about 20 ms here); the fast
parser and the TYPE_CHECKING imports exist for that. Checked in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("click", "typing", "dataclasses", "json", "logging", "socket", "re", "urllib.parse", "ipaddress",
         "prometheus_client")  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "prog, args, stdin",
    [
        ("put", ["--to", "http://127.0.0.1:9/"], b"x\n"),
        ("recv", ["-n", "500"], b""),
        ("ack", ["-"], b""),
    ],
)
def test_common_command_lines_skip_heavy_imports(
    tmp_path: Path, prog: str, args: list[str], stdin: bytes
) -> None:
    spool = tmp_path / "spool"
    code = (
        "import sys\n"
        f"from dropr_cli import {prog} as cmd\n"
        f"sys.argv = ['dropr-{prog}', '--spool', {str(spool)!r}, *{args!r}]\n"
        "try:\n"
        "    cmd.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "sys.stderr.write('LOADED ' + ' '.join(loaded) + '\\n')\n"
    )
    # -S and the sources on PYTHONPATH, as a regular install finds them: the editable
    # install's import hook, run by site, loads re and urllib.parse itself
    env = {"DROPR_NODE": "t", "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT / 'cli'}"}
    argv = [sys.executable, "-S", "-c", code]
    p = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)
    line = [x for x in p.stderr.decode().splitlines() if x.startswith("LOADED")]
    assert line, p.stderr.decode()
    assert line[0].split()[1:] == [], f"dropr-{prog} loaded {line[0].split()[1:]} at start-up"
