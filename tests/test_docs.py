"""The docs keep up with the code: man pages name every option, --help has examples,
completions are current, the changelog has an Unreleased section.

Options and commands are read from the click commands themselves, so a new option
without a man page entry, or a stale completion file, fails here.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import clean_env, command_path

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
COMPLETIONS = ROOT / "completions"
SHELLS = ("bash", "zsh", "fish")
# Someone else writes this page; until it exists its command is skipped, not failed.
PENDING_PAGES = {"dropr-angel"}
COMMAND_SECTIONS = (
    "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS",
    "FILES", "ENVIRONMENT", "EXAMPLES", "SEE ALSO",
)  # fmt: skip


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


SCRIPTS = _scripts()


def click_command(prog: str) -> click.Command:
    """Return the click command behind a console script (dropr-put builds it lazily)."""
    module = __import__(SCRIPTS[prog].split(":", 1)[0], fromlist=["_"])
    cmd = getattr(module, "cmd", None)
    if cmd is None:
        cmd = module.command()
    assert isinstance(cmd, click.Command), f"{prog}: no click command"
    return cmd


def man_page(prog: str) -> Path:
    """Return the man page of prog (any section), skipping a page someone else still writes."""
    pages = sorted(MAN.glob(f"{prog}.[1-8]"))
    if not pages and prog in PENDING_PAGES:
        pytest.skip(f"man/{prog}.8 is not written yet (another contributor's part)")
    assert pages, f"{prog} has no man page in man/ ({prog}.1 or {prog}.8)"
    assert len(pages) == 1, f"{prog} has several man pages: {pages}"
    return pages[0]


def roff_text(path: Path) -> str:
    """Return a man page's source with the escapes that matter for option names undone."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\\f(\[[^]]*\]|.)", "", text)  # font changes
    return text.replace("\\-", "-").replace("\\&", "").replace("\\(aq", "'")


def sections(text: str) -> dict[str, str]:
    """Split a man page source into its .SH sections: name -> body."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        m = re.match(r'\.SH\s+"?([^"]*)"?\s*$', line)
        if m:
            name = m.group(1).strip()
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def tagged_lines(body: str) -> list[str]:
    """Return the tag lines of a section: each line right after a .TP."""
    lines = body.splitlines()
    return [lines[i + 1] for i, ln in enumerate(lines[:-1]) if re.match(r"\.TP\b", ln)]


def option_names(cmd: click.Command) -> list[str]:
    """Return every option a user can type: the long form, or the short one if that is all."""
    # with the command's context settings: click caches the help option it builds here
    ctx = click.Context(cmd, info_name=cmd.name, **cmd.context_settings)
    names = []
    for p in cmd.get_params(ctx):
        if not isinstance(p, click.Option):
            continue
        opts = [*p.opts, *p.secondary_opts]
        longs = [o for o in opts if o.startswith("--")]
        names.extend(longs or opts)
    return names


def mentions(text: str, option: str) -> bool:
    """Tell whether option appears as a whole word (--max-rss, not --max-rss-foo)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_man_page_names_every_option(prog: str) -> None:
    cmd = click_command(prog)
    page = man_page(prog)
    secs = sections(roff_text(page))
    tags = "\n".join(tagged_lines(secs.get("OPTIONS", "")))
    missing = [o for o in option_names(cmd) if not mentions(tags, o)]
    assert not missing, f"{page.name}: OPTIONS has no .TP entry for {', '.join(missing)}"
    synopsis = secs.get("SYNOPSIS", "")
    assert prog in synopsis, f"{page.name}: SYNOPSIS does not name {prog}"


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_man_page_has_the_sections(prog: str) -> None:
    page = man_page(prog)
    text = page.read_text(encoding="utf-8")
    assert re.match(rf'\.TH\s+"?{re.escape(prog.upper())}"?\s+{page.suffix[1:]}\b', text), (
        f"{page.name}: .TH must name {prog.upper()} and section {page.suffix[1:]}"
    )
    secs = sections(text)
    missing = [s for s in COMMAND_SECTIONS if s not in secs]
    assert not missing, f"{page.name}: missing sections {', '.join(missing)}"
    assert re.search(rf"^{re.escape(prog)} \\- \S", secs["NAME"], re.M), f"{page.name}: NAME line"


