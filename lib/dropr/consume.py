"""The consumer's side: claim and print (dropr-recv), run handlers (--exec), finish (dropr-ack)."""

from __future__ import annotations

import os
import sys
import time

from . import log as _log
from .errors import EX_NOTFOUND, EX_OK, EX_TEMPFAIL, UsageError, disk_full
from .message import parse_in_name
from .retry import HANDLER_RETRY, OUT_OF_ATTEMPTS, backoff
from .spool import Claim, Spool

TYPE_CHECKING = False  # typing and collections cost milliseconds per start; mypy reads True
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterable, Iterator
    from typing import IO, Any

# dropr-recv and dropr-ack start often (shell loops): json, subprocess, select and
# logging are imported where they are used, not here.
log = _log.get(__name__)

SWEEP_EVERY = 1.0  # waiting consumers look for expired leases and due retries this often
KILL_GRACE = 5.0  # seconds between TERM and KILL for a handler past its --timeout
FAST_HANDLER = 0.05  # seconds: handlers quicker than this on average get their claims made ahead
RETRY_BASE = 1.0
RETRY_MAX = 300.0
EMIT_EVERY = 64  # dropr-recv writes its lines in groups of this many
FOLLOW_N = 100  # --follow claims this many at a time unless -n says otherwise
FORMATS = ("path", "json", "raw")
MIN_LEASE = 1.0  # seconds: a shorter lease may end before the claimer has printed the
# message, and then another consumer gets it too


class RecvOptions:
    """What dropr-recv was asked to claim and how to print it."""

    __slots__ = ("channel", "n", "wait", "timeout", "lease", "fmt", "ack")

    def __init__(
        self,
        *,
        channel: str = "default",
        n: int = 1,
        wait: bool = False,
        timeout: float | None = None,
        lease: float = 300,
        fmt: str = "path",
        ack: bool = False,
    ) -> None:
        self.channel = channel
        self.n = n
        self.wait = wait
        self.timeout = timeout
        self.lease = lease
        self.fmt = fmt
        self.ack = ack


