"""A spool is private to dropr's user (and an operators' group): no other local user reads a payload.

Every spool folder is made 0700 and every file 0600, or 0750 (set-group-ID) and 0640 with
`group` in the config; dropr-send and dropr-serve warn once when a file of tokens, or an old
spool's payload folders, are open to others. The commands run with umask 000, so nothing here
rests on the caller's umask.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Node, Nodes, expect_error, wait_until


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """Run every command with umask 000: modes must come from dropr, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def entries(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every folder and regular file below root (not root, not sockets or symlinks)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                found.append((p, st))
    return found


def exchange(a: Node, b: Node) -> None:
    """Put at a, send to b; at b ack one, reject one, leave one ready; at a one dies of its TTL."""
    url = b.serve()
    for payload in (b"one", b"two", b"three"):
        a.put(payload, "--to", url, "--ttl", "1h")
    a.put(b"late", "--to", url, "--ttl", "1ms")  # dead at a, with its meta record
    a.send_once(check=True)
    got = b.run("dropr-recv", "-n", "2", check=True).stdout.decode().split()
    b.run("dropr-ack", got[0], check=True)
    b.run("dropr-ack", "--reject", "--reason", "bad", got[2], check=True)
    a.send_once(check=True)  # the receipts: processed, dead


def test_every_folder_and_file_of_a_new_spool_is_the_users_alone(nodes: Nodes) -> None:
    a, b = nodes("a"), nodes("b")
    os.rmdir(a.spool)  # let dropr-put make the spool root itself
    exchange(a, b)
    assert stat.S_IMODE(os.stat(a.spool).st_mode) == 0o700
    seen = {"dir": 0, "file": 0}
    for spool in (a.spool, b.spool):
        for p, st in entries(spool):
            if p.name == "dropr.toml":
                continue  # the test wrote it
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            seen[kind] += 1
            want = 0o700 if kind == "dir" else 0o600
            assert stat.S_IMODE(st.st_mode) == want, f"{p}: {stat.S_IMODE(st.st_mode):04o}"
    assert seen["dir"] > 20 and seen["file"] > 10, seen
    assert any(p.parent.name == "meta" for p, _ in entries(a.spool))  # the dead one's record


def other_group() -> grp.struct_group:
    """A group that is not this user's own: root may give a folder to any group."""
    for g in grp.getgrall():
        if g.gr_gid != os.getgid():
            return g
    pytest.skip("no second group on this machine")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another group needs root here")
def test_an_operators_group_reads_every_folder_and_file(nodes: Nodes) -> None:
    group = other_group()
    a, b = nodes("a"), nodes("b")
    for n in (a, b):
        os.rmdir(n.spool)  # made by dropr, as the config outside it says (DROPR_CONFIG)
        cfg = n.spool.parent / f"{n.name}.toml"
        cfg.write_text(f'node = "{n.name}"\ngroup = "{group.gr_name}"\n')
        n.env["DROPR_CONFIG"] = str(cfg)
    exchange(a, b)
    for spool in (a.spool, b.spool):
        st = os.stat(spool)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2750, group.gr_gid)
        for p, st in entries(spool):
            want = 0o2750 if stat.S_ISDIR(st.st_mode) else 0o640
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (want, group.gr_gid), f"{p}: {st}"


def test_an_unknown_group_is_one_config_error(nodes: Nodes) -> None:
    a = nodes("a")
    os.rmdir(a.spool)
    cfg = a.spool.parent / "a.toml"
    cfg.write_text('group = "no-such-group-here"\n')
    a.env["DROPR_CONFIG"] = str(cfg)
    line = expect_error(a.run("dropr-put", "--to", "http://127.0.0.1:9/", input=b"x"), 78, "dropr-put")
    assert "unknown group 'no-such-group-here'" in line, line
    assert not a.spool.exists()
    cfg.write_text('group = ""\n')
    line = expect_error(a.run("dropr-put", "--to", "http://127.0.0.1:9/", input=b"x"), 78, "dropr-put")
    assert "group must name a group" in line, line


def warnings_of(stderr: bytes, prog: str) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith(f"{prog}: warning: ")]


def test_send_and_serve_warn_once_of_tokens_others_can_read(nodes: Nodes) -> None:
    a = nodes("a")
    a.config('[peers.b]\nurl = "http://127.0.0.1:9/"\ntoken = "t0k3n"\n[serve.tokens]\n"s3cr3t" = "c"\n')
    conf = a.spool / "dropr.toml"
    os.chmod(conf, 0o644)
    a.put(b"x", "--to", "b")
    res = a.send_once()
    (line,) = warnings_of(res.stderr, "dropr-send")
    assert line == (
        f"dropr-send: warning: {conf} holds tokens and others can read it (mode 0644); chmod 600 {conf}"
    )
    a.serve()
    log = a.serve_log

    def warned() -> list[str] | None:
        found = [x for x in log.read_text().splitlines() if x.startswith("dropr-serve: warning: ")]
        return found or None

    assert len(wait_until(warned, 10, "dropr-serve's warning")) == 1
    assert "holds tokens" in (warned() or [""])[0]
    os.chmod(conf, 0o600)
    assert warnings_of(a.send_once().stderr, "dropr-send") == []


def test_a_spool_made_by_an_earlier_release_keeps_working_and_is_warned_of(
    nodes: Nodes,
) -> None:
    a, b = nodes("a"), nodes("b")
    url = b.serve()
    first = a.put(b"before", "--to", url)
    for p, st in [(a.spool, os.stat(a.spool)), *entries(a.spool)]:  # what earlier releases made
        os.chmod(p, 0o755 if stat.S_ISDIR(st.st_mode) else 0o644)
    second = a.put(b"after", "--to", url)
    res = a.send_once()
    assert res.returncode == 0, res.stderr
    (line,) = warnings_of(res.stderr, "dropr-send")
    assert f"spool {a.spool} lets other users read its payloads" in line, line
    assert "chmod -R go-rwx" in line
    got = b.run("dropr-recv", "--all", "--format", "json", check=True).stdout.decode()
    assert first in got and second in got
    new = [p for p, st in entries(a.spool / "out") if stat.S_ISREG(st.st_mode) and second in p.name]
    assert new and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in new)
    for p, st in [(a.spool, os.stat(a.spool)), *entries(a.spool)]:  # as the warning says
        os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)
    assert warnings_of(a.send_once().stderr, "dropr-send") == []
