"""dropr-recv: claim messages from the local inbox, or run a handler per message."""

from __future__ import annotations

from typing import Any

from dropr.consume import HandlerOptions, Handlers, RecvOptions, recv
from dropr.errors import UsageError

from ._common import CONTEXT, DURATION, check_name, click, common, main_for, obj


@click.command("dropr-recv", context_settings=CONTEXT)
@click.option("--channel", default="default", show_default=True, help="Inbox channel to consume.")
@click.option("-n", "n", type=click.IntRange(1), default=None, help="Claim up to N messages [1].")
@click.option("--all", "take_all", is_flag=True, help="Claim every ready message.")
@click.option("--wait", is_flag=True, help="Block until a message arrives (exit 75 on --timeout).")
@click.option(
    "--timeout",
    type=DURATION,
    default=None,
    help="With --wait: give up after DUR. With --exec: kill a handler running longer.",
)
@click.option(
    "--lease",
    type=DURATION,
    default="5m",
    show_default=True,
    help="How long a claim holds before the message is ready again.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["path", "json", "raw"]),
    default="path",
    show_default=True,
    help="path: ID<TAB>PATH; json: one object per line; raw: the payload of one message.",
)
@click.option("--ack", is_flag=True, help="Acknowledge right after output (at-most-once).")
@click.option(
    "--exec", "command", metavar="CMD", help="Handler mode: run sh -c CMD per message, payload on stdin."
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="With --exec: handlers at once.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="With --exec: failed attempts before dead (0: never).",
)
@click.option("--once", is_flag=True, help="With --exec: drain what is ready, then exit.")
@common
def cmd(channel: str, n: int | None, take_all: bool, wait: bool, timeout: float | None, lease: float,
        fmt: str, ack: bool, command: str | None, jobs: int, max_attempts: int, once: bool,
        **kw: Any) -> int:  # fmt: skip
    """Claim messages from the inbox, or run a handler for each.

    A claim is a lease: not acknowledged (dropr-ack) in time, the message is
    ready again. Concurrent consumers never get the same message while a
    lease holds. Highest priority first, then arrival. Exit 1 if nothing is
    ready.

    With --exec, the handler gets the payload on stdin and DROPR_ID,
    DROPR_CHANNEL, DROPR_ORIGIN, DROPR_PRIORITY, DROPR_ATTEMPT, DROPR_PATH in
    its environment. Exit 0 acks; 75 releases for a later retry; anything else,
    or running past --timeout, is a failed attempt retried with backoff, and
    after --max-attempts the message is dead. The lease is renewed while the
    handler runs.

    \b
    Examples:
      dropr-recv                                    # ID<TAB>PATH of one message
      dropr-recv -n 100 | while IFS=$'\\t' read id path; do ...; done
      dropr-recv -n 500 | cut -f1 | dropr-ack -
      dropr-recv --wait --timeout 30s --format raw --ack
      dropr-recv --exec 'psql -f -' --jobs 4 --timeout 2m
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-recv")
    check_name(channel, "channel")
    spool = o.spool()
    if command is not None:
        if n or take_all or wait or ack or fmt != "path":
            raise UsageError("--exec runs handlers; -n, --all, --wait, --ack and --format do not apply")
        opts = HandlerOptions(command=command, channel=channel, jobs=jobs, timeout=timeout or 0,
                              max_attempts=max_attempts, once=once, lease=lease)  # fmt: skip
        return Handlers(spool, opts).run()
    if once or jobs != 1:
        raise UsageError("--once and --jobs go with --exec")
    if n and take_all:
        raise UsageError("-n and --all exclude each other")
    if timeout is not None and not wait:
        raise UsageError("--timeout without --exec goes with --wait")
    ropts = RecvOptions(channel=channel, n=10**9 if take_all else n or 1, wait=wait, timeout=timeout or 0,
                        lease=lease, fmt=fmt, ack=ack)  # fmt: skip
    return recv(spool, ropts)


main = main_for(cmd)
