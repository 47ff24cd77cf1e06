"""A recording, fault-injecting FS for tests (see _fs): the spool's I/O as a list of steps.

Not imported by the commands: only a test installs it, ``Spool(root, fs=TracingFS())``.
Besides the names in ``ops``, each operation that succeeded is kept in ``events`` with
what a crash-state explorer needs to replay it (tests/crash_explorer.py): the
descriptor, the offset and bytes of a write, the flags of a create, the times of a
utime, and when it ran.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._fs import FS, PRIVATE_MODES


@dataclass
class Event:
    """One operation that succeeded: its name, path(s), and what replaying it takes."""

    name: str
    paths: tuple[str, ...]
    fd: int = -1  # the descriptor operated on, or made by create and open_sync
    offset: int = 0  # of a write or pwrite
    data: bytes = b""  # what a write or pwrite wrote
    flags: int = 0  # of a create
    times: tuple[float, float] | None = None  # of a utime (None: now)
    at: float = 0.0  # wall time when it ran


class TracingFS(FS):
    """An FS that records every primitive as (name, path or paths) in ``ops`` and calls
    ``hook(name, args)`` first, which may raise to inject a fault. A descriptor's
    operations (write, fsync, close) record the path it was opened on."""

    PRIMITIVES = (
        "create", "open_sync", "close", "write", "pwrite", "fsync", "fdatasync", "syncfs",
        "fsync_dir", "rename", "link", "unlink", "mkdir", "give_to_group", "symlink", "utime", "set_sum",
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
        self.events: list[Event] = []

    def _do(self, name: str, args: tuple[Any, ...]) -> Any:
        if name in _FD_OPS or (name == "set_sum" and isinstance(args[0], int)):
            self.ops.append((name, self.fds.get(args[0], f"fd{args[0]}")))
        elif name in ("rename", "link", "symlink", "give_to_group"):
            self.ops.append((name, str(args[0]), str(args[1])))
        else:
            self.ops.append((name, str(args[0])))
        if self.hook is not None:
            self.hook(name, args)
        offset = os.lseek(args[0], 0, os.SEEK_CUR) if name == "write" else 0
        result = getattr(FS, name)(self, *args)
        self.events.append(_event(name, args, result, offset))
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


def _event(name: str, args: tuple[Any, ...], result: Any, offset: int) -> Event:
    """Describe an operation that returned result (offset: where a write started)."""
    now = time.time()
    if name in ("create", "open_sync"):
        flags = args[1] if len(args) > 1 else (os.O_EXCL if name == "create" else os.O_RDONLY)
        return Event(name, (str(args[0]),), fd=result, flags=flags, at=now)
    if name == "write":
        return Event(name, (), fd=args[0], offset=offset, data=bytes(args[1][:result]), at=now)
    if name == "pwrite":
        return Event(name, (), fd=args[0], offset=args[2], data=bytes(args[1][:result]), at=now)
    if name in _FD_OPS or (name == "set_sum" and isinstance(args[0], int)):
        return Event(name, (), fd=args[0], at=now)
    if name == "utime":
        times = args[1] if len(args) > 1 else None
        return Event(name, (str(args[0]),), times=times, at=now)
    if name in ("rename", "link", "symlink", "give_to_group"):
        return Event(name, (str(args[0]), str(args[1])), at=now)
    return Event(name, (str(args[0]),), at=now)


def _traced(name: str) -> Callable[..., Any]:
    def op(self: TracingFS, *args: Any) -> Any:
        return self._do(name, args)

    op.__name__ = name
    op.__doc__ = getattr(FS, name).__doc__
    return op


for _name in TracingFS.PRIMITIVES:
    setattr(TracingFS, _name, _traced(_name))
