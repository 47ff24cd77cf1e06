"""dropr.7 shows the config errors of the network keys (#15) as dropr says them: each line
of "Errors of the network keys" is the error of a config below ("..." standing for what the
page leaves out), and each of these configs' errors is on the page.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from dropr.config import Config
from dropr.errors import ConfigError

PAGE = Path(__file__).resolve().parent.parent / "man" / "dropr.7"
FILE = "/etc/dropr/dropr.toml"
# one config per error the page shows
BAD = {
    "url and urls": '[peers.db]\nurl = "http://a/"\nurls = ["http://b/"]',
    "urls not a list": "[peers.db]\nurls = []",
    "urls twice": '[peers.db]\nurls = ["http://a/", "http://a"]',
    "mode without urls": '[peers.db]\nurl = "http://a/"\nmode = "spread"',
    "mode typo": '[peers.db]\nurls = ["http://a/"]\nmode = "spred"',
    "via and url": '[peers.b]\nurl = "http://b/"\n[peers.c]\nvia = "b"\nurl = "http://c/"',
    "via itself": '[peers.c]\nvia = "c"',
    "via no peer": '[peers.b]\nurl = "http://b/"\n[peers.c]\nvia = "x"',
    "via a group": '[peers.db]\nurls = ["http://a/"]\n[peers.c]\nvia = "db"',
    "hold and url": '[peers.laptop]\nhold = true\nurl = "http://c/"',
    "fetch without url": '[peers.hub]\nfetch = true\nvia = "x"\n[peers.x]\nurl = "http://x/"',
    "no url at all": '[peers.x]\ntoken = "t"',
    "relay not a list": '[serve]\nrelay = "a"',
}


def page_lines() -> list[str]:
    """Return the errors the page shows, one per error (continuation lines joined)."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    body = lines[lines.index(".SS Errors of the network keys") :]
    block = body[body.index(".EX") + 1 : body.index(".EE")]
    out: list[str] = []
    for line in block:
        line = line.replace("\\(aq", "'").replace("\\-", "-")
        if line.startswith("    "):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def error_of(text: str) -> str:
    """Return the error line of a config, without the file's prefix and the advice after."""
    with pytest.raises(ConfigError) as exc:
        Config(tomllib.loads(text), FILE)
    line = str(exc.value)
    assert "\n" not in line
    head, tail = f"bad config {FILE}: ", "; fix the file"
    assert line.startswith(head) and line.endswith(tail), line
    return line[len(head) : -len(tail)]


def shown(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.split("...")))


def test_every_error_on_the_page_is_dropr_s() -> None:
    errors = {name: error_of(text) for name, text in BAD.items()}
    lines = page_lines()
    assert len(lines) == len(errors)
    for line in lines:
        assert any(shown(line).fullmatch(e) for e in errors.values()), (
            f"dropr.7 shows an error dropr does not say: {line}"
        )
    for name, e in errors.items():
        assert any(shown(line).fullmatch(e) for line in lines), (
            f"dropr.7 does not show the error of {name}: {e}"
        )
