"""The committed completion scripts, run by the real shells against the installed commands.

Each shell sources completions/<shell>/<file> as a user's would and asks for the
words after a partly typed command line; the script calls the command back. What
they must offer: the config's peers and groups for --to and --peer, the inbox's
channels for --channel, files and folders for path options; fish with whole
descriptions (click's script cut them at the first comma). A shell that is not
installed is skipped (make sysdeps installs bash, fish and zsh).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"
CONFIG = """\
[peers.db1]
url = "http://db1.example:8080/"

[peers.dbs]
urls = ["http://a.example:1/", "http://b.example:1/"]
mode = "spread"

[peers.far]
via = "db1"
"""


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool folder with a config of three peers (one a group) and two inbox channels."""
    root = tmp_path_factory.mktemp("complete") / "spool"
    for ch in ("jobs", "mail"):
        (root / "in" / ch).mkdir(parents=True)
    (root / "dropr.toml").write_text(CONFIG)
    return root


def _env(spool: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return clean_env(spool, PATH=f"{bindir}:/usr/bin:/bin", HOME=str(spool.parent))


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make sysdeps installs it)")
    return path


# -- bash ---------------------------------------------------------------------------


def bash_complete(spool: Path, prog: str, line: str) -> list[str]:
    """Return what bash's completion function offers for line (ending at the cursor), and
    COMPOPT lines for the file and folder completions it hands to readline."""
    script = COMPLETIONS / "bash" / f"{prog}.bash"
    func = f"_{prog.replace('-', '_')}_completion"
    code = (
        'compopt() { local IFS=" "; echo "COMPOPT $*"; }\n'  # readline's, only inside a real completion
        f"source {script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        'case "$1" in *" ") COMP_WORDS+=(""); COMP_CWORD=$((COMP_CWORD + 1));; esac\n'
        f"{func} {prog}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(
        [_shell("bash"), "-c", code, "bash", line],
        env=_env(spool),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return [ln for ln in p.stdout.splitlines() if ln]


def test_bash_completes_peers_and_groups(spool: Path) -> None:
    assert bash_complete(spool, "dropr-put", "dropr-put --to ") == ["db1", "dbs", "far"]
    assert bash_complete(spool, "dropr-send", "dropr-send --peer d") == ["db1", "dbs"]
    assert bash_complete(spool, "dropr-ls", "dropr-ls --peer f") == ["far"]
    assert bash_complete(spool, "dropr-ack", "dropr-ack --requeue --out --peer db") == ["db1", "dbs"]


def test_bash_completes_channels(spool: Path) -> None:
    assert bash_complete(spool, "dropr-recv", "dropr-recv --channel ") == ["jobs", "mail"]
    assert bash_complete(spool, "dropr-ls", "dropr-ls --in --channel m") == ["mail"]
    assert bash_complete(spool, "dropr-ack", "dropr-ack --channel j") == ["jobs"]


def test_bash_hands_paths_to_readline(spool: Path) -> None:
    assert bash_complete(spool, "dropr-put", "dropr-put --file ") == ["COMPOPT -o default"]
    assert bash_complete(spool, "dropr-ls", "dropr-ls --spool ") == ["COMPOPT -o dirnames"]
    assert bash_complete(spool, "dropr-serve", "dropr-serve --certfile ") == ["COMPOPT -o default"]
    assert bash_complete(spool, "dropr-angel", "dropr-angel --pidfile ") == ["COMPOPT -o default"]


def test_bash_reads_the_config_named_on_the_line(spool: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[peers.elsewhere]\nurl = "http://e:1/"\n')
    assert bash_complete(spool, "dropr-put", f"dropr-put --config {other} --to ") == ["elsewhere"]
    empty = tmp_path / "nospool"
    assert bash_complete(spool, "dropr-ls", f"dropr-ls --spool {empty} --peer ") == []
    assert bash_complete(spool, "dropr-ls", f"dropr-ls --spool {empty} --channel ") == []


def test_a_broken_config_completes_nothing_quietly(spool: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[peers.x\nurl = \n")
    assert bash_complete(spool, "dropr-put", f"dropr-put --config {bad} --to ") == []


# -- fish ---------------------------------------------------------------------------


def fish_complete(spool: Path, prog: str, line: str) -> list[str]:
    """Return fish's completions for line: "word<TAB>description" lines."""
    script = COMPLETIONS / "fish" / f"{prog}.fish"
    p = subprocess.run(
        [_shell("fish"), "--no-config", "-c", f"source {script}; complete -C {line!r}"],
        env=_env(spool),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_fish_completes_peers_with_whole_descriptions(spool: Path) -> None:
    got = fish_complete(spool, "dropr-send", "dropr-send --peer ")
    assert got == ["db1\thttp://db1.example:8080/", "dbs\tgroup, spread, 2 members", "far\tvia db1"]


def test_fish_option_descriptions_go_past_the_first_comma(spool: Path) -> None:
    got = dict(ln.split("\t", 1) for ln in fish_complete(spool, "dropr-send", "dropr-send --o"))
    assert (
        got["--once"] == "One pass over everything due, poll receipts, exit (0 all sent, 75 some deferred)."
    )


def test_fish_completes_channels_and_folders(spool: Path) -> None:
    assert fish_complete(spool, "dropr-recv", "dropr-recv --channel ") == ["jobs", "mail"]
    got = [ln.split("\t")[0] for ln in fish_complete(spool, "dropr-ls", f"dropr-ls --spool {spool}/")]
    assert got == [f"{spool}/in/"]  # folders only
    got = [ln.split("\t")[0] for ln in fish_complete(spool, "dropr-put", f"dropr-put --file {spool}/")]
    assert sorted(got) == [f"{spool}/dropr.toml", f"{spool}/in/"]


# -- zsh ----------------------------------------------------------------------------


def zsh_complete(spool: Path, prog: str, words: list[str]) -> list[str]:
    """Return what zsh's completion function hands to the completion system for words (the
    last one under the cursor): _describe and compadd entries, _path_files calls."""
    script = COMPLETIONS / "zsh" / f"_{prog}"
    code = (
        "compdef() { :; }\n"  # the completion system's own functions, recorded instead
        '_describe() { print -rl -- "${(@P)3}"; }\n'
        'compadd() { print -rl -- "${(@P)${@[-1]}}"; }\n'
        '_path_files() { print -r -- "PATH_FILES $*"; }\n'
        f"source {script}\n"
        'words=("$@"); CURRENT=$#\n'
        f"_{prog.replace('-', '_')}_completion\n"
    )
    p = subprocess.run(
        [_shell("zsh"), "-f", "-c", code, "zsh", *words],
        env=_env(spool),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_zsh_completes_peers_channels_and_paths(spool: Path) -> None:
    got = zsh_complete(spool, "dropr-put", ["dropr-put", "--to", ""])
    assert got == ["db1:http://db1.example:8080/", "dbs:group, spread, 2 members", "far:via db1"]
    assert zsh_complete(spool, "dropr-recv", ["dropr-recv", "--channel", ""]) == ["jobs", "mail"]
    assert zsh_complete(spool, "dropr-ls", ["dropr-ls", "--spool", ""]) == ["PATH_FILES -/"]
    assert zsh_complete(spool, "dropr-put", ["dropr-put", "--file", ""]) == ["PATH_FILES -f"]


def test_fetch_completes_peers_with_a_url(spool: Path) -> None:
    """For dropr-send --fetch (NETWORKS.md 3): a peer one fetches from has a url; not a group,
    nor a peer reached through a relay."""
    import click
    from dropr_cli import _complete

    ctx = click.Context(click.Command("dropr-send"))
    ctx.params = {"spool": str(spool), "config_file": None}
    param = click.Option(["--fetch"])
    assert [c.value for c in _complete.fetch_peers(ctx, param, "")] == ["db1"]
    assert [c.value for c in _complete.peers(ctx, param, "")] == ["db1", "dbs", "far"]
