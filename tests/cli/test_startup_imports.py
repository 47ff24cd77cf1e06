"""put, recv and ack run in shell loops: their usual command lines must not load click or typing.

Each costs milliseconds per start (typing about 3 ms, click about 20 ms here); the fast
parser and the TYPE_CHECKING imports exist for that. Checked in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("click", "typing", "dataclasses", "json", "logging", "socket", "re", "urllib.parse", "ipaddress",
         "prometheus_client")  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


CONFIG = """\
[peers.db1]
url = "http://127.0.0.1:9/"
token = "s3cr3t-db1-0123456789abcdef"
[peers.db2]
url = "http://127.0.0.1:9/db2/"
[serve]
listen = ["127.0.0.1:8443"]
[limits]
max_message_size = "64MiB"
retention = "3d"
"""  # a deployment's: peers with tokens, [serve], [limits]


def _start(tmp_path: Path, prog: str, args: list[str], stdin: bytes) -> tuple[list[str], str]:
    """Run dropr-<prog> as its console script does, in a fresh interpreter; return the
    heavy modules it loaded and how it ended ("exit_now 0": through _fast.exit_now)."""
    spool = tmp_path / "spool"
    code = (
        "import os, sys\n"
        "def _exit(code):\n"  # the fast path's last step: look at the modules first
        "    sys.stderr.write(f'ENDED exit_now {code}\\n')\n"
        "    raise SystemExit(code)\n"
        "os._exit = _exit\n"
        f"from dropr_cli import {prog} as cmd\n"
        f"sys.argv = ['dropr-{prog}', '--spool', {str(spool)!r}, *{args!r}]\n"
        "try:\n"
        "    code = cmd.main()\n"
        "    sys.stderr.write(f'ENDED return {code}\\n')\n"
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
    err = p.stderr.decode().splitlines()
    line = [x for x in err if x.startswith("LOADED")]
    ended = [x.split(None, 1)[1] for x in err if x.startswith("ENDED")]
    assert line and ended, p.stderr.decode()
    return line[0].split()[1:], ended[0]


@pytest.mark.parametrize(
    "prog, args, stdin, ended",
    [
        ("put", ["--to", "http://127.0.0.1:9/"], b"x\n", "exit_now 0"),
        ("recv", ["-n", "500"], b"", "exit_now 1"),  # nothing to claim
        ("ack", ["-"], b"", "exit_now 1"),  # no id given: none finished
    ],
)
def test_common_command_lines_skip_heavy_imports(
    tmp_path: Path, prog: str, args: list[str], stdin: bytes, ended: str
) -> None:
    loaded, how = _start(tmp_path, prog, args, stdin)
    assert loaded == [], f"dropr-{prog} loaded {loaded} at start-up"
    assert how == ended, "it skips the interpreter's teardown (_fast.exit_now)"


def test_put_to_a_configured_peer_skips_heavy_imports(tmp_path: Path) -> None:
    """--to NAME with a real config: the first put parses it (tomllib), the next ones
    read the kept parse (config._cached) and load nothing heavy either."""
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "dropr.toml").write_text(CONFIG)
    first, _ = _start(tmp_path, "put", ["--to", "db1"], b"x\n")
    assert "re" in first  # tomllib's: the parse the cache saves
    loaded, how = _start(tmp_path, "put", ["--to", "db1"], b"x\n")
    assert loaded == [] and how == "exit_now 0", loaded


def test_verbose_ends_as_usual(tmp_path: Path) -> None:
    """-v sets logging up, whose exit handler flushes it: no early exit then."""
    loaded, how = _start(tmp_path, "put", ["-v", "--to", "http://127.0.0.1:9/"], b"x\n")
    assert "logging" in loaded and how == "return 0"


def test_a_closed_stdout_ends_as_usual(tmp_path: Path) -> None:
    """Python starts with sys.stdout None when fd 1 is closed: exit_now skips it."""
    from helpers import clean_env, command_path

    p = subprocess.run(
        [command_path("dropr-ack"), "--spool", str(tmp_path / "spool"), "-"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(DROPR_NODE="t"),
        preexec_fn=lambda: os.close(1),
        timeout=60,
    )
    assert (p.returncode, p.stderr) == (1, b"")
