"""Errors: every DroprError carries its sysexits code and whether it is temporary.

Exceptions become exit codes in exactly one place, the shared command class in
``dropr_cli._common`` (and the fast path of ``dropr-put``).
"""

from __future__ import annotations

EX_OK = 0
EX_NOTFOUND = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78


class DroprError(Exception):
    """Root of every error dropr reports to a user."""

    code = EX_IOERR
    temporary = False


class NotFoundError(DroprError):
    """The thing asked for is not there (nothing ready, unknown id, not claimed)."""

    code = EX_NOTFOUND


class UsageError(DroprError):
    """The command line is wrong."""

    code = EX_USAGE


class DataError(DroprError):
    """Input data is malformed: a bad name, id, duration or payload."""

    code = EX_DATAERR


class NoInputError(DroprError):
    """An input file is missing or unreadable."""

    code = EX_NOINPUT


class UnavailableError(DroprError):
    """A peer is unknown or refused for good."""

    code = EX_UNAVAILABLE


class CantCreateError(DroprError):
    """The spool cannot be created or written."""

    code = EX_CANTCREAT


class SpoolIOError(DroprError):
    """An I/O error on the spool."""

    code = EX_IOERR


class TempFailError(DroprError):
    """A temporary failure: disk full, quota, timeout, deferred; try again later."""

    code = EX_TEMPFAIL
    temporary = True


class ConfigError(DroprError):
    """The configuration is unreadable or invalid."""

    code = EX_CONFIG


class LockedError(TempFailError):
    """Another process holds the lock this one needs."""


def disk_full(exc: BaseException) -> bool:
    """Return whether exc says the spool's filesystem is out of space or quota."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def from_oserror(exc: OSError, what: str) -> DroprError:
    """Map an OSError on the spool to the DroprError a user should see."""
    import errno

    why = exc.strerror or str(exc)
    if disk_full(exc):
        return TempFailError(f"{what}: {why}; free space on the spool's filesystem and retry")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST):
        return CantCreateError(f"{what}: {why}; check the spool's permissions or use --spool")
    return SpoolIOError(f"{what}: {why}")
