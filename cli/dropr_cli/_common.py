"""The shared command class and options: --spool, --config, -v/-q, --version, -h."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from dropr.config import Config, default_spool, load
from dropr.errors import EX_USAGE, UsageError
from dropr.spool import Spool

from ._complete import DIR, FILE
from ._guard import VERSION, guard, setup_logging
from ._types import DURATION, SIZE

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Option(click.Option):
    """click's option, showing a show_default text as it is: "[default: 1]", where click
    writes "[default: (1)]". For an option whose default is None (not given) in the code
    but has a value in effect: every --help writes its defaults one way."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None or not isinstance(self.show_default, str):
            return record
        shown = self.show_default
        return record[0], record[1].replace(f"default: ({shown})", f"default: {shown}")


class Obj:
    """What every command gets: resolved spool path, config file, verbosity."""

    def __init__(self, spool: str, config: str | None, verbose: int, quiet: int) -> None:
        self.spool_path = spool
        self.config_path = config
        self.verbose = verbose
        self.quiet = quiet

    def config(self) -> Config:
        """Load the config of this spool."""
        return load(self.spool_path, self.config_path)

    def spool(self, create: bool = True) -> Spool:
        """Open the spool with its config."""
        return Spool(self.spool_path, self.config(), create=create)


def main_for(cmd: click.Command) -> Callable[[list[str] | None], int]:
    """Return a console-script main that runs cmd with dropr's exit-code rules."""

    def main(argv: list[str] | None = None) -> int:
        prog = cmd.name or "dropr"
        verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])

        def run() -> int:
            try:
                rv = cmd.main(args=argv, prog_name=prog, standalone_mode=False)
            except click.exceptions.NoArgsIsHelpError as exc:
                click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
                return EX_USAGE
            except click.UsageError as exc:
                raise UsageError(usage_line(exc.format_message(), prog)) from None
            except click.exceptions.Exit as exc:
                return int(exc.exit_code)
            except click.Abort:
                return 130
            except click.ClickException as exc:
                raise UsageError(exc.format_message()) from None
            return int(rv or 0)

        code = guard(prog, run, verbose)
        sys.stdout.flush()
        return code

    return main


def usage_line(message: str, prog: str) -> str:
    """Return click's usage message as one line with a pointer to --help, and one stop:
    click ends it with "." and the hint followed ("'-- CMD [ARG]...'.; see")."""
    message = message.replace("\n", " ").replace(". (Did you mean", " (did you mean").rstrip()
    if message.endswith(".") and not message.endswith("..."):
        message = message[:-1]
    return f"{message}; see '{prog} --help'"


def common(fn: F) -> F:
    """Add --spool, --config, -v, -q, --version to a command and build ctx.obj."""

    opts = [
        click.option(
            "--spool",
            cls=Option,
            type=DIR,
            metavar="DIR",
            envvar="DROPR_SPOOL",
            default=None,
            show_default="$DROPR_SPOOL, else /var/spool/dropr for root, ~/.local/state/dropr for others",
            help="Spool directory.",
        ),
        click.option(
            "--config",
            "config_file",
            cls=Option,
            type=FILE,
            metavar="FILE",
            envvar="DROPR_CONFIG",
            default=None,
            show_default="$DROPR_CONFIG, else SPOOL/dropr.toml",
            help="Config file.",
        ),
        click.option("-v", "--verbose", count=True, help="More detail on stderr (tracebacks)."),
        click.option("-q", "--quiet", count=True, help="Only errors on stderr."),
        click.version_option(VERSION, "--version", prog_name="dropr"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def with_options(*opts: Callable[[F], F]) -> Callable[[F], F]:
    """Return a decorator adding the click options opts to a command, in --help order."""

    def add(fn: F) -> F:
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return add


def obj(spool: str | None, config_file: str | None, verbose: int, quiet: int, prog: str) -> Obj:
    """Build the shared object and set up logging for a command."""
    setup_logging(prog, verbose, quiet)
    return Obj(spool or default_spool(), config_file, verbose, quiet)


def common_options(kw: dict[str, Any]) -> dict[str, Any]:
    """Return --spool, --config, -v and -q from click's keyword arguments, keyed as the fast path has them."""
    keys = {"verbose": "verbose", "quiet": "quiet", "--spool": "spool", "--config": "config_file"}
    return {key: kw[name] for key, name in keys.items()}


__all__ = [
    "CONTEXT",
    "DIR",
    "FILE",
    "Option",
    "DURATION",
    "SIZE",
    "Obj",
    "common",
    "main_for",
    "obj",
    "click",
    "common_options",
    "with_options",
]