class RecvRequest:
    """Everything dropr-recv was given; check() holds the rules between its options.

    None stands for an option not given. run() starts the mode they ask for: handlers
    (--exec), --follow, or one claim.
    """

    __slots__ = ("channel", "n", "take_all", "wait", "follow", "timeout", "lease", "fmt", "ack",
                 "command", "jobs", "max_attempts", "once")  # fmt: skip

    def __init__(
        self,
        *,
        channel: str = "default",
        n: int | None = None,
        take_all: bool = False,
        wait: bool = False,
        follow: bool = False,
        timeout: float | None = None,
        lease: float = 300,
        fmt: str = "path",
        ack: bool = False,
        command: str | None = None,
        jobs: int | None = None,
        max_attempts: int | None = None,
        once: bool = False,
    ) -> None:
        self.channel = channel
        self.n = n
        self.take_all = take_all
        self.wait = wait
        self.follow = follow
        self.timeout = timeout
        self.lease = lease
        self.fmt = fmt
        self.ack = ack
        self.command = command
        self.jobs = jobs
        self.max_attempts = max_attempts
        self.once = once

    def check(self) -> None:
        """Reject what is wrong with the options alone, before any spool is touched."""
        if self.fmt not in FORMATS:
            raise UsageError(f"bad --format {self.fmt!r}: use path, json or raw")
        _check_channel(self.channel)
        if not self.lease >= MIN_LEASE:  # not <: NaN too
            raise UsageError(f"bad --lease {f'{self.lease:g}s'!r}: must be at least {MIN_LEASE:g}s")
        if self.command is not None:
            self._check_exec()
        else:
            self._check_claim()

    def _check_exec(self) -> None:
        assert self.command is not None
        if not self.command.strip():
            raise UsageError("--exec needs a command; an empty one would ack every message unread")
        if self.n or self.take_all or self.wait or self.ack or self.follow or self.fmt != "path":
            raise UsageError(
                "--exec runs handlers; -n, --all, --wait, --follow, --ack and --format do not apply"
            )

    def _check_claim(self) -> None:
        if self.once or self.jobs is not None or self.max_attempts is not None:
            raise UsageError("--once, --jobs and --max-attempts go with --exec")
        if self.n and self.take_all:
            raise UsageError("-n and --all exclude each other")
        if self.follow and (self.take_all or self.wait or self.timeout is not None or self.fmt == "raw"):
            raise UsageError(
                "--follow runs until stopped; --all, --wait, --timeout and --format raw do not apply"
            )
        if self.timeout is not None and not self.wait:
            raise UsageError("--timeout without --exec goes with --wait")

    def run(self, spool: Spool) -> int:
        """Run handlers, --follow or one claim, as the (checked) options say; return the exit status."""
        if self.command is not None:
            return Handlers(spool, self.handler_options()).run()
        if self.follow:
            return follow(spool, self.recv_options())
        return recv(spool, self.recv_options())

    def handler_options(self) -> HandlerOptions:
        """Return the options of --exec's handlers."""
        assert self.command is not None
        return HandlerOptions(
            command=self.command,
            channel=self.channel,
            jobs=1 if self.jobs is None else self.jobs,
            timeout=self.timeout or 0,
            max_attempts=5 if self.max_attempts is None else self.max_attempts,
            once=self.once,
            lease=self.lease,
        )

    def recv_options(self) -> RecvOptions:
        """Return the options of a claim, or of --follow's claims."""
        if self.follow:
            n = self.n or FOLLOW_N
            return RecvOptions(
                channel=self.channel, n=n, wait=True, lease=self.lease, fmt=self.fmt, ack=self.ack
            )
        n = 10**9 if self.take_all else self.n or 1
        return RecvOptions(channel=self.channel, n=n, wait=self.wait, timeout=self.timeout,
                           lease=self.lease, fmt=self.fmt, ack=self.ack)  # fmt: skip


def _check_channel(channel: str) -> None:
    """Reject a channel name that could leave the spool (exit 65)."""
    from .errors import DataError
    from .message import check_name

    try:
        check_name(channel, "channel")
    except ValueError as exc:
        raise DataError(f"bad channel {channel!r}: {exc}") from None


def claim_wait(
    spool: Spool,
    channel: str,
    n: int,
    lease: float,
    wait: bool,
    timeout: float | None,
    each: Callable[[Claim], None] | None = None,
) -> list[Claim]:
    """Claim up to n messages; with wait, block (woken by arrivals) until some come or the
    timeout (None: for ever; 0: give up at once) passes."""
    got = spool.claim(channel, n, lease, each=each)
    if got or not wait or timeout is not None and timeout <= 0:
        return got
    deadline = None if timeout is None else time.monotonic() + timeout
    with spool.wakeups.consumer(channel) as w:
        while True:
            got = spool.claim(channel, n, lease, each=each)  # again: an arrival may predate the socket
            if got:
                return got
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            w.wait(SWEEP_EVERY if left is None else min(left, SWEEP_EVERY))


def recv(spool: Spool, opts: RecvOptions, out: IO[bytes] | None = None) -> int:
    """Claim messages and print them; exit 1 if nothing is ready, 75 on a --wait timeout."""
    out = out or sys.stdout.buffer
    if opts.fmt == "raw" and opts.n != 1:
        raise UsageError("--format raw prints one payload; drop -n/--all")
    lines = _Lines(out, opts.fmt)
    raw = opts.fmt == "raw"
    try:
        claims = claim_wait(
            spool, opts.channel, opts.n, opts.lease, opts.wait, opts.timeout, None if raw else lines.add
        )
    finally:
        lines.flush()  # what was claimed before an error is printed: nobody else may get it
    if not claims:
        if opts.wait:
            return EX_TEMPFAIL
        return EX_NOTFOUND
    if raw:
        with open(claims[0].path, "rb") as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
        out.flush()
    lines.flush()
    if opts.ack:
        for c in claims:
            spool.finish(c.channel, c.name, "ack")
    return EX_OK


