"""The parsed-config cache (config._cached): as strict as the TOML parse, private, never stale."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dropr import config as c
from dropr.errors import ConfigError

TEXT = '[peers.db1]\nurl = "http://db1:1/"\ntoken = "secret"\n[limits]\nretention = "3d"\n'


def spool(tmp_path: Path, text: str = TEXT) -> Path:
    sp = tmp_path / "spool"
    sp.mkdir(exist_ok=True)
    (sp / "dropr.toml").write_text(text)
    return sp


def test_the_second_load_takes_the_cache_and_gives_the_same_config(tmp_path: Path) -> None:
    sp = spool(tmp_path)
    first = c.load(str(sp))
    cache = sp / c.CACHE_NAME
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600  # it holds the tokens
    code = (
        "import sys; from dropr import config as c; cfg = c.load(sys.argv[1]);"
        "print(cfg.peers['db1'].token, cfg.retention, 'tomllib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(sp)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [first.peers["db1"].token, str(first.retention), "False"]


def test_an_edit_of_the_same_size_and_time_is_parsed_again(tmp_path: Path) -> None:
    sp = spool(tmp_path)
    c.load(str(sp))
    conf = sp / "dropr.toml"
    st = conf.stat()
    conf.write_text(TEXT.replace("3d", "4d"))
    os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert c.load(str(sp)).retention == 4 * 86400


def test_bad_toml_is_refused_every_time_and_never_kept(tmp_path: Path) -> None:
    sp = spool(tmp_path, "[peers.db1\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="fix the TOML syntax"):
            c.load(str(sp))
    assert not (sp / c.CACHE_NAME).exists()


def test_bad_values_are_refused_from_the_cache_too(tmp_path: Path) -> None:
    sp = spool(tmp_path, '[limits]\nretention = "soon"\n')
    for _ in range(2):  # the second from the cache: Config checks the data each start
        with pytest.raises(ConfigError, match="bad duration"):
            c.load(str(sp))
    assert (sp / c.CACHE_NAME).exists()


@pytest.mark.parametrize("junk", [b"", b"\x00garbage", b"\xe9" * 10])
def test_a_torn_or_foreign_cache_is_parsed_again(tmp_path: Path, junk: bytes) -> None:
    sp = spool(tmp_path)
    (sp / c.CACHE_NAME).write_bytes(junk)
    assert c.load(str(sp)).peers["db1"].url == "http://db1:1/"


def test_a_cache_of_another_config_file_is_not_used(tmp_path: Path) -> None:
    sp = spool(tmp_path)
    c.load(str(sp))
    other = tmp_path / "other.toml"
    other.write_text(TEXT.replace("db1:1", "db9:9"))  # same length, another file
    assert c.load(str(sp), str(other)).peers["db1"].url == "http://db9:9/"


def test_toml_dates_are_parsed_each_time(tmp_path: Path) -> None:
    sp = spool(tmp_path, "when = 1979-05-27T07:32:00Z\n" + TEXT)
    c.load(str(sp))
    assert not (sp / c.CACHE_NAME).exists()


def test_no_spool_yet_is_no_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(TEXT)
    assert c.load(str(tmp_path / "none"), str(conf)).peers["db1"].token == "secret"


def test_a_group_spools_cache_is_no_more_readable_than_the_config(tmp_path: Path) -> None:
    sp = spool(tmp_path, 'group = "0"\n' + TEXT)
    conf = sp / "dropr.toml"
    conf.chmod(0o644)
    c.load(str(sp))
    assert stat.S_IMODE((sp / c.CACHE_NAME).stat().st_mode) == 0o640  # the group's, not others'
    (sp / c.CACHE_NAME).unlink()
    conf.chmod(0o600)
    c.load(str(sp))
    assert stat.S_IMODE((sp / c.CACHE_NAME).stat().st_mode) == 0o600  # not wider than the config
