"""dropr-put's work: read payloads, commit them durably, print ids as they become durable."""

from __future__ import annotations

import os
import sys
import time

from .config import Config, Peer, check_priority
from .errors import DataError, NoInputError, TempFailError, UsageError
from .message import key_hash
from .spool import Spool

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    import threading
    from typing import IO, Any

    from .spool import PutBatch

GROUP_WINDOW = 0.05  # a line waits at most this long before its commit starts
GROUP_MAX = 20000  # and at most this many lines share one commit
READ_SIZE = 1 << 16
MAX_KEY = 256  # characters of a --key


class PutOptions:
    """What dropr-put was asked to do."""

    __slots__ = ("to", "channel", "priority", "ttl", "ident", "file", "split", "wait", "timeout", "key")

    def __init__(
        self,
        *,
        to: list[str],
        channel: str = "default",
        priority: int = 5,
        ttl: float = 0,
        ident: str | None = None,
        file: str | None = None,
        split: bytes | None = None,
        wait: bool = False,
        timeout: float | None = None,
        key: str | None = None,
    ) -> None:
        self.to = to
        self.channel = channel
        self.priority = priority
        self.ttl = ttl
        self.ident = ident
        self.file = file
        self.split = split
        self.wait = wait
        self.timeout = timeout
        self.key = key  # a spread group keeps the messages of one key on one member

    def check(self) -> None:
        """Reject what is wrong with the options alone, before any spool is touched."""
        from .message import check_id, check_name

        check_priority(self.priority)
        if self.ident is not None and self.split is not None:
            raise UsageError("--id names one message; it cannot be used with --lines or --null")
        if self.file is not None and self.split is not None:
            raise UsageError("--file is one message; use --lines/--null with stdin instead")
        if self.timeout is not None and not self.wait:
            raise UsageError("--timeout goes with --wait")
        try:
            check_name(self.channel, "a channel")
        except ValueError as exc:
            raise DataError(f"bad channel {self.channel!r}: {exc}") from None
        if self.ident is not None:
            try:
                check_id(self.ident)
            except ValueError as exc:
                raise DataError(f"bad id {self.ident!r}: {exc}") from None
        if self.key is not None and not (0 < len(self.key) <= MAX_KEY and _plain(self.key)):
            raise DataError(
                f"bad --key {self.key[:40]!r}: give 1 to {MAX_KEY} characters of UTF-8, no NUL or line break"
            )


