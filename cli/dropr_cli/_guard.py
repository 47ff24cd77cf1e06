"""Turn exceptions into one stderr line and a sysexits code; free of click for speed.

This is the one place exceptions become exit codes: the click command class in
``_common`` and the fast path of ``dropr-put`` both call ``guard``.
"""

from __future__ import annotations

import os
import sys

from dropr import __version__ as VERSION  # one version, in the library
from dropr.errors import EX_IOERR, EX_USAGE, DroprError

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Callable


LINE_MAX = 400  # characters of an error line; a 10,000-character name was echoed whole


def one_line(text: str) -> str:
    """Return text as one line of sane length: control characters escaped (a name with a
    line break in it split the error in two), the middle of a very long one left out."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > LINE_MAX:
        text = f"{text[: LINE_MAX - 120]} [...] {text[-100:]}"
    return text


def say_error(prog: str, text: str) -> None:
    """Print one error line on stderr."""
    sys.stderr.write(f"{prog}: error: {one_line(text)}\n")
    sys.stderr.flush()


def guard(prog: str, fn: Callable[[], int | None], verbose: bool = False) -> int:
    """Run fn; map DroprError and OS errors to their exit code and a one-line message."""
    try:
        return fn() or 0
    except DroprError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        say_error(prog, str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (dropr-ls -l | head): end quietly by SIGPIPE, as cat does,
        # so shells see the usual status 141. Claims already made stay leased.
        import signal

        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
        return EX_IOERR
    except OSError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        name = f" {exc.filename}" if exc.filename else ""
        say_error(prog, f"I/O error{name}: {exc.strerror or exc}")
        return EX_IOERR


def setup_logging(prog: str, verbose: int, quiet: int) -> None:
    """Log to stderr, one line per event, no timestamps (the supervisor adds them)."""
    import logging

    # the man pages' -q: once, warnings (deferred, dead) and errors; twice, errors only
    level = logging.INFO - 10 * verbose + 10 * quiet
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
    root = logging.getLogger("dropr")
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, level))
    root.propagate = False


__all__ = ["guard", "say_error", "setup_logging", "EX_USAGE", "VERSION"]
