"""A recording, fault-injecting FS for tests (see _fs): the spool's I/O as a list of steps.

Not imported by the commands: only a test installs it, ``Spool(root, fs=TracingFS())``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from ._fs import FS, PRIVATE_MODES


class TracingFS(FS):
    """An FS that records every primitive as (name, path or paths) in ``ops`` and calls
    ``hook(name, args)`` first, which may raise to inject a fault. A descriptor's
    operations (write, fsync, close) record the path it was opened on."""

    PRIMITIVES = (
        "create", "open_sync", "close", "write", "pwrite", "fsync", "fdatasync", "syncfs",
        "fsync_dir", "rename", "link", "unlink", "mkdir", "give_to_group", "symlink", "utime",
    )  # fmt: skip

    def __init__(
        self,
        hook: Callable[[str, tuple[Any, ...]], None] | None = None,
        modes: tuple[int, int] = PRIVATE_MODES,
    ) -> None:
        super().__init__(modes)
        self.ops: list[tuple[str, ...]] = []
        self.hook = hook
        self.fds: dict[int, str] = {}

    def _do(self, name: str, args: tuple[Any, ...]) -> Any:
        if name in _FD_OPS:
            self.ops.append((name, self.fds.get(args[0], f"fd{args[0]}")))
        elif name in ("rename", "link", "symlink", "give_to_group"):
            self.ops.append((name, str(args[0]), str(args[1])))
        else:
            self.ops.append((name, str(args[0])))
        if self.hook is not None:
            self.hook(name, args)
        result = getattr(FS, name)(self, *args)
        if name in ("create", "open_sync"):
            self.fds[result] = str(args[0])
        elif name == "close":
            self.fds.pop(args[0], None)
        return result

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        """Write every byte, through write (so each write is recorded)."""
        view = memoryview(data)
        while view:
            n = self.write(fd, view)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[n:]


_FD_OPS = frozenset(("close", "write", "pwrite", "fsync", "fdatasync"))


def _traced(name: str) -> Callable[..., Any]:
    def op(self: TracingFS, *args: Any) -> Any:
        return self._do(name, args)

    op.__name__ = name
    op.__doc__ = getattr(FS, name).__doc__
    return op


for _name in TracingFS.PRIMITIVES:
    setattr(TracingFS, _name, _traced(_name))