def test_overview_page() -> None:
    text = roff_text(MAN / "dropr.7")
    secs = sections(text)
    for name in (
        "SPOOL LAYOUT",
        "STATES",
        "CONFIGURATION",
        "ENVIRONMENT",
        "EXIT STATUS",
        "WIRE PROTOCOL",
    ):
        assert name in secs, f"dropr.7: no {name} section"
    from dropr import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EX_")}
    for code in sorted(codes):
        assert re.search(rf"^\.B {code}$", secs["EXIT STATUS"], re.M), f"dropr.7: exit code {code}"
    for status in ("200", "400", "401", "403", "404", "405", "413", "503", "Retry-After"):
        assert status in secs["WIRE PROTOCOL"], f"dropr.7: wire protocol does not mention {status}"
    for word in (
        "stored",
        "duplicate",
        "retry",
        "refused",
        "processed",
        "dead",
        "pending",
        "unknown",
    ):
        assert mentions(secs["WIRE PROTOCOL"], word), f"dropr.7: wire protocol does not explain {word}"
    for prog in SCRIPTS:
        assert prog in secs["DESCRIPTION"], f"dropr.7 does not list {prog}"


def _plain(roff: str) -> str:
    """Return roff source as running words: font macros unwrapped, quotes and spacing gone."""
    words = [re.sub(r"^\.(?:[BI]|[BIR][BIR])\s+", "", ln) for ln in roff.splitlines() if ln.strip()]
    return " ".join(" ".join(words).replace('"', "").split())


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_command_is_described_in_its_name_lines_words(prog: str) -> None:
    """dropr.7's list of commands and README's table say what each page's NAME line says."""
    page = man_page(prog)
    name = sections(roff_text(page))["NAME"].strip()
    what = name.split(" - ", 1)[1]
    described = _plain(sections(roff_text(MAN / "dropr.7"))["DESCRIPTION"])
    assert f"{prog} ({page.suffix[1:]}) {what}" in described, f"dropr.7 DESCRIPTION: {prog} is not {what!r}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("`", "")
    assert f"| {prog} | {what} |" in readme, f"README.md: the row of {prog} is not {what!r}"


def test_see_also_targets_exist() -> None:
    pages = {p.name for p in MAN.glob("*.[1-8]")}
    for page in sorted(MAN.glob("*.[1-8]")):
        for name, sec in re.findall(
            r"^\.BR\s+(dropr[\w-]*)\s+\((\d)\)", page.read_text(encoding="utf-8"), re.M
        ):
            if name in PENDING_PAGES and f"{name}.{sec}" not in pages:
                continue
            assert f"{name}.{sec}" in pages, f"{page.name} refers to {name}({sec}), which does not exist"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", sorted(p.name for p in MAN.glob("*.[1-8]")))
def test_man_page_renders_without_warnings(page: str) -> None:
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not proc.stderr, f"{page}: {proc.stderr}"


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_has_examples(prog: str, flag: str) -> None:
    result = CliRunner().invoke(click_command(prog), [flag], prog_name=prog)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  Examples:" in lines, f"{prog} {flag}: no 'Examples:' block"
    after = lines[lines.index("  Examples:") + 1 :]
    examples = [ln for ln in after if ln.startswith("    ") and prog in ln]
    assert examples, f"{prog} {flag}: the Examples block shows no {prog} command line"


def _generate(out: Path) -> None:
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [sys.executable, str(COMPLETIONS / "generate.py"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _tree(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for sh in SHELLS for p in (base / sh).glob("*") if p.is_file()}


def test_completions_are_current(tmp_path: Path) -> None:
    _generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(COMPLETIONS)
    assert len(fresh) == len(SCRIPTS) * len(SHELLS)
    assert fresh == committed, (
        f"completions differ: missing {sorted(fresh - committed)}, "
        f"stale {sorted(committed - fresh)}; run make completions"
    )
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, COMPLETIONS, sorted(fresh), shallow=False)
    assert not mismatch and not errors, f"stale completions {mismatch + errors}; run make completions"


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_installed_command_emits_the_committed_completion(prog: str) -> None:
    """The real entry point hands *_COMPLETE to click (dropr-put's fast path included)."""
    var = "_{}_COMPLETE".format(prog.replace("-", "_").upper())
    env = clean_env(**{var: "bash_source"})
    proc = subprocess.run([command_path(prog)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (COMPLETIONS / "bash" / f"{prog}.bash").read_bytes()


def test_completion_completes_options() -> None:
    env = clean_env(_DROPR_PUT_COMPLETE="bash_complete", COMP_WORDS="dropr-put --prio", COMP_CWORD="1")
    proc = subprocess.run([command_path("dropr-put")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["plain,--priority"]
    env.update(_DROPR_LS_COMPLETE="bash_complete", COMP_WORDS="dropr-ls --state cl", COMP_CWORD="2")
    proc = subprocess.run([command_path("dropr-ls")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["plain,claimed"]


def test_changelog_has_unreleased_on_top() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## +(.+?)\s*$", text, re.M)
    assert headings, "CHANGELOG.md has no '## ' sections"
    assert re.fullmatch(r"\[?Unreleased\]?", headings[0], re.I), (
        f"CHANGELOG.md: the first section is {headings[0]!r}, not 'Unreleased'"
    )
