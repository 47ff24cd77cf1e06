"""The example configs are ones dropr takes: every examples/**/dropr.toml loads with the
config parser (no error, no unknown key), examples/three-site is the topology its README
describes, and its up.sh is sound shell (and, once the code of #15 is all there, runs its
story to the end on 127.0.0.1).

The configs name their secrets under /etc/dropr/ as real hosts would; each is loaded as a
copy whose /etc/dropr/ is a temporary folder holding stand-in tokens.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dropr import config
from helpers import clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONFIGS = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("dropr.toml"))
SECRET = re.compile(r'"/etc/dropr/([\w.-]+)"')
THREE_SITE = EXAMPLES / "three-site"
HOSTS = ("gw", "db1", "db2", "shop", "laptop")
# the hosts the three-site configs name in URLs, and who they are
URL_HOSTS = {"gw.example.net": "gw", "db1.site-a.internal": "db1", "db2.site-a.internal": "db2"}


def load_example(rel: str, tmp: Path) -> config.Config:
    """Load examples/REL with its /etc/dropr/ files made in tmp: stand-in tokens."""
    text = (EXAMPLES / rel).read_text(encoding="utf-8")
    etc = tmp / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for name in SECRET.findall(text):
        (etc / name).write_text("tok-example client\n" if name.endswith(".tokens") else "tok-example\n")
        (etc / name).chmod(0o600)
    path = tmp / "dropr.toml"
    path.write_text(text.replace("/etc/dropr/", f"{etc}/"), encoding="utf-8")
    path.chmod(0o600)
    return config.load(str(tmp / "spool"), str(path))


def test_there_are_example_configs() -> None:
    assert {f"three-site/{h}/dropr.toml" for h in HOSTS} <= set(CONFIGS), CONFIGS


@pytest.mark.parametrize("rel", CONFIGS)
def test_example_config_loads(rel: str, tmp_path: Path) -> None:
    cfg = load_example(rel, tmp_path)
    assert cfg.unknown == [], f"examples/{rel}: unknown keys {cfg.unknown}"
    assert cfg.node == rel.split("/")[-2], f"examples/{rel}: node is {cfg.node!r}, not its folder's name"


def test_three_site_is_the_topology_of_its_readme(tmp_path: Path) -> None:
    c = {h: load_example(f"three-site/{h}/dropr.toml", tmp_path / h) for h in HOSTS}
    gw, url = c["gw"], {h: f"https://{name}:8443/" for name, h in URL_HOSTS.items()}

    db = gw.peers["db"]
    assert [m.url for m in db.members] == [url["db1"], url["db2"]] and db.mode == config.FAILOVER
    assert gw.peers["laptop"].hold and not gw.peers["laptop"].url
    assert sorted(gw.relay) == ["db1", "db2", "laptop", "shop"]
    assert gw.failover_after == 600
    for h in ("db1", "db2"):
        assert c[h].trust_relays == ["gw"]
        laptop = c[h].peers["laptop"]
        assert (laptop.via, laptop.to, laptop.url) == ("gw", "laptop", url["gw"])
    for h in ("shop", "laptop"):
        db = c[h].peers["db"]
        assert (db.via, db.to, db.url) == ("gw", "db", url["gw"])
    assert c["laptop"].peers["gw"].fetch
    assert not any(p.fetch for h in HOSTS if h != "laptop" for p in c[h].peers.values())

    for h, cfg in c.items():
        for peer in cfg.peers.values():
            if peer.via:  # a relay must let this host relay through it
                assert h in c[peer.via].relay, f"{h} relays through {peer.via}, which does not let it"
            for u in [m.url for m in peer.members] or ([peer.url] if peer.url else []):
                server = URL_HOSTS[u.split("//")[1].split(":")[0]]  # a URL names a host that serves there
                assert c[server].listen == ["0.0.0.0:8443"], f"{h}: {u}: {server} does not listen there"
    assert not c["shop"].listen and not c["laptop"].listen  # they serve nothing: nobody reaches them


def test_up_sh_is_sound_shell() -> None:
    script = THREE_SITE / "up.sh"
    assert os.access(script, os.X_OK), "examples/three-site/up.sh is not executable"
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    if shutil.which("shellcheck"):
        p = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout


NETWORK_CODE = ("dropr.groups", "dropr.relay", "dropr.fetch")


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in NETWORK_CODE),
    reason="up.sh needs the groups, relay and fetch code of #15, not all here yet",
)
def test_up_sh_tells_its_story(tmp_path: Path) -> None:
    """The worked example runs on 127.0.0.1 to its end, and leaves nothing running."""
    ports = {f"{h}_PORT": str(free_port()) for h in ("GW", "DB1", "DB2")}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = clean_env(TMPDIR=str(tmp_path), PATH=path, **ports)
    p = subprocess.run([str(THREE_SITE / "up.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "nightly report" in p.stdout.splitlines()  # the laptop got it
    assert os.listdir(tmp_path) == [], "up.sh left its folder behind"
