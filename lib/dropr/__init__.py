"""dropr: durable, decentralized store-and-forward messaging for Unix hosts.

The public API is imported lazily (PEP 562) so that ``dropr-put`` pays only
for the modules it uses.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any


__version__ = "0.1.0"
__all__ = ["Spool", "Config", "DroprError", "make_app", "load_config", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Spool":
        from .spool import Spool

        return Spool
    if name == "Config":
        from .config import Config

        return Config
    if name == "load_config":
        from .config import load

        return load
    if name == "DroprError":
        from .errors import DroprError

        return DroprError
    if name == "make_app":
        from .server import make_app

        return make_app
    raise AttributeError(name)
