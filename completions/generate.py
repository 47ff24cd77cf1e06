"""Write bash, zsh and fish completions for every dropr command, from its click command.

Each file is exactly the script click itself prints for
``_DROPR_PUT_COMPLETE=bash_source dropr-put`` (zsh_source, fish_source): a small
shell function that calls the command back with ``_DROPR_PUT_COMPLETE=bash_complete``
and the words typed so far, so the completions always follow the installed options
(and the config's peers and the inbox's channels: dropr_cli._complete). For fish, click
prints the script of dropr_cli._complete.Fish, its own with each answer split at the
first comma only, so that a description keeps its commas.
The output is committed; ``tests/test_docs.py`` regenerates it and compares.

Usage: python completions/generate.py [--out DIR]   (default: the folder of this file)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

ROOT = Path(__file__).resolve().parent.parent
# shell -> (subfolder, file name for a command)
LAYOUT = {
    "bash": ("bash", "{prog}.bash"),
    "zsh": ("zsh", "_{prog}"),
    "fish": ("fish", "{prog}.fish"),
}


def scripts() -> dict[str, str]:
    """Return the console scripts of pyproject.toml: name -> "module:function"."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def click_command(entry: str) -> click.Command:
    """Return the click command behind a console script entry point."""
    module = importlib.import_module(entry.split(":", 1)[0])
    cmd: Any = getattr(module, "cmd", None)
    if cmd is None:  # dropr-put builds its click command lazily (fast start-up path)
        cmd = module.command()
    if not isinstance(cmd, click.Command):
        raise TypeError(f"{entry}: no click command (cmd or command())")
    return cmd


def complete_var(prog: str) -> str:
    """Return the environment variable click reads for prog: _DROPR_PUT_COMPLETE."""
    return "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())


def source(cmd: click.Command, prog: str, shell: str) -> str:
    """Return the completion script click emits for prog in shell."""
    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"click has no completion for {shell}")
    return cls(cmd, {}, prog, complete_var(prog)).source()


def generate(out: Path) -> list[Path]:
    """Write every command's completion for every shell under out; return the paths."""
    written = []
    for prog, entry in sorted(scripts().items()):
        cmd = click_command(entry)
        for shell, (folder, pattern) in LAYOUT.items():
            path = out / folder / pattern.format(prog=prog)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = source(cmd, prog, shell)
            if not text.endswith("\n"):
                text += "\n"
            tmp = path.with_name(path.name + ".new")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the completion files."""
    ap = argparse.ArgumentParser(description="Generate dropr shell completions from click.")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="target folder"
    )
    args = ap.parse_args(argv)
    for path in generate(args.out):
        print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
