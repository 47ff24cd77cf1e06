"""dropr-serve: the HTTP(S) endpoint peers deliver to; writes into the local inbox."""

from __future__ import annotations

from typing import Any

from dropr import privacy
from dropr.serving import MAX_PER_ADDRESS, ServeOptions, serve

from ._common import CONTEXT, DURATION, FILE, SIZE, Option, click, common, main_for, obj


@click.command("dropr-serve", context_settings=CONTEXT)
@click.option(
    "--listen",
    cls=Option,
    multiple=True,
    metavar="HOST:PORT",
    show_default="serve.listen of the config, else 127.0.0.1:8080",
    help="Address to listen on; repeatable. Port 0 picks a free port (logged).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    metavar="N",
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    metavar="N",
    default=4,
    show_default=True,
    help="Threads per worker (concurrent uploads).",
)
@click.option(
    "--certfile", type=FILE, metavar="FILE", help="TLS certificate (PEM); with --keyfile serves HTTPS."
)
@click.option("--keyfile", type=FILE, metavar="FILE", help="TLS private key (PEM).")
@click.option(
    "--max-size",
    cls=Option,
    type=SIZE,
    default=None,
    show_default="limits.max_message_size of the config, else 1GiB",
    help="Largest message accepted.",
)
@click.option(
    "--read-timeout",
    type=DURATION,
    default="60s",
    show_default=True,
    help="Drop a request that stalls this long, or whose headers take longer (nothing stored); 0: never.",
)
@click.option(
    "--max-per-address",
    type=click.IntRange(0, 1 << 20),
    default=MAX_PER_ADDRESS,
    show_default=True,
    metavar="N",
    help="Connections one client address may hold open in each worker; more are refused (503). 0: no cap.",
)
@click.option(
    "--insecure", is_flag=True, help="Allow a non-loopback address without serve.tokens (anyone may deliver)."
)
@common
def cmd(listen: tuple[str, ...], workers: int, threads: int, certfile: str | None, keyfile: str | None,
        max_size: int | None, read_timeout: float, max_per_address: int, insecure: bool,
        **kw: Any) -> int:  # fmt: skip
    """Receive messages from peers over HTTP(S) and store them in the inbox.

    Runs an embedded gunicorn in the foreground; TERM stops it gracefully.
    Clients authenticate with bearer tokens from serve.tokens in the config
    (token = client node name); a client may deliver only as itself. Without
    tokens it listens on loopback only, unless --insecure.

    \b
    Examples:
      dropr-serve                                  # 127.0.0.1:8080
      dropr-serve --listen 0.0.0.0:8443 --certfile cert.pem --keyfile key.pem
      dropr-serve --listen 127.0.0.1:0 -v          # a free port, logged on stderr
    """
    o = obj(kw["spool"], kw["config_file"], kw["verbose"], kw["quiet"], "dropr-serve")
    spool = o.spool()
    privacy.warn(spool.root, spool.config, "dropr-serve")  # once, at start
    opts = ServeOptions(
        listen=list(listen),
        workers=workers,
        threads=threads,
        certfile=certfile,
        keyfile=keyfile,
        insecure=insecure,
        verbose=o.verbose - o.quiet,
        read_timeout=read_timeout,
        max_size=max_size,
        max_per_address=max_per_address,
    )
    opts.settle(spool)
    return serve(spool, opts)


main = main_for(cmd)