def _plain(text: str) -> bool:
    """Tell whether text is UTF-8 encodable and free of NUL and line breaks."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes of the command line that are no UTF-8
        return False
    return not any(c in text for c in "\0\r\n")


def split_for(lines: bool, null: bool) -> bytes | None:
    """Return the record separator --lines or --null asks for (None: one message)."""
    if lines and null:
        raise UsageError("--lines and --null exclude each other")
    return b"\n" if lines else b"\0" if null else None


def enqueue(opts: PutOptions, spool_dir: str | None, config_file: str | None = None, *,
            quiet: bool = False) -> int:  # fmt: skip
    """Do what dropr-put does: put, print ids, with --wait wait; return the exit status."""
    from .config import default_spool, load

    # Everything that can be refused without a spool is, before it is created: a bad
    # command line leaves no trace.
    opts.check()
    spool_dir = spool_dir or default_spool()
    config = load(spool_dir, config_file)
    peers = resolve(config, opts.to)
    spool = Spool(spool_dir, config)
    ids = run(spool, opts, peers=peers)
    if opts.wait:  # held peers fetch their messages: no dropr-send here moves those
        return wait_for(spool, ids, opts.timeout, quiet=quiet or all(p.hold for p in peers))
    return 0


def resolve(config: Config, targets: list[str]) -> list[Peer]:
    """Resolve --to arguments to distinct peers."""
    if not targets:
        raise UsageError("no destination; give --to PEER (a configured peer name or a URL)")
    peers: dict[str, Peer] = {}
    for t in targets:
        p = config.peer(t)
        peers.setdefault(p.name, p)
    return list(peers.values())


def run(
    spool: Spool, opts: PutOptions, out: IO[str] | None = None, peers: list[Peer] | None = None
) -> list[str]:
    """Put messages as opts says (to peers, if already resolved), print each id once durable."""
    out = out or sys.stdout
    opts.check()
    if peers is None:
        peers = resolve(spool.config, opts.to)
    fd = -1 if opts.file is None else _open_input(opts.file)  # before the outbox of a new peer
    try:
        key = None if opts.key is None else key_hash(opts.key)
        batch = spool.batch(peers, channel=opts.channel, priority=opts.priority, ttl=opts.ttl, key=key)
        limit = spool.config.max_message_size
        _check_quota(spool)
        if opts.split is not None:
            return _put_split(batch, opts.split, limit, out)
        batch.add_stream(sys.stdin.buffer.fileno() if fd < 0 else fd, opts.ident, limit)
    finally:
        if fd >= 0:
            os.close(fd)
    ids = batch.commit()
    for i in ids:
        out.write(i + "\n")
    out.flush()
    return ids


def _open_input(path: str) -> int:
    """Open --file for reading; a missing file or a directory is a one-line error (66)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NoInputError(f"cannot read --file {path}: {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise NoInputError(f"cannot read --file {path}: it is a directory; give a file")
    return fd


def _check_quota(spool: Spool) -> None:
    quota = spool.config.quota
    if not quota:
        return
    used = spool.usage.used()  # a running total, not a scan (spool/usage.py)
    if used >= quota:
        raise TempFailError(
            f"spool {spool.root} is over its quota ({used} of {quota} bytes); "
            "wait for deliveries or raise limits.quota"
        )


def _put_split(batch: PutBatch, sep: bytes, limit: int, out: IO[str]) -> list[str]:
    """Put every sep-terminated record of stdin; commit at least every GROUP_WINDOW."""
    committer = _Committer(batch, out)
    try:
        _read_records(batch, sep, limit, committer)
        committer.commit()
        committer.finish()
    except BaseException:
        try:
            committer.finish()  # what was committed is printed; the error after it
        finally:
            batch.abort()
        raise
    return committer.ids


def _read_records(batch: PutBatch, sep: bytes, limit: int, committer: _Committer) -> None:
    """Add stdin's records to batch; commit when the oldest waited GROUP_WINDOW or GROUP_MAX wait."""
    import select

    fd = sys.stdin.buffer.fileno()
    rest = b""
    first = 0.0  # when the oldest uncommitted record arrived
    while True:
        if len(batch):
            left = GROUP_WINDOW - (time.monotonic() - first)
            if left <= 0 or len(batch) >= GROUP_MAX or not select.select([fd], [], [], left)[0]:
                committer.commit()
                first = 0.0
                continue
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            break
        records = (rest + chunk).split(sep)
        rest = records.pop()
        if limit and len(rest) > limit:
            raise DataError(f"a record is larger than the limit of {limit} bytes")
        if records and not len(batch):
            first = time.monotonic()
        for rec in records:
            if limit and len(rec) > limit:
                raise DataError(f"a record is larger than the limit of {limit} bytes")
            batch.add(rec)
    if rest:
        batch.add(rest)


class _Committer:
    """Commits a batch's records on a thread, one commit at a time.

    While one commit syncs and renames, the next records are read and written to
    tmp/. The thread prints a commit's ids as soon as it is durable, so ids come out
    in order, each only after its commit; an error is raised in the main thread.
    """

    def __init__(self, batch: PutBatch, out: IO[str]) -> None:
        self.batch = batch
        self.out = out
        self.ids: list[str] = []
        self.worker: threading.Thread | None = None
        self.failed: list[BaseException] = []

    def finish(self) -> None:
        """Wait for the running commit; raise what it failed with."""
        if self.worker is None:
            return
        self.worker.join()
        self.worker = None
        if self.failed:
            raise self.failed.pop()

    def commit(self) -> None:
        """Start committing what the batch holds, once the previous commit is done."""
        import threading

        taken = self.batch.take()
        self.finish()
        self.worker = threading.Thread(target=self._job, args=(taken,), name="dropr-put-commit")
        self.worker.start()

    def _job(self, taken: Any) -> None:
        try:
            done = self.batch.commit(taken)
            if done:
                self.out.write("\n".join(done) + "\n")
                self.out.flush()
                self.ids.extend(done)
        except BaseException as exc:  # handed to the main thread by finish()
            self.failed.append(exc)


def wait_for(
    spool: Spool, ids: list[str], timeout: float | None, err: IO[str] | None = None, quiet: bool = False
) -> int:
    """Block until every destination of ids reports processed (0), dead (1) or timeout (75).

    No timeout waits for ever; a timeout of 0 looks once (it waited for ever too)."""
    from .errors import EX_NOTFOUND, EX_OK, EX_TEMPFAIL

    err = err or sys.stderr
    if not sender_running(spool) and not quiet:
        err.write("dropr-put: warning: no dropr-send is running for this spool; nothing will move\n")
        err.flush()
    deadline = None if timeout is None else time.monotonic() + timeout
    with spool.wakeups.putter() as w:
        while True:
            states = [s for i in ids for (_, s, _) in spool.find_out(i)]
            if "dead" in states:
                return EX_NOTFOUND
            if states and all(s == "processed" for s in states):
                return EX_OK
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return EX_TEMPFAIL
            w.wait(min(left, 1.0) if left is not None else 1.0)


def sender_running(spool: Spool) -> bool:
    """Tell whether a dropr-send holds this spool's wake-up socket."""
    return spool.wakeups.sender_running()
