"""dropr-put's options, help and every error exit code, as users see them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dropr import message as m
from dropr.spool import Spool
from dropr_cli import put as put_cli
from helpers import COMMON_OPTIONS, NOWHERE

pytestmark = pytest.mark.usefixtures("clean_dropr_env")


OPTIONS = [
    "--to",
    "--channel",
    "--priority",
    "--ttl",
    "--id",
    "--file",
    "--lines",
    "--null",
    "--wait",
    "--timeout",
    *COMMON_OPTIONS,
]


class Put:
    """Run the installed dropr-put on a spool; check failures."""

    def __init__(self, cmd: Any) -> None:
        self.cmd = cmd

    def __call__(
        self, spool: Path, *args: str, input: bytes = b"", **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return self.cmd.run("dropr-put", *args, input=input, spool=spool, env=env or None)

    def fail(self, res: subprocess.CompletedProcess[bytes], code: int) -> str:
        return str(self.cmd.expect_error(res, code, "dropr-put"))


@pytest.fixture
def put(cmd: Any) -> Put:
    return Put(cmd)


def ok_ids(res: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr == b"", res.stderr.decode()
    return res.stdout.decode().split()


def stored(spool: Path, ident: str) -> list[tuple[str, str, m.Header, bytes]]:
    """(peer, state, header, payload) of every destination of an outbox message."""
    sp = Spool(str(spool), create=False)
    found = []
    for peer, state, name in sp.find_out(ident):
        hdr = sp.read_header(peer, state, name)
        with open(sp.path("out", peer, state, name), "rb") as f:
            f.seek(m.HEADER_SIZE)
            found.append((peer, state, hdr, f.read()))
    return found


# -- help and version -----------------------------------------------------------


def test_help_via_clirunner_lists_every_option_and_examples() -> None:
    res = CliRunner().invoke(put_cli.command(), ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "dropr-put --to" in res.output
    for opt in OPTIONS:
        assert opt in res.output, opt
    short = CliRunner().invoke(put_cli.command(), ["-h"])
    assert short.exit_code == 0 and short.output == res.output


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_installed(put: Put, flag: str, spool_dir: Path) -> None:
    res = put(spool_dir, flag)
    assert res.returncode == 0 and res.stderr == b""
    out = res.stdout.decode()
    assert out.startswith("Usage: dropr-put") and "Examples:" in out
    assert "  echo hello | dropr-put --to db1\n" in out, "the \\b block keeps examples one per line"
    assert not spool_dir.exists(), "--help must not create a spool"


def test_version(put: Put, spool_dir: Path) -> None:
    res = put(spool_dir, "--version")
    assert res.returncode == 0
    assert res.stdout.decode().strip() == "dropr, version 0.1.0"


# -- every option -------------------------------------------------------------------


def test_put_from_stdin(put: Put, spool_dir: Path) -> None:
    [ident] = ok_ids(put(spool_dir, "--to", NOWHERE, input=b"hello\n"))
    [(_, state, hdr, payload)] = stored(spool_dir, ident)
    assert (state, payload, hdr.channel, hdr.priority, hdr.deadline) == (
        "queued",
        b"hello\n",
        "default",
        5,
        0,
    )


def test_spool_option_wins_over_env(put: Put, tmp_path: Path) -> None:
    env_spool, arg_spool = tmp_path / "env", tmp_path / "arg"
    [ident] = ok_ids(put(env_spool, "--spool", str(arg_spool), "--to", NOWHERE, input=b"x"))
    assert stored(arg_spool, ident) and not env_spool.exists()


def test_first_puts_to_a_new_peer_side_by_side_all_succeed(cmd: Any, tmp_path: Path) -> None:
    """Puts that create a peer's outbox together: each wrote one shared url.new and renamed
    it, and every one that came second failed 74 ("cannot create the outbox"), 39 of 240 here."""
    for r in range(8):
        spool = tmp_path / f"s{r}"
        env = cmd.env(spool)
        procs = [
            subprocess.Popen(
                [cmd.path("dropr-put"), "--to", "http://127.0.0.1:9/"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for _ in range(6)
        ]
        for p in procs:
            out, err = p.communicate(b"x")
            assert p.returncode == 0, err.decode()
            assert len(out.split()) == 1
        assert len(os.listdir(next((spool / "out").iterdir()) / "queued")) == 6


def test_multicast_and_peer_names(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[peers.db1]\nurl = "http://127.0.0.1:9/db1/"\n[peers.db2]\nurl = "http://127.0.0.1:9/db2/"\n'
    )
    res = put(
        spool_dir,
        "--config",
        str(cfg),
        "--to",
        "db1",
        "--to",
        "db2",
        "--to",
        "http://127.0.0.1:9/db1/",
        input=b"both",
    )
    [ident] = ok_ids(res)
    found = stored(spool_dir, ident)
    assert sorted(p for p, *_ in found) == ["db1", "db2"], "a configured URL is the same peer"
    assert all(payload == b"both" for *_, payload in found)


def test_config_in_spool_is_found(put: Put, spool_dir: Path) -> None:
    spool_dir.mkdir()
    (spool_dir / "dropr.toml").write_text('[peers.db1]\nurl = "http://127.0.0.1:9/"\n')
    [ident] = ok_ids(put(spool_dir, "--to", "db1", input=b"x"))
    assert stored(spool_dir, ident)[0][0] == "db1"


def test_config_from_env(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "env.toml"
    cfg.write_text('[peers.envpeer]\nurl = "http://127.0.0.1:9/"\n')
    [ident] = ok_ids(put(spool_dir, "--to", "envpeer", input=b"x", DROPR_CONFIG=str(cfg)))
    assert stored(spool_dir, ident)[0][0] == "envpeer"


def test_channel_priority_ttl(put: Put, spool_dir: Path) -> None:
    res = put(
        spool_dir,
        "--to",
        NOWHERE,
        "--channel",
        "jobs",
        "--priority",
        "0",
        "--ttl",
        "5m",
        input=b"x",
    )
    [ident] = ok_ids(res)
    [(_, _, hdr, _)] = stored(spool_dir, ident)
    assert (hdr.channel, hdr.priority) == ("jobs", 0)
    assert hdr.deadline - hdr.created == 300_000_000


def test_idempotent_id(put: Put, spool_dir: Path) -> None:
    assert ok_ids(put(spool_dir, "--to", NOWHERE, "--id", "order-4711", input=b"first")) == ["order-4711"]
    assert ok_ids(put(spool_dir, "--to", NOWHERE, "--id", "order-4711", input=b"second")) == ["order-4711"]
    [(_, _, hdr, payload)] = stored(spool_dir, "order-4711")
    assert payload == b"first" and hdr.ident == "order-4711"


def test_file(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    [ident] = ok_ids(put(spool_dir, "--to", NOWHERE, "--file", str(src), input=b"not this"))
    [(_, _, hdr, payload)] = stored(spool_dir, ident)
    assert payload == data and hdr.crc == m.crc32(data)


def test_lines(put: Put, spool_dir: Path) -> None:
    ids = ok_ids(put(spool_dir, "--to", NOWHERE, "--lines", input=b"one\ntwo\n\nlast without newline"))
    assert len(ids) == 4 and len(set(ids)) == 4
    assert [stored(spool_dir, i)[0][3] for i in ids] == [
        b"one",
        b"two",
        b"",
        b"last without newline",
    ]


def test_lines_empty_input_puts_nothing(put: Put, spool_dir: Path) -> None:
    assert ok_ids(put(spool_dir, "--to", NOWHERE, "--lines", input=b"")) == []


def test_null(put: Put, spool_dir: Path) -> None:
    ids = ok_ids(put(spool_dir, "--to", NOWHERE, "--null", input=b"a\nb\0c\0"))
    assert [stored(spool_dir, i)[0][3] for i in ids] == [b"a\nb", b"c"]


@pytest.mark.parametrize("flag", ["-v", "--verbose", "-q", "--quiet"])
def test_verbosity_flags_are_accepted(put: Put, spool_dir: Path, flag: str) -> None:
    res = put(spool_dir, flag, "--to", NOWHERE, input=b"x")
    assert res.returncode == 0 and len(res.stdout.split()) == 1
    assert b"Traceback" not in res.stderr


def test_wait_with_timeout_zero_looks_once(put: Put, spool_dir: Path) -> None:
    """It waited for ever, as if no --timeout had been given."""
    res = put(spool_dir, "--to", NOWHERE, "--wait", "--timeout", "0", "-q", input=b"x")
    assert res.returncode == 75, res.stderr.decode()
    assert len(res.stdout.split()) == 1


def test_wait_without_sender_says_so_and_times_out(put: Put, spool_dir: Path) -> None:
    t0 = time.monotonic()
    res = put(spool_dir, "--to", NOWHERE, "--wait", "--timeout", "300ms", input=b"x")
    assert res.returncode == 75
    assert len(res.stdout.split()) == 1, "the id is printed once it is durable"
    assert b"no dropr-send is running" in res.stderr and b"Traceback" not in res.stderr
    assert time.monotonic() - t0 < 10


def test_node_from_env_is_fixed(put: Put, spool_dir: Path) -> None:
    ok_ids(put(spool_dir, "--to", NOWHERE, input=b"x", DROPR_NODE="web1"))
    assert (spool_dir / "node").read_text().strip() == "web1"
    line = put.fail(put(spool_dir, "--to", NOWHERE, input=b"x", DROPR_NODE="web2"), 78)
    assert "web1" in line and "web2" in line


# -- errors: code and one line, no traceback -------------------------------------------


@pytest.mark.parametrize("value", ["12", "-1", "x", "", "1.5"])
def test_bad_priority_is_64(put: Put, spool_dir: Path, value: str) -> None:
    assert "priority" in put.fail(put(spool_dir, "--to", NOWHERE, "--priority", value, input=b"x"), 64)


def test_bad_priority_via_click_path_is_64(put: Put, spool_dir: Path) -> None:
    # -vv is not on the fast path: the click command handles the same mistake
    res = put(spool_dir, "-vv", "--to", NOWHERE, "--priority", "12", input=b"x")
    assert res.returncode == 64 and b"priority" in res.stderr


def test_no_destination_is_64(put: Put, spool_dir: Path) -> None:
    assert "--to" in put.fail(put(spool_dir, input=b"x"), 64)


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--to"],
        ["--to", NOWHERE, "extra-argument"],
        ["--to", NOWHERE, "--lines", "--null"],
        ["--to", NOWHERE, "--lines", "--id", "x"],
        ["--to", NOWHERE, "--null", "--file", "f"],
        ["--to", NOWHERE, "--timeout", "5s"],
    ],
)
def test_usage_errors_are_64(put: Put, spool_dir: Path, args: list[str]) -> None:
    put.fail(put(spool_dir, *args, input=b"x"), 64)


@pytest.mark.parametrize("value", ["bogus", "-5s", "5 parsecs"])
def test_bad_ttl_is_one_line(put: Put, spool_dir: Path, value: str) -> None:
    res = put(spool_dir, "--to", NOWHERE, "--ttl", value, input=b"x")
    assert res.returncode in (64, 65)  # which of the two: see test_put_fastpath
    assert "duration" in put.cmd.one_error_line(res.stderr, "dropr-put")


@pytest.mark.parametrize("peer", ["nope", "db3"])
def test_unknown_peer_is_69(put: Put, spool_dir: Path, peer: str) -> None:
    line = put.fail(put(spool_dir, "--to", peer, input=b"x"), 69)
    assert repr(peer) in line and "config" in line


@pytest.mark.parametrize("channel", ["../x", ".hidden", "a/b", "x" * 41, "caf\u00e9"])
def test_bad_channel_is_65(put: Put, spool_dir: Path, channel: str) -> None:
    assert "channel" in put.fail(put(spool_dir, "--to", NOWHERE, "--channel", channel, input=b"x"), 65)


@pytest.mark.parametrize("channel", ["a\nb", "line\rover", "x" * 10_000])
def test_an_error_about_a_hostile_value_stays_one_short_line(put: Put, spool_dir: Path, channel: str) -> None:
    """A line break in the name split the error in two; 10,000 characters were echoed whole."""
    line = put.fail(put(spool_dir, "--to", NOWHERE, "--channel", channel, input=b"x"), 65)
    assert "channel" in line and len(line) < 500


@pytest.mark.parametrize(
    "url",
    [
        "http://",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:abc/",
        "http://127.0.0.1:9/ x",
        "http://[::1:9/",
    ],
)
def test_a_broken_url_is_64_and_creates_nothing(put: Put, tmp_path: Path, url: str) -> None:
    """Stored, it was retried for good: libcurl refused it each time as a temporary error."""
    spool = tmp_path / "fresh"
    assert "bad peer URL" in put.fail(put(spool, "--to", url, input=b"x"), 64)
    assert not spool.exists()


def test_empty_channel_is_65(put: Put, spool_dir: Path) -> None:
    put.fail(put(spool_dir, "--to", NOWHERE, "--channel", "", input=b"x"), 65)


@pytest.mark.parametrize("ident", ["../x", ".hidden", "a/b", "a,b", "y" * 65, ""])
def test_bad_id_is_65(put: Put, spool_dir: Path, ident: str) -> None:
    assert "id" in put.fail(put(spool_dir, "--to", NOWHERE, "--id", ident, input=b"x"), 65)


def test_missing_file_is_66(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    line = put.fail(put(spool_dir, "--to", NOWHERE, "--file", str(missing)), 66)
    assert str(missing) in line


def test_directory_as_file_is_66(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    line = put.fail(put(spool_dir, "--to", NOWHERE, "--file", str(tmp_path)), 66)
    assert str(tmp_path) in line and "directory" in line
    assert os.listdir(spool_dir / "tmp") == []


def test_missing_file_makes_no_outbox_for_a_new_peer(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    """dropr-ls showed the new peer, with nothing for it."""
    put.fail(put(spool_dir, "--to", "http://127.0.0.1:9/", "--file", str(tmp_path / "gone")), 66)
    assert not (spool_dir / "out").exists() or os.listdir(spool_dir / "out") == []


def test_too_large_is_65_and_leaves_nothing(put: Put, spool_dir: Path) -> None:
    spool_dir.mkdir()
    (spool_dir / "dropr.toml").write_text('[limits]\nmax_message_size = "1KiB"\n')
    put.fail(put(spool_dir, "--to", NOWHERE, input=b"x" * 2000), 65)
    put.fail(put(spool_dir, "--to", NOWHERE, "--lines", input=b"ok\n" + b"x" * 2000 + b"\n"), 65)
    assert os.listdir(spool_dir / "tmp") == []


def test_quota_refuses_with_75_and_keeps_queued(put: Put, spool_dir: Path) -> None:
    spool_dir.mkdir()
    (spool_dir / "dropr.toml").write_text('[limits]\nquota = "100"\n')
    [ident] = ok_ids(put(spool_dir, "--to", NOWHERE, input=b"x" * 150))
    assert "quota" in put.fail(put(spool_dir, "--to", NOWHERE, input=b"y"), 75)
    assert stored(spool_dir, ident)[0][3] == b"x" * 150


@pytest.mark.parametrize(
    "text",
    ["node = ", "[peers.db1]\ntoken = 'no url'\n", "[limits]\nretention = 'soon'\n", "\xff"],
)
def test_invalid_config_is_78(put: Put, spool_dir: Path, text: str) -> None:
    spool_dir.mkdir()
    (spool_dir / "dropr.toml").write_bytes(text.encode("latin-1"))
    assert "config" in put.fail(put(spool_dir, "--to", NOWHERE, input=b"x"), 78)


def test_missing_explicit_config_is_78(put: Put, spool_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert str(missing) in put.fail(put(spool_dir, "--config", str(missing), "--to", NOWHERE, input=b"x"), 78)
    assert str(missing) in put.fail(
        put(spool_dir, "--to", NOWHERE, input=b"x", DROPR_CONFIG=str(missing)), 78
    )


# -- unwritable spool: 73 ---------------------------------------------------------------


@pytest.fixture
def ro_spool(put: Put, tmp_path: Path) -> Iterator[Path]:
    """A spool with one peer, mounted read-only (we may run as root: modes do not stop root)."""
    src = tmp_path / "rw"
    ok_ids(put(src, "--to", NOWHERE, input=b"before"))
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount (need root): {r.stderr.decode().strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_read_only_spool_is_73(put: Put, ro_spool: Path) -> None:
    line = put.fail(put(ro_spool, "--to", NOWHERE, input=b"x"), 73)
    assert str(ro_spool) in line


def test_read_only_spool_new_peer_is_73(put: Put, ro_spool: Path) -> None:
    put.fail(put(ro_spool, "--to", "http://127.0.0.1:9/other/", input=b"x"), 73)


def test_unwritable_mode_spool_is_73(put: Put, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory modes; test_read_only_spool_is_73 covers this")
    spool = tmp_path / "s"
    ok_ids(put(spool, "--to", NOWHERE, input=b"x"))
    (spool / "tmp").chmod(0o500)
    try:
        put.fail(put(spool, "--to", NOWHERE, input=b"x"), 73)
    finally:
        (spool / "tmp").chmod(0o755)


def test_spool_below_a_regular_file_is_73(put: Put, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    put.fail(put(tmp_path / "file" / "spool", "--to", NOWHERE, input=b"x"), 73)
