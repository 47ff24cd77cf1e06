"""Helpers shared by the fast paths and the click commands, free of click."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

    from dropr.spool import Spool


def logging_for(prog: str, o: dict[str, Any], always: bool = False) -> None:
    """Configure logging from -v/-q counts: now when they are given (or always), else when
    a library module first logs, so that its lines carry the prefix as every command's do
    (and logging is imported only when it matters)."""
    from ._guard import setup_logging

    if o.get("verbose") or o.get("quiet") or always:
        setup_logging(prog, int(o.get("verbose", 0)), int(o.get("quiet", 0)))
    else:
        from dropr import log

        log.at_first_use(lambda: setup_logging(prog, 0, 0))


def open_spool(o: dict[str, Any]) -> Spool:
    """Open the spool of --spool (else the default) with its config (--config, else the default)."""
    from dropr.config import default_spool, load
    from dropr.spool import Spool

    spool_dir = o.get("--spool") or default_spool()
    return Spool(spool_dir, load(spool_dir, o.get("--config")))
