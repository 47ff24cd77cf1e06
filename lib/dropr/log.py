"""A logger that imports ``logging`` on first use.

``logging`` costs several milliseconds to import, and dropr-put, dropr-recv and
dropr-ack usually log nothing; modules on their path take ``log = get(__name__)``
instead of ``logging.getLogger(__name__)``. Handlers are configured in cli/ only.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


_first_use: Any = None  # what the command set up for the first use (at_first_use)


def at_first_use(setup: Any) -> None:
    """Have setup() run when a module of the library first logs: a command that usually logs
    nothing (dropr-recv, dropr-ack) sets up its handler, and the prefix its lines carry,
    only then, so that logging is not imported on every call."""
    global _first_use
    _first_use = setup


class _Lazy:
    __slots__ = ("_name", "_log")

    def __init__(self, name: str) -> None:
        self._name = name
        self._log: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._log is None:
            global _first_use
            import logging

            if _first_use is not None:
                setup, _first_use = _first_use, None
                setup()
            self._log = logging.getLogger(self._name)
        return getattr(self._log, attr)


def get(name: str) -> Any:
    """Return a stand-in for logging.getLogger(name) that imports logging when first used."""
    return _Lazy(name)
