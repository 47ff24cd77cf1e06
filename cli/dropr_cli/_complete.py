"""Shell completion that knows the config: peer and group names, inbox channels, paths.

Runs on every TAB, so it reads as little as it can: the keys of the config file's
[peers] table (tomllib, no token files, no checks: a config with a mistake in it
still completes its names) and one listing of SPOOL/in/ for the channels. Nothing
else of the spool is read. Any error completes nothing rather than print on the
terminal. Paths (--spool, --config, --file, ...) are click.Path types, which the
shell completes itself.

Fish: click's script split each answer at every comma, so a description stopped at
its first one; FishComplete here splits only at the first (the type's).
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.shell_completion import CompletionItem, FishComplete, add_completion_class
from dropr.config import config_path, default_spool

# the groups' modes and the kinds of peer, as one short description each
_MAX_HELP = 60


def _where(ctx: click.Context) -> tuple[str, str]:
    """Return the spool folder and config file the command line typed so far names."""
    spool = ctx.params.get("spool") or default_spool()
    return spool, config_path(spool, ctx.params.get("config_file"))[0]


def _peers_table(path: str) -> dict[str, Any]:
    """Return the [peers] table of a config file, {} if it cannot be read."""
    import tomllib

    try:
        with open(path, "rb") as f:
            peers = tomllib.load(f).get("peers")
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return peers if isinstance(peers, dict) else {}


def _describe(table: Any) -> str:
    """Return a one-line description of a [peers.NAME] table: its URL, group, relay or hold."""
    if not isinstance(table, dict):
        return ""
    urls = table.get("urls")
    if isinstance(urls, list):
        text = f"group, {table.get('mode', 'failover')}, {len(urls)} members"
    elif table.get("via"):
        text = f"via {table['via']}"
    elif table.get("hold"):
        text = "held, fetches its messages"
    else:
        text = str(table.get("url", ""))
    return text if len(text) <= _MAX_HELP else text[: _MAX_HELP - 3] + "..."


def peers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete a peer or group name from the config's [peers] table."""
    return _names(ctx, incomplete, lambda p: True)


def fetch_peers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete the name of a peer one can fetch from: one with a url (dropr-send --fetch)."""
    return _names(ctx, incomplete, lambda p: isinstance(p, dict) and isinstance(p.get("url"), str))


def _names(ctx: click.Context, incomplete: str, fits: Any) -> list[CompletionItem]:
    try:
        table = _peers_table(_where(ctx)[1])
    except Exception:  # noqa: BLE001 - a completion never prints a traceback at the prompt
        return []
    return [
        CompletionItem(name, help=_describe(p) or None)
        for name, p in sorted(table.items())
        if isinstance(name, str) and name.startswith(incomplete) and fits(p)
    ]


def channels(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Complete an inbox channel: the folders of SPOOL/in/ (one listing)."""
    try:
        with os.scandir(os.path.join(_where(ctx)[0], "in")) as it:
            names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except Exception:  # noqa: BLE001 - no spool yet, or unreadable: nothing to offer
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


class Fish(FishComplete):
    """click's fish completion, with answers split at their first comma only."""

    source_template = FishComplete.source_template.replace(
        'string split "," $completion', 'string split --max 1 "," -- $completion'
    )


add_completion_class(Fish, "fish")


class Path(click.Path):
    """A path the shell completes as a file or a folder, passed on as typed: it is checked
    where it is used, as on the fast paths of dropr-put, -recv and -ack, which never see
    click (click.Path's checks would make the two paths answer differently)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


DIR = Path(file_okay=False)  # completed as a folder
FILE = Path(dir_okay=False)  # completed as a file