class _Lines:
    """dropr-recv's output lines, written in groups as claims are made.

    A dropr-ack reading the pipe finishes the first ones while the rest are being
    claimed; groups, not single lines, even when stdout is unbuffered (PYTHONUNBUFFERED).
    """

    def __init__(self, out: IO[bytes], fmt: str) -> None:
        self.out = out
        self.json = fmt == "json"
        self.pending: list[bytes] = []

    def add(self, c: Claim) -> None:
        """Queue the line of one claim; write the group when it is full."""
        if self.json:
            import json

            self.pending.append(json.dumps(c.info()).encode() + b"\n")
        else:
            self.pending.append(f"{c.ident}\t{c.path}\n".encode())
        if len(self.pending) >= EMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write what is queued."""
        if self.pending:
            self.out.write(b"".join(self.pending))
            self.out.flush()
            self.pending.clear()


def follow(spool: Spool, opts: RecvOptions, out: IO[bytes] | None = None) -> int:
    """Claim and print messages as they arrive until TERM or INT (dropr-recv --follow).

    Claims up to opts.n at a time and writes their lines at once; a reader that falls
    behind blocks the writes, and with them the claiming (the pipe is the flow control).
    Messages printed but not yet acknowledged when this stops stay claimed until their
    lease ends, then they are ready again.
    """
    import signal

    out = out or sys.stdout.buffer
    stop: list[int] = []
    idle = [False]  # True only while waiting for arrivals: a signal may end the wait at once

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)
        if idle[0]:
            raise _Stop

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    lines = _Lines(out, opts.fmt)

    with spool.wakeups.consumer(opts.channel) as w:
        while not stop:
            got = spool.claim(opts.channel, opts.n, opts.lease, keep=True, each=lines.add)
            lines.flush()
            if opts.ack:
                for c in got:
                    spool.finish(c.channel, c.name, "ack")
            if got or stop:
                continue
            idle[0] = True
            try:
                woken = w.wait(SWEEP_EVERY)
            except _Stop:
                break
            finally:
                idle[0] = False
            if woken:
                spool.forget_ready(opts.channel)  # an arrival: list again
    return EX_OK


class _Stop(Exception):
    """Raised by --follow's signal handler to end an idle wait."""


