"""The networks-of-hosts keys of dropr.toml (dropr.7, NETWORKS OF HOSTS): groups, via, hold, fetch."""

from __future__ import annotations

from pathlib import Path

import pytest
from dropr import config as c
from dropr.errors import ConfigError


def load(tmp_path: Path, text: str) -> c.Config:
    (tmp_path / "dropr.toml").write_text(text)
    return c.load(str(tmp_path))


def test_a_group_has_one_member_per_url_named_after_the_url(tmp_path: Path) -> None:
    text = '[peers.db]\nurls = ["http://db1:1/", "http://db2:2"]\nmode = "spread"\ntoken = "t"\n'
    cfg = load(tmp_path, text)
    db = cfg.peers["db"]
    assert db.mode == c.SPREAD and db.url == "http://db1:1/"
    assert [m.url for m in db.members] == ["http://db1:1/", "http://db2:2/"]
    assert [m.token for m in db.members] == ["t", "t"] and {m.group for m in db.members} == {"db"}
    assert db.members[0].name == c.member_name("db", "http://db1:1")
    assert c.group_of(db.members[1].name) == "db"
    # reordering the urls keeps each member's folder: its messages stay where they were stored
    again = load(tmp_path, '[peers.db]\nurls = ["http://db2:2/", "http://db1:1/"]\n')
    assert {m.name for m in again.peers["db"].members} == {m.name for m in db.members}
    assert again.peers["db"].mode == c.FAILOVER
    assert c.group_of("db") is None


def test_via_takes_the_relays_url_and_token(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[peers.b]\nurl = "http://b:1/"\ntoken = "tb"\n[peers.c]\nvia = "b"\n')
    peer = cfg.peers["c"]
    assert (peer.url, peer.token, peer.via, peer.to) == ("http://b:1/", "tb", "b", "c")
    assert cfg.peers["b"].to is None


def test_hold_fetch_and_serve_lists(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[peers.laptop]\nhold = true\n[peers.hub]\nurl = "http://h:1/"\nfetch = true\n'
        '[serve]\nrelay = ["a"]\ntrust_relays = ["b"]\n[send]\nfailover_after = "30s"\n',
    )
    assert cfg.peers["laptop"].hold and not cfg.peers["laptop"].url and cfg.peers["hub"].fetch
    assert (cfg.relay, cfg.trust_relays, cfg.failover_after) == (["a"], ["b"], 30.0)
    assert c.Config().failover_after == 300.0 and c.Config().relay == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[peers.x]\nurl = "http://a/"\nurls = ["http://b/"]\n', "both url and urls"),
        ('[peers.x]\nvia = "y"\n', "via = 'y' is no peer"),
        ('[peers.x]\nvia = "x"\n', "names the peer itself"),
        ('[peers.x]\nhold = true\nurl = "http://a/"\n', "hold = true and a url"),
        ('[peers.x]\nurls = ["http://a/"]\nmode = "spred"\n', 'write "failover" or "spread"'),
        ("[peers.x]\nfetch = true\nhold = true\n", "fetch = true but no url"),
        ('[peers.x]\nurl = "http://a/"\nmode = "spread"\n', "mode but no urls"),
        ("[peers.x]\nurls = []\n", "list of one or more URLs"),
        ('[peers.x]\nurls = ["http://a/", "http://a"]\n', "names a member twice"),
        ('[peers.x]\nurls = ["ftp://a/"]\n', "bad peer URL"),
        ('[peers.x]\nhold = "yes"\n', "hold must be true or false"),
        ('[peers.x]\nurl = "http://a/"\nvia = "b"\n[peers.b]\nurl = "http://b/"\n', "via and a url"),
        ('[peers.x]\nvia = "g"\n[peers.g]\nurls = ["http://b/"]\n', "the relay must be a peer with one url"),
        ('[peers.x]\nvia = "h"\n[peers.h]\nhold = true\n', "the relay must be a peer with one url"),
        ('[serve]\nrelay = "a"\n', "serve.relay must be a list"),
        ('[serve]\ntrust_relays = ["a b"]\n', "serve.trust_relays"),
        ('[send]\nfailover_after = "soon"\n', "bad duration"),
        ("[peers.x]\n", "needs url"),
    ],
)
def test_network_config_errors_are_one_line_78(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert says in str(err.value) and "\n" not in str(err.value) and err.value.code == 78
