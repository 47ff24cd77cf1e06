"""The man pages pass mandoc's linter, the judge of BSD and many Linux man page trees, and
their NAME lines fit 80 columns (what whatis, apropos and mandoc's style check expect).

The NAME and .TH checks need no tool, so they also run where mandoc is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(p.name for p in MAN.glob("*.[1-8]"))
MAX_COLUMNS = 80


def name_lines(page: str) -> list[str]:
    """Return the source lines of a page's NAME section."""
    lines = (MAN / page).read_text(encoding="utf-8").splitlines()
    start = lines.index(".SH NAME") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(".SH")), len(lines))
    return [ln for ln in lines[start:end] if not ln.startswith('.\\"')]


def test_there_are_pages() -> None:
    assert PAGES, f"no man pages in {MAN}"


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc is not installed (package mandoc)")
@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_is_clean(page: str) -> None:
    proc = subprocess.run(
        ["mandoc", "-Tlint", str(MAN / page)], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not out, f"mandoc -Tlint {page} (exit {proc.returncode}):\n{out}"


@pytest.mark.parametrize("page", PAGES)
def test_name_line_fits(page: str) -> None:
    lines = name_lines(page)
    assert len(lines) == 1, f"{page}: NAME is not one line: {lines}"
    width = len(lines[0].encode("utf-8"))  # mandoc counts bytes of the source line
    assert width <= MAX_COLUMNS, f"{page}: NAME line is {width} columns (at most {MAX_COLUMNS}): {lines[0]}"


@pytest.mark.parametrize("page", PAGES)
def test_th_date_is_a_date(page: str) -> None:
    """A bare year is no date to mandoc; YYYY-MM-DD is one to mandoc and groff alike."""
    th = (MAN / page).read_text(encoding="utf-8").splitlines()[0]
    m = re.match(r'\.TH\s+\S+\s+\d\s+"([^"]*)"', th)
    assert m, f'{page}: the first line is not .TH NAME SECTION "DATE" ...: {th}'
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", m.group(1)), f"{page}: .TH date {m.group(1)!r} is not YYYY-MM-DD"