class IdReader:
    """Ids read from a descriptor as they come, one per line (ID<TAB>PATH lines too).

    ``on_idle``, when set, runs before every read that would block: dropr-ack makes its
    acks durable there, so a long pipeline commits in groups, never leaving one waiting.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        try:
            self.fd = stream.fileno()
        except (OSError, ValueError):  # not a real file (a test's stdin): lines as it gives them
            self.fd = -1
        self.on_idle: Callable[[], None] | None = None
        self._ids = self._read()
        self._back: list[str] = []

    def __iter__(self) -> IdReader:
        return self

    def __next__(self) -> str:
        return self._back.pop() if self._back else next(self._ids)

    def push_back(self, ident: str) -> None:
        """Make ident the next id again (after a look at the first)."""
        self._back.append(ident)

    def _read(self) -> Iterator[str]:
        import select

        if self.fd < 0:
            for text in self.stream:
                if name := text.split("\t", 1)[0].strip():
                    yield name
            return
        rest = b""
        while True:
            if self.on_idle is not None and not select.select([self.fd], [], [], 0)[0]:
                self.on_idle()
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                ident = line.split(b"\t", 1)[0].strip()
                if ident:
                    yield ident.decode("utf-8", "replace")
        ident = rest.split(b"\t", 1)[0].strip()
        if ident:
            yield ident.decode("utf-8", "replace")


class AckRequest:
    """What dropr-ack was given: ids (or "-": read them from stdin) and how to finish them,
    or, with requeue, which dead messages to put back into the flow.

    None stands for an option not given; check() holds the rules between the options.
    """

    __slots__ = (
        *("ids", "release", "reject", "delay", "reason"),
        *("requeue", "out", "all_dead", "channel", "peer"),
    )

    def __init__(
        self,
        *,
        ids: list[str],
        release: bool = False,
        reject: bool = False,
        delay: float | None = None,
        reason: str | None = None,
        requeue: bool = False,
        out: bool = False,
        all_dead: bool = False,
        channel: str | None = None,
        peer: str | None = None,
    ) -> None:
        self.ids = ids
        self.release = release
        self.reject = reject
        self.delay = delay
        self.reason = reason
        self.requeue = requeue
        self.out = out
        self.all_dead = all_dead
        self.channel = channel
        self.peer = peer

    def check(self) -> None:
        """Reject what is wrong with the options and ids alone, before any spool is touched."""
        if self.requeue:
            self._check_requeue()
        elif self.out or self.all_dead or self.channel is not None or self.peer is not None:
            raise UsageError("--out, --all, --channel and --peer go with --requeue")
        if self.release and self.reject:
            raise UsageError("--release and --reject exclude each other")
        if self.delay is not None and not self.release:
            raise UsageError("--delay goes with --release")
        if self.reason is not None and not self.reject:
            raise UsageError("--reason goes with --reject")
        if self.all_dead:
            return
        if not self.ids:
            raise UsageError("no ids; give ID... or - to read them from stdin")
        if "-" in self.ids and self.ids != ["-"]:
            raise UsageError("give ids as arguments or - to read them from stdin, not both")
        if not all(i.strip() for i in self.ids):
            raise UsageError("an empty id; give ID... or - to read them from stdin")

    def _check_requeue(self) -> None:
        from .message import check_name

        if self.release or self.reject or self.delay is not None or self.reason is not None:
            raise UsageError("--requeue goes alone: not with --release, --reject, --delay or --reason")
        if self.channel is not None and (self.out or self.peer is not None):
            raise UsageError("--channel picks an inbox channel, --out and --peer the outbox: give one")
        if self.all_dead and self.ids:
            raise UsageError("--all requeues every dead message there; give no ids with it")
        if self.channel is not None:
            _check_channel(self.channel)
        if self.peer is not None:
            from .errors import DataError

            try:
                check_name(self.peer, "peer")
            except ValueError as exc:
                raise DataError(f"bad peer {self.peer!r}: {exc}") from None

    @property
    def how(self) -> str:
        """Return the spool's word for the finish asked for: ack, release or reject."""
        return "release" if self.release else "reject" if self.reject else "ack"

    def run(self, open_spool: Callable[[], Spool], stdin: IO[str]) -> int:
        """Finish the ids (from stdin for "-"), opening the spool only if there are any; 0 or 1."""
        todo: Iterable[str] = self.ids
        if self.ids == ["-"]:
            reader = IdReader(stdin)
            first = next(reader, None)
            if first is None:
                # nothing to finish, as dropr-recv exits 1 when nothing is ready: so a
                # `while dropr-recv | dropr-ack -` loop ends once the inbox is empty
                return EX_NOTFOUND
            reader.push_back(first)
            todo = reader
        if self.requeue:
            from .requeue import requeue

            return requeue(open_spool(), None if self.all_dead else todo, out=self.out, channel=self.channel,
                           peer=self.peer)  # fmt: skip
        return ack(open_spool(), todo, self.how, reason=self.reason or "", delay=self.delay or 0)


