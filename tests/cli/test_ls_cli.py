"""dropr-ls: summary, listing, details, JSON, Prometheus, filters and errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dropr import message as m
from dropr.config import Peer
from dropr.spool import Spool
from dropr_cli import ls as ls_cli
from helpers import COMMON_OPTIONS, MSG_FIELDS, ROW_FIELDS

pytestmark = pytest.mark.usefixtures("clean_dropr_env")

A = Peer("a", "http://127.0.0.1:9/a/")
B = Peer("b", "http://127.0.0.1:9/b/")


class World:
    """A spool with known content in every state that dropr-ls reports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        sp = self.sp = Spool(str(root))
        self.t0 = time.time()
        batch = sp.batch([A], priority=1)
        batch.add(b"q1" * 10)  # 20 bytes
        batch.add(b"q2" * 5)  # 10 bytes
        self.queued = batch.commit()
        batch = sp.batch([A, B], channel="jobs", ttl=60)
        batch.add(b"multi")
        [self.multi] = batch.commit()
        batch = sp.batch([B])
        batch.add(b"dead payload")
        [self.dead] = batch.commit()
        name = sp.find_out(self.dead)[0][2]
        sp.kill("b", [name], "HTTP 413 too large")
        sp.set_peer_state("a", {"last_ok": self.t0 - 30, "until": self.t0 + 90})
        sp.set_peer_state("b", {"last_error": "connection refused", "last_error_at": self.t0 - 5})
        for ident, ch in (("r1", "default"), ("r2", "default"), ("c1", "work")):
            tmp = sp.tmp_name("rcv")
            Path(tmp).write_bytes(ident.encode() * 3)
            sp.store("web9", [(tmp, m.Header(ident, ch, 5, m.now_us(), 0, 6, 0), -1)])
        [self.claim] = sp.claim("work", 1, 600)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Shared by the tests that only read the spool (building it fsyncs a lot)."""
    return World(tmp_path_factory.mktemp("ls") / "spool")


def ls(world: World, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = ls_cli.main(["--spool", str(world.root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# -- help ---------------------------------------------------------------------------


def test_help_has_examples_and_every_option() -> None:
    res = CliRunner().invoke(ls_cli.cmd, ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "  dropr-ls --prom" in res.output
    for opt in [
        "--out",
        "--in",
        "--peer",
        "--channel",
        "--state",
        "-l, --list",
        "--json",
        "--prom",
        *COMMON_OPTIONS,
    ]:
        assert opt in res.output, opt
    assert CliRunner().invoke(ls_cli.cmd, ["-h"]).output == res.output


def test_help_and_version_installed(cmd: Any, spool_dir: Path) -> None:
    for flag in ("-h", "--help"):
        res = cmd.run("dropr-ls", flag, spool=spool_dir)
        assert res.returncode == 0 and b"Examples:" in res.stdout
    res = cmd.run("dropr-ls", "--version", spool=spool_dir)
    assert res.returncode == 0 and res.stdout.strip() == b"dropr, version 0.1.0"


# -- summary ------------------------------------------------------------------------


def test_summary_json_rows(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ls(world, capsys, "--json")
    assert code == 0 and err == ""
    rows = json_lines(out)
    assert all(list(r) == ROW_FIELDS for r in rows), rows[0]
    by = {(r["box"], r["name"], r["state"]): r for r in rows}
    assert by[("out", "a", "queued")]["count"] == 3
    assert by[("out", "a", "queued")]["bytes"] == 20 + 10 + 5
    assert by[("out", "b", "queued")]["count"] == 1
    assert by[("out", "b", "dead")]["count"] == 1
    assert by[("out", "b", "dead")]["bytes"] == len(b"dead payload")
    assert by[("in", "default", "ready")]["count"] == 2
    assert by[("in", "default", "ready")]["bytes"] == 12
    assert by[("in", "work", "claimed")]["count"] == 1
    oldest = by[("out", "a", "queued")]["oldest"]
    assert world.t0 - 5 < oldest <= time.time()
    assert not any(r["count"] == 0 and r["state"] not in ("queued", "ready") for r in rows)


def test_summary_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["BOX", "NAME", "STATE", "COUNT", "BYTES", "OLDEST"]
    assert any(line.split()[:4] == ["out", "a", "queued", "3"] for line in lines)
    peer_hdr = next(i for i, line in enumerate(lines) if line.startswith("PEER"))
    assert lines[peer_hdr].split() == ["PEER", "BACKLOG", "OLDEST", "LAST-OK", "LAST-ERROR"]
    peers = {line.split()[0]: line for line in lines[peer_hdr + 1 :] if line.strip()}
    assert peers["a"].split()[1] == "3" and re.search(r"\b(3\d|4\d)s ago", peers["a"])
    assert peers["b"].split()[1] == "1" and "connection refused" in peers["b"]


def test_empty_spool_summary(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Spool(str(spool_dir))
    assert ls_cli.main(["--spool", str(spool_dir), "--json"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--out"], {("out", "a"), ("out", "b")}),
        (["--in"], {("in", "default"), ("in", "work")}),
        (["--peer", "b"], {("out", "b")}),
        (["--channel", "work"], {("in", "work")}),
        (["--out", "--peer", "a"], {("out", "a")}),
        (["--in", "--peer", "a"], set()),
        (["--peer", "nope"], set()),
    ],
)
def test_summary_filters(
    world: World, capsys: pytest.CaptureFixture[str], args: list[str], expect: set[tuple[str, str]]
) -> None:
    code, out, _ = ls(world, capsys, "--json", *args)
    assert code == 0
    assert {(r["box"], r["name"]) for r in json_lines(out)} == expect


def test_state_filter(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "--json", "--state", "dead")
    assert code == 0
    rows = json_lines(out)
    assert {r["state"] for r in rows} == {"dead"}
    assert sum(r["count"] for r in rows) == 1


# -- listing ------------------------------------------------------------------------


def test_list_json_records(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "-l", "--json")
    assert code == 0
    recs = json_lines(out)
    outbox = [r for r in recs if r["box"] == "out"]
    inbox = [r for r in recs if r["box"] == "in"]
    assert all(list(r) == MSG_FIELDS for r in outbox), outbox[0]
    assert all(list(r)[: len(MSG_FIELDS)] == MSG_FIELDS for r in inbox)
    assert all(set(r) - set(MSG_FIELDS) <= {"origin"} for r in inbox)
    assert len(outbox) == 2 + 2 + 1  # two queued, multicast twice, one dead
    assert len(inbox) == 3
    dead = next(r for r in outbox if r["state"] == "dead")
    assert (dead["id"], dead["name"], dead["error"], dead["attempts"]) == (
        world.dead,
        "b",
        "HTTP 413 too large",
        1,
    )
    assert dead["size"] == len(b"dead payload") and Path(dead["path"]).is_file()
    q = [r for r in outbox if r["name"] == "a" and r["state"] == "queued"]
    assert [r["priority"] for r in q] == [1, 1, 5], "in folder order: priority, then arrival"
    assert [r["id"] for r in q][:2] == world.queued


def test_list_text(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "-l", "--out", "--peer", "a")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:5] == [world.queued[0], "out", "a", "queued", "p1"]


def test_list_with_state_filter(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "--list", "--json", "--state", "claimed")
    assert code == 0
    [rec] = json_lines(out)
    assert (rec["id"], rec["name"], rec["origin"]) == ("c1", "work", "web9")


# -- one message ----------------------------------------------------------------------


def test_details_of_a_multicast_message(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "--json", world.multi)
    assert code == 0
    recs = json_lines(out)
    assert sorted(r["name"] for r in recs) == ["a", "b"]
    for r in recs:
        assert r["id"] == world.multi and r["state"] == "queued" and r["channel"] == "jobs"
        assert r["deadline"] == pytest.approx(r["created"] + 60)
        assert set(MSG_FIELDS) <= set(r)
    a = next(r for r in recs if r["name"] == "a")
    assert a["next_attempt"] == pytest.approx(world.t0 + 90), "peer a is backed off"


def test_details_text(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, world.dead)
    assert code == 0
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if line.strip())
    assert fields["state"] == "dead" and fields["error"] == "HTTP 413 too large"
    assert fields["attempts"] == "1" and fields["path"].endswith("," + world.dead)


def test_details_of_inbox_message(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for ident in ("c1", "web9,c1"):
        code, out, _ = ls(world, capsys, "--json", ident)
        assert code == 0
        [rec] = json_lines(out)
        assert (rec["box"], rec["state"], rec["origin"]) == ("in", "claimed", "web9")
        assert rec["lease_until"] == pytest.approx(world.claim.expiry, abs=1)


def test_unknown_id_is_1(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ls(world, capsys, "--json", world.multi, "no-such-id")
    assert code == 1
    assert [r["id"] for r in json_lines(out)] == [world.multi] * 2, "the ids that exist are still shown"
    assert "no-such-id" in err and "Traceback" not in err


def test_unknown_id_is_one_error_line(cmd: Any, world: World) -> None:
    res = cmd.run("dropr-ls", "no-such-id", spool=world.root)
    assert res.returncode == 1
    cmd.one_error_line(res.stderr, "dropr-ls")


# -- Prometheus -------------------------------------------------------------------------

PROM_LINE = re.compile(r'^[a-z_]+\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\} -?[0-9.e+]+$')


def test_prom(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "--prom")
    assert code == 0
    samples: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP dropr_", "# TYPE dropr_"))
            continue
        assert PROM_LINE.match(line), line
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    assert samples['dropr_messages{box="out",name="a",state="queued"}'] == 3
    assert samples['dropr_bytes{box="out",name="a",state="queued"}'] == 35
    assert samples['dropr_messages{box="in",name="work",state="claimed"}'] == 1
    assert 0 <= samples['dropr_oldest_age_seconds{box="out",name="a",state="queued"}'] < 60
    assert samples['dropr_peer_last_success_timestamp_seconds{peer="a"}'] == pytest.approx(world.t0 - 30)
    assert samples['dropr_peer_failing{peer="a"}'] == 0
    assert samples['dropr_peer_failing{peer="b"}'] == 1
    types = [line for line in out.splitlines() if line.startswith("# TYPE")]
    assert all(line.endswith(" gauge") for line in types) and len(types) == len(set(types))


# -- errors -------------------------------------------------------------------------------


def test_missing_spool_is_1(cmd: Any, tmp_path: Path) -> None:
    res = cmd.run("dropr-ls", spool=tmp_path / "none")
    assert res.returncode == 1
    assert "no spool" in cmd.one_error_line(res.stderr, "dropr-ls")
    assert not (tmp_path / "none").exists(), "ls never creates a spool"


def test_bad_state_is_64(cmd: Any, world: World) -> None:
    res = cmd.run("dropr-ls", "--state", "lost", spool=world.root)
    assert res.returncode == 64
    cmd.one_error_line(res.stderr, "dropr-ls")


def test_unknown_option_is_64(cmd: Any, world: World) -> None:
    res = cmd.run("dropr-ls", "--bogus", spool=world.root)
    assert res.returncode == 64
    cmd.one_error_line(res.stderr, "dropr-ls")


def test_bad_config_is_78(cmd: Any, spool_dir: Path) -> None:
    Spool(str(spool_dir))
    (spool_dir / "dropr.toml").write_text("peers = [\n")
    res = cmd.run("dropr-ls", spool=spool_dir)
    assert res.returncode == 78
    cmd.one_error_line(res.stderr, "dropr-ls")


def test_installed_json_matches_in_process(
    cmd: Any, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    res = cmd.run("dropr-ls", "--json", "-l", spool=world.root)
    assert res.returncode == 0 and res.stderr == b""
    _, out, _ = ls(world, capsys, "--json", "-l")
    assert res.stdout.decode() == out


# -- -l with ids, a peer that never succeeded ------------------------------------------------


def test_list_with_ids_is_one_line_per_place(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ls(world, capsys, "-l", world.multi, "web9,c1")
    assert code == 0
    lines = out.splitlines()
    assert sorted(line.split()[:4] for line in lines) == [
        [world.multi, "out", "a", "queued"],
        [world.multi, "out", "b", "queued"],
        ["c1", "in", "work", "claimed"],
    ]
    assert "path" not in out, "not the KEY VALUE details"


@pytest.mark.parametrize("state", [{}, {"last_ok": 0}, {"last_ok": 0.0, "last_error": "refused"}])
def test_a_peer_that_never_succeeded_is_never_not_the_epoch(
    spool_dir: Path, capsys: pytest.CaptureFixture[str], state: dict[str, Any]
) -> None:
    sp = Spool(str(spool_dir))
    batch = sp.batch([A])
    batch.add(b"x")
    batch.commit()
    sp.set_peer_state("a", {**state, "last_error_at": time.time()} if "last_error" in state else state)
    assert ls_cli.main(["--spool", str(spool_dir)]) == 0
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith("a ")]
    assert row.split()[3] == "never", row
    assert ls_cli.main(["--spool", str(spool_dir), "--prom"]) == 0
    out = capsys.readouterr().out
    assert "# TYPE dropr_peer_last_success_timestamp_seconds gauge" in out
    assert "dropr_peer_last_success_timestamp_seconds{" not in out, "no sample: it never succeeded"
    assert 'dropr_peer_failing{peer="a"}' in out
