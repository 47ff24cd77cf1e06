"""dropr-angel: keep a command alive: restart with backoff, forward signals, one instance."""

from __future__ import annotations

from typing import Any

from dropr import angel
from dropr.errors import DroprError

from ._common import CONTEXT, DURATION, FILE, SIZE, click, common, main_for, obj


def _backoff(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        return angel.parse_backoff(value)
    except DroprError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# interspersed args off: everything from CMD on belongs to CMD, even without --
@click.command("dropr-angel", context_settings={**CONTEXT, "allow_interspersed_args": False})
@click.option(
    "--lock", type=FILE, metavar="FILE", help="Only one angel per lock file; a second exits 0 at once."
)
@click.option(
    "--backoff",
    metavar="MIN..MAX",
    default="1s..60s",
    show_default=True,
    callback=_backoff,
    help="Delay before a restart: doubles per quick exit, resets after a stable run.",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    metavar="N",
    help="Give up (exit 75) after more than N restarts within --per.",
)
@click.option("--per", type=DURATION, metavar="DUR", help="The window of --max-restarts.")
@click.option(
    "--max-rss",
    type=SIZE,
    metavar="SIZE",
    help="Restart the child when its process group's RSS grows past SIZE.",
)
@click.option("--pidfile", type=FILE, metavar="FILE", help="Write the angel's pid to FILE; removed on exit.")
@click.argument("command", nargs=-1, required=True, metavar="-- CMD [ARG]...")
@common
def cmd(lock: str | None, backoff: tuple[float, float], max_restarts: int | None,
        per: float | None, max_rss: int | None, pidfile: str | None,
        command: tuple[str, ...], **kw: Any) -> int:  # fmt: skip
    """Run CMD and restart it when it dies; forward TERM, INT and HUP to it.

    A restart waits MIN, doubling after each quick exit up to MAX, and never
    comes less than a second after the last start; a run of 10 times the last
    delay (at most 60s) resets it. Exit 0, temporary failures and signals are
    restarted; after exit 64 (usage) or 78 (config) the angel exits with that
    code. TERM or INT stops the child (KILL after 10s) and the angel exits
    with the child's status. --spool and --config are passed on to CMD as
    DROPR_SPOOL and DROPR_CONFIG. Everything runs in the foreground.

    \b
    Examples:
      dropr-angel -- dropr-send
      dropr-angel --max-rss 500MiB -- dropr-send --max-messages 100000
      dropr-angel --max-restarts 5 --per 1m -- dropr-recv --exec ./handle
      # crontab: start the sender unless it runs; else exit 0 at once
      * * * * * dropr-angel --lock ~/.local/state/dropr/send.lock -- dropr-send
    """
    obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-angel")
    opts = angel.Options(
        backoff_min=backoff[0],
        backoff_max=backoff[1],
        max_restarts=max_restarts,
        per=per,
        max_rss=max_rss,
        lock=lock,
        pidfile=pidfile,
        spool=kw["spool"],
        config=kw["config_file"],
    )
    return angel.supervise(command, opts)


main = main_for(cmd)