def ack(spool: Spool, ids: Iterable[str], how: str, *, reason: str = "", delay: float = 0,
        err: IO[str] | None = None) -> int:  # fmt: skip
    """Finish claimed messages by id; report each id that is not claimed; 0 or 1."""
    err = err or sys.stderr
    unsynced: set[str] = set()

    def sync() -> None:  # release and reject sync their own records; acks are synced here
        for ch in unsynced:
            spool.sync(dirs=[spool.path("in", ch, "done")])
        unsynced.clear()

    if isinstance(ids, IdReader):
        ids.on_idle = sync
    stamp = _claimed_stamp(spool)
    index = spool.claimed_index()
    failed = 0
    for ident in ids:
        ident = ident.strip().split("\t", 1)[0]
        if not ident:
            continue
        hits = index.get(ident, [])
        shown = ident if ident.isprintable() and len(ident) <= 200 else repr(ident[:200])  # one line
        if not hits and _claimed_stamp(spool) != stamp:
            # claimed since the listing (a dropr-recv still writing into our stdin)
            stamp = _claimed_stamp(spool)
            index = spool.claimed_index()
            hits = index.get(ident, [])
        if not hits:
            err.write(
                f"dropr-ack: error: {shown} is not claimed (lease lost, already finished, or unknown)\n"
            )
            failed += 1
            continue
        channel, name = hits[0]
        if len(hits) > 1:
            err.write(f"dropr-ack: error: {shown} is claimed from several origins; give ORIGIN,ID\n")
            failed += 1
            continue
        if not spool.finish(channel, name, how, reason=reason, delay=delay):
            err.write(f"dropr-ack: error: {shown} is no longer claimed (its lease expired)\n")
            failed += 1
            continue
        if how == "ack":
            unsynced.add(channel)
        _, _, origin, bare = parse_in_name(name)
        index.pop(bare, None)  # finished: the same id again is "not claimed"
        index.pop(f"{origin},{bare}", None)
    err.flush()
    sync()
    return EX_NOTFOUND if failed else EX_OK


class HandlerOptions:
    """How dropr-recv --exec runs handlers."""

    __slots__ = ("command", "channel", "jobs", "timeout", "max_attempts", "once", "lease")

    def __init__(
        self,
        *,
        command: str,
        channel: str = "default",
        jobs: int = 1,
        timeout: float = 0,
        max_attempts: int = 5,
        once: bool = False,
        lease: float = 300,
    ) -> None:
        self.command = command
        self.channel = channel
        self.jobs = jobs
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.once = once
        self.lease = lease


class _Job:
    __slots__ = ("claim", "proc", "pidfd", "started", "renewed", "stderr", "last_line", "killed", "termed")

    def __init__(self, claim: Claim, proc: subprocess.Popen[bytes]) -> None:
        self.claim = claim
        self.proc = proc
        self.pidfd = os.pidfd_open(proc.pid)
        self.started = time.monotonic()
        self.renewed = self.started
        self.stderr = proc.stderr
        self.last_line = b""
        self.killed = ""
        self.termed = 0.0


class Handlers:
    """Run a handler per message, --jobs at once, with lease renewal, timeouts and retries."""

    def __init__(self, spool: Spool, opts: HandlerOptions) -> None:
        self.spool = spool
        self.opts = opts
        self.jobs: dict[int, _Job] = {}
        self.stopping = 0
        self.done = 0
        self.ahead: list[tuple[Claim, float]] = []  # (claim, lease renewed at): a few
        self.mean_run = 0.0  # seconds a handler runs, a moving average

    def _start_jobs(self, free: int) -> bool:
        """Start up to free handlers; return whether there was anything to start.

        A claim call's renames are made durable (Leases.sync_claims) before any of its
        claims ends, here while the first of its handlers runs. While handlers are quick
        (under FAST_HANDLER on average) each call claims jobs more than it starts, so
        that one sync serves several handlers: a sync per handler set the pace."""
        if not self.ahead:
            extra = self.opts.jobs if self.mean_run < FAST_HANDLER else 0
            try:
                claims = self.spool.claim(
                    self.opts.channel, free + extra, self.opts.lease, keep=True, sync=False
                )
            except OSError as exc:  # a full disk: claim again later; a claim it cut ends with its lease
                if not disk_full(exc):  # a full disk: carry on, try again later (#16)
                    raise
                log.error("spool full reason=%s; claiming again in %.0fs", exc, SWEEP_EVERY)
                return False
            if not claims:
                return False
            now = time.monotonic()
            self.ahead = [(c, now) for c in claims]
            self._spawn(self.ahead.pop(0)[0])
            free -= 1
            self.spool.leases.sync_claims(self.opts.channel)  # while that handler runs
        while self.ahead and free:
            c, renewed = self.ahead.pop(0)
            self._spawn(c).renewed = renewed
            free -= 1
        return True

    def _give_back_ahead(self) -> None:
        """Release the claims made ahead that no handler has started (stopping)."""
        while self.ahead:
            c, _ = self.ahead.pop(0)
            c.spool.finish(c.channel, c.name, "release")

    def _spawn(self, c: Claim) -> _Job:
        import subprocess

        info = c.info()
        env = dict(os.environ)
        env.update(
            DROPR_ID=c.ident,
            DROPR_CHANNEL=c.channel,
            DROPR_ORIGIN=c.origin,
            DROPR_PRIORITY=str(c.priority),
            DROPR_ATTEMPT=str(info["attempt"]),
            DROPR_PATH=c.path,
        )
        with open(c.path, "rb") as payload:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.opts.command], stdin=payload, stderr=subprocess.PIPE, env=env,
                close_fds=True, start_new_session=True,  # its own group: a timeout kills it whole
            )  # fmt: skip
        job = _Job(c, proc)
        assert job.stderr is not None
        os.set_blocking(job.stderr.fileno(), False)
        self.jobs[job.pidfd] = job
        log.debug("started id=%s pid=%d attempt=%s", c.ident, proc.pid, info["attempt"])
        return job

    def _finish(self, job: _Job) -> None:
        self._drain(job)
        self.mean_run += (time.monotonic() - job.started - self.mean_run) / 8
        os.close(job.pidfd)
        del self.jobs[job.pidfd]
        rc = job.proc.wait()
        if job.stderr:
            job.stderr.close()
        try:
            self._settle(job, rc)
        except OSError as exc:  # a full disk: the message stays claimed until its lease ends
            if not disk_full(exc):  # a full disk: carry on, try again later (#16)
                raise
            log.error("spool full reason=%s; id=%s is handled again after its lease", exc, job.claim.ident)

    def _settle(self, job: _Job, rc: int) -> None:
        """Ack, release, fail or reject a handler's message by its exit status."""
        c = job.claim
        last = job.last_line.decode("utf-8", "replace").strip()
        if job.killed:
            why = job.killed
        elif rc == 0:
            if c.spool.finish(c.channel, c.name, "ack"):
                self.done += 1
                log.info("done id=%s channel=%s", c.ident, c.channel)
            else:
                log.warning("lost id=%s reason=lease expired before the handler finished", c.ident)
            return
        elif rc == EX_TEMPFAIL:
            returns = int(self.spool.in_meta(c.channel, c.origin, c.ident).get("returns", 0))
            delay = backoff(returns, RETRY_BASE, RETRY_MAX)
            c.spool.finish(c.channel, c.name, "release", reason=HANDLER_RETRY, delay=delay)
            log.info("released id=%s reason=exit 75 retry_in=%.0fs", c.ident, delay)
            return
        elif rc < 0:
            why = f"killed by signal {-rc}"
        else:
            why = f"exit status {rc}"
        reason = f"{why}: {last}" if last else why
        meta = self.spool.in_meta(c.channel, c.origin, c.ident)
        failures = int(meta.get("failures", 0)) + 1
        if self.opts.max_attempts and failures >= self.opts.max_attempts:
            c.spool.finish(
                c.channel,
                c.name,
                "reject",
                reason=OUT_OF_ATTEMPTS.format(reason, failures, self.opts.max_attempts),
            )
            log.warning("dead id=%s reason=%s", c.ident, reason)
        else:
            delay = backoff(failures - 1, RETRY_BASE, RETRY_MAX)
            c.spool.finish(c.channel, c.name, "fail", reason=reason, delay=delay)
            log.warning("failed id=%s reason=%s retry_in=%.0fs", c.ident, reason, delay)

    def _drain(self, job: _Job) -> None:
        if job.stderr is None:
            return
        try:
            while data := job.stderr.read(65536):
                sys.stderr.buffer.write(data)
                lines = [ln for ln in data.splitlines() if ln.strip()]
                if lines:
                    job.last_line = lines[-1][-500:]
            sys.stderr.buffer.flush()
        except (BlockingIOError, ValueError):
            pass

    def _tick(self) -> None:
        import signal

        now = time.monotonic()
        for i, (c, renewed) in enumerate(self.ahead):  # claimed ahead, not started yet
            if now - renewed > self.opts.lease / 4:
                self.ahead[i] = (c, now)
                c.renew(self.opts.lease)
        for job in list(self.jobs.values()):
            if now - job.renewed > self.opts.lease / 4:
                job.renewed = now
                if not job.claim.renew(self.opts.lease):
                    log.warning("lost id=%s reason=lease taken back", job.claim.ident)
            if self.opts.timeout and not job.killed and now - job.started > self.opts.timeout:
                job.killed = f"timed out after {self.opts.timeout:g}s"
                job.termed = now
                _signal(job.proc, signal.SIGTERM)
            elif job.killed and job.termed and now - job.termed > KILL_GRACE:
                job.termed = 0
                _signal(job.proc, signal.SIGKILL)

    def run(self) -> int:
        """Run handlers until TERM (or, with --once, until nothing is ready)."""

        import select
        import signal

        def stop(signum: int, _frame: Any) -> None:
            self.stopping += 1
            if self.stopping > 1:
                for job in self.jobs.values():
                    _signal(job.proc, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        waiter = self.spool.wakeups.consumer(self.opts.channel)
        try:
            last_claim = 0.0
            idle = False
            while True:
                free = self.opts.jobs - len(self.jobs)
                if free and not self.stopping and (not idle or time.monotonic() - last_claim > SWEEP_EVERY):
                    idle = not self._start_jobs(free)
                    last_claim = time.monotonic()
                if self.stopping:
                    self._give_back_ahead()
                if not self.jobs and not self.ahead and (self.stopping or (self.opts.once and idle)):
                    break
                fds: list[Any] = [waiter, *self.jobs.keys()]
                fds += [j.stderr for j in self.jobs.values() if j.stderr is not None]
                timeout = SWEEP_EVERY if (idle or not free) else 0
                if self.jobs:  # wake often enough to renew leases and enforce --timeout
                    timeout = min(
                        timeout or SWEEP_EVERY, self.opts.lease / 4, 0.25 if self.opts.timeout else 1
                    )
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                except InterruptedError:
                    continue
                for fd in ready:
                    if fd is waiter:
                        waiter.drain()
                        self.spool.forget_ready(self.opts.channel)
                        idle = False
                    elif isinstance(fd, int):
                        self._finish(self.jobs[fd])
                        idle = False
                for job in list(self.jobs.values()):
                    self._drain(job)
                self._tick()
        finally:
            waiter.close()
        return EX_OK


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a handler's whole process group (sh and whatever it started)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _claimed_stamp(spool: Spool) -> list[tuple[str, int]]:
    """Return the mtime of every channel's claimed/ folder: it changes with each claim."""
    out = []
    for ch in spool.channels():
        try:
            out.append((ch, os.stat(spool.path("in", ch, "claimed")).st_mtime_ns))
        except FileNotFoundError:
            pass
    return out
