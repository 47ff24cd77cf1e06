"""The spool: the only code that creates, renames, links or unlinks spool files.

Layout (one filesystem; ``tmp`` must be on the same one as everything else, or
rename and link could not be atomic)::

    node                         this node's name, fixed at first use
    dropr.toml                   optional config
    .config.cache                its last parse, keyed by its content (config._cached)
    tmp/                         files being written; swept when untouched for 36 h
    ids/<id>                     symlink -> "{p}{arrival}" for caller-chosen outbox ids
    out/<peer>/url               where the peer is ("hold" for a held peer: it fetches)
    out/<peer>/peer.json         backoff, last success, last error (write .new, rename)
    out/<peer>/<state>/<name>    state: queued sent processed dead; hard links of one file
    out/<peer>/meta/<id>         attempts and last error of one message (written on failure)
    out/<peer>/ttl               empty: a message with a TTL was put for the peer
    out/<group>/queued/<name>    a peer group's queue: put, not yet given to a member
    out/<group>+<crc>/...        one member of a group (config.member_name): a full outbox
                                 folder; its queued/ holds what was given to it, its meta/ID
                                 pinned_at (an ambiguous failure: retried there only), its
                                 peer.json failing_since (groups.py)
    out/<peer>/relayed           empty: a relayed message was queued for the peer
    out/<peer>/via               the relay a peer is reached through (its url is the relay's)
    relay/<dest>/<origin>/<id>   a relay's index: symlink -> "<client>/<outbox name>" of each
                                 message relayed for dest (relay/ made at the first)
    in/<channel>/<state>/<name>  state: ready wait claimed done dead
    in/<channel>/meta/<origin>,<id>  returns, failures, last error
    rcv/<origin>/<id>            every received id: a hard link of the message for a generated
                                 id (its inbox name follows from the id; the upload is written
                                 there), a symlink -> "{channel}/{p}{created}" for a chosen one
    corrupt/                     unreadable files moved aside, messages that failed their
                                 checksum (dropr-ls --verify), and strays: files in a state
                                 folder with no message name (_layout.message_names)
    wake/                        datagram sockets of waiting senders, consumers and held fetches
    lock/                        send.lock (one sender), rcv-<origin>.lock (one committer),
                                 fetch-<peer>.lock (one fetch of a held peer confirms at a time),
                                 usage.lock (with a quota: shared by every change of a live name,
                                 exclusive while the total is counted anew)
    usage                        with limits.quota: "TOTAL OPENS CLOSES BOOT", the payload bytes
                                 of every name in a live state folder and its windows (usage.py);
                                 rewritten in place under its flock, never synced

Names: outbox ``{p}{arrival:013x},{id}``, inbox ``{p}{created:013x},{origin},{id}``
where created is the origin's put time, so the inbox keeps the origin's order
(``message``). An outbox file is a 256-byte header and the payload; an inbox file
is the payload alone, its checksum and size ("k=<crc32> s=<size>") kept in its inode
as the extended attribute user.dropr.sum (none where the filesystem has none). Nothing
is modified after its final rename, except the mtime of ``claimed`` (the lease expiry)
and ``wait`` (when due) entries.

State table. Each transition is one rename, or a link then an unlink ("move", see
FS.move) where only one process moves the file; "crash" says what a kill -9 or power
loss between the steps leaves, and what recovery makes of it.

===========  ==================================  ==================================================
transition   steps                               crash windows
===========  ==================================  ==================================================
put          write tmp/F (header+payload);       before sync 1: tmp leftover, swept by age; nothing
             sync 1; [symlink ids/ID];           was printed. After link to some peers only: those
             link F to out/P/queued/N per peer;  peers get it, id never printed (retry with --id to
             unlink F; wake the sender; sync 2;  be exact); so may the peers of a put whose sync 2
             print ids                           failed. A dangling ids/ symlink (crash before
                                                 the link) is older than 60 s and replaced.
sent         move queued/N -> sent/N             before: sent again, the peer answers duplicate.
                                                 Between link and unlink: in both; sent again
                                                 (duplicate), and the next move drops queued/N.
processed    move sent/N -> processed/N          before: the next status poll does it again.
dead (out)   write meta/ID; move -> dead/N       before the move: still queued, meta says why.
requeue      write meta/ID (attempts 0; with a   before the rename: still dead, its record reset;
(out)        TTL, deadline = now + TTL span);    requeuing again finishes it. One rename, so never
             sync it; rename dead/N ->           in two states; an entry in queued/ too (a kill
             queued/N; sync; wake the sender     mid-move) is left. The header keeps its first
                                                 deadline: the sender takes the record's instead
                                                 once the header's has passed (Outbox.peek).
store (in)   write rcv/O/ID (generated id: made  the receiver holds lock/rcv-O.lock from the
             O_EXCL, and still this upload's     index check to sync 2, so a duplicate is never
             at the lock) or tmp/F; lock origin; answered before the first copy is durable, and
             for tmp/F, link (or symlink)        no message is in the inbox before its index
             rcv/O/ID, EEXIST: duplicate; set the entry. An rcv entry whose message is nowhere
             sum xattr of F; sync 1 (F and       (a crash before the link into ready) is
             rcv/O); link F -> ready/N; unlink   replaced under the lock; the sender resends.
             tmp/F; wake consumers; sync 2;      The tmp sweep drops a stray tmp/F, and its rcv/
             unlock; answer "stored"             hard link when only the two hold it; purge
                                                 drops rcv/ files no inbox state links,
                                                 untouched 36 h (an upload cut by a crash).
                                                 The sum is in F's inode, durable with sync 1.
assign       link out/G/queued/N ->              between link and unlink: in both queues; the next
(group)      out/M/queued/N; sync M's queued/;   sender's start (Outbox.settle) unlinks the
             unlink G's; sync G's queued/        member's copy (nothing sent it: the member sends
                                                 only once both folders are synced). A name in
                                                 G's queued/ and in M's sent/ processed/ dead/
                                                 (a lost unlink of G's): G's copy is unlinked.
hand over    link out/G/sent/N -> out/M/sent/N   once, for a peer that became a group: its sent/
(group)      (M: the member at G's url); sync   entries are polled at that member. Cut: in
             both; unlink G's; sync both         both sent/; the next start unlinks G's copy.
unassign     link out/M/queued/N ->              between link and unlink: in both queues; as
(group)      out/G/queued/N; sync G's queued/;   assign, the member's copy is unlinked. Only
             unlink M's; sync M's queued/        after a failure that stored nothing, or after
                                                 send.failover_after (the message may then be
                                                 stored at two members: at least once across a
                                                 group, exactly once in each member's inbox).
claim        utime(ready/N, lease end);          between: the file sits in ready with a future
             rename -> claimed/N; utime again;   mtime, which ready ignores; after: a lease that is
             (every claim of the call) sync      already set, so no sweeper can take it back early.
             claimed/ and ready/; hand them out  A claim not yet synced is in ready/ or claimed/;
                                                 nobody has it yet, so no ack can overtake it.
ack          rename claimed/N -> done/N          before: the lease expires, redelivered (at least
                                                 once).
release      [utime(claimed/N, due)]; write      before the rename: the lease expires (at the due
             meta; rename claimed/N -> ready/N   time, if set) and the count is raised once more
             or wait/N                           (an over-count by one).
reject       write meta; rename -> dead/N        as release.
expire       write meta; rename claimed/N ->     two sweepers: one rename wins, the other gets
             ready/N                             ENOENT and skips.
due          rename wait/N -> ready/N            idempotent.
requeue      write meta (returns, failures 0);   before the rename: still dead, its counts reset;
(in)         sync it; rename dead/N -> ready/N;  requeuing again finishes it. After: ready, counts
             sync; wake consumers                reset, the last error kept.
purge        unlink done|processed|dead after    leftovers of a purge are purged again. Held
             retention (ctime age), meta, index  off while a requeue runs (lock/purge.lock).
             (a relay/ entry: once its outbox    A relay/ entry goes under lock/relay-D.lock.
             entry is in no state)
corrupt      rename B/X/S/N -> corrupt/B=X=S=N;  before: still in its state, found again by the
             write its .why (neither synced)     next dropr-ls --verify. After: in corrupt/ only,
                                                 perhaps without .why; a power loss may undo the
                                                 rename (back in its state, found again). One
                                                 rename: never in two places, never lost.
fetch        holder: answer queued/N as it is;   nothing is moved until the fetcher confirms: a
(held peer)  the fetcher stores it (store (in),  crash of either before the store leaves it queued
             under the holder's node or o=),     (fetched again). After the store, before the
             then its next request confirms:     confirm: queued at the holder and in the
             under lock/fetch-P.lock, sent for   fetcher's inbox; the next fetch gets it again,
             stored/duplicate (the sent move),   the store answers duplicate (rcv/ index), the
             dead (out) for refused              confirm moves it: once in the inbox, never lost.
relay        write tmp/F (the header with o=,    before sync 1: a tmp leftover, swept by age, and
             h+1; the payload, CRC checked);     index entries that point at no outbox entry: the
             lock relay-D; symlink               client heard nothing and resends, and the entry
             relay/D/O/ID (EEXIST: a duplicate   is replaced. After the links, before sync 2: a
             from the same client, a loop from   name lost from queued/ makes the resend store it
             another; but an entry in no outbox  again; a name kept makes it a duplicate. So a
             state is replaced); sync 1 (F,      message is queued once per (origin, id), and
             relay/D/O); link F ->               "stored" follows sync 2. A crash between link
             out/D/queued/N; unlink F; wake the  and unlink leaves tmp/F to the sweep.
             sender; sync 2; unlock; answer
             "stored"
count        with a quota, around each link,     a kill between OPENS + 1 and CLOSES + 1: the
(quota)      unlink, rename of a live name       total may lack calls made, and OPENS > CLOSES
             (usage.GuardedFS): flock            stays; the next check (a daemon's purge_if_due:
             usage.lock SH; OPENS + 1; the       at its start, then every 60 s; a --once purge)
             calls, each adding its lstat        takes usage.lock EX (no window open, no name
             size; TOTAL + delta, CLOSES + 1;    moves) and counts the live folders anew: TOTAL =
             unlock. A batch (put, store,        the count, CLOSES = OPENS. After a power loss the
             relay, the sender's moves) is one   record may be older than the names: its BOOT is
             window; a rename between two live   another kernel's, so check counts anew.
             folders only holds SH.
===========  ==================================  ==================================================

Where each transition is: put PutBatch.commit; sent, processed, dead (out), requeue
(out), assign, unassign Outbox.mark_sent, mark_processed, kill, requeue, assign,
unassign; store Inbox.store; claim to due and requeue (in) the table leases.ACTIONS; purge
Retention.purge; corrupt Retention.move_corrupt (dropr-ls --verify, verify.py; strays and
unreadable files, Retention.corrupt); fetch dropr.fetch (answer at the holder, Fetcher at
the fetcher), with the moves above;
relay Relays.store (relay.py); count usage.GuardedFS and Usage.batch, repaired by
Usage.check.

Syncing: "sync" is fsync of each written file and each touched directory for a
few messages, and one syncfs(2) of the spool's filesystem for the files of a batch
(group commit): the data of every file before any of its names, every name before
the caller hears "stored". A sync of names alone (sync 2) fsyncs the few folders
they are in, even for a batch: a syncfs would wait for every other writer's data.

Modules, one per concern; the transitions above are named functions in them:

    _fs.py        the I/O seam: every create, write, sync, rename, link, unlink, mkdir,
                  symlink and utime of the spool (FS; TracingFS records and fails them)
    _layout.py    the folders, states and limits; listing state folders, telling strays
    outbox.py     put (PutBatch), lookups; mark_sent, mark_processed, record_failure, kill, requeue,
                  assign, unassign
    inbox.py      the one store path (open_part, store, unreceive), lookups, receipts
    leases.py     claim, ack, release, fail, reject, expire, due, requeue: a (state, event) table
    wake.py       wake-up sockets and every name they are bound under
    retention.py  purge, the tmp/ and rcv/ sweeps, corrupt/ and strays
    relay.py      the relay store: relayed messages into the outbox, the relay/ index, the
                  relay's receipt lookups, the index's purge
    usage.py      a quota's running total of live bytes: GuardedFS counts, check repairs
"""

from __future__ import annotations

import os

from .. import message as m
from ..config import Config, Peer
from ..errors import ConfigError, NotFoundError, TempFailError, from_oserror
from . import _fs
from ._fs import GROUP_MODES, PRIVATE_MODES, DirectWriter, free_bytes, syncfs
from ._layout import (
    CHUNK,
    DIRECT_MIN,
    IN_STATES,
    OUT_STATES,
    PURGE_CHECK,
    PURGE_EVERY,
    STRAY_WHY,
    SYNC_EACH_MAX,
    TMP_MAX_AGE,
    TOP,
    stray_test,
)
from .outbox import Outbox, PutBatch
from .wake import SEND_SOCK, Waiter, Wakeups

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .inbox import Inbox, Part
    from .leases import ACTIONS, Claim, Leases
    from .relay import Relays
    from .retention import Retention
    from .usage import Usage

# The concerns dropr-put never uses (inbox, leases, retention) are imported at their
# first use: each module costs about 0.3 ms of start-up. See Spool.__getattr__.
_LAZY = {  # Spool attribute -> (concern, its attribute), bound at first use
    "channel_dir": ("inbox", "channel_dir"),
    "channels": ("inbox", "channels"),
    "origins": ("inbox", "origins"),
    "find_in": ("inbox", "find"),
    "in_names": ("inbox", "names"),
    "in_meta": ("inbox", "meta"),
    "in_status": ("inbox", "status"),
    "open_part": ("inbox", "open_part"),
    "receive_file": ("inbox", "receive_file"),
    "unreceive": ("inbox", "unreceive"),
    "store": ("inbox", "store"),
    "claim": ("leases", "claim"),
    "finish": ("leases", "finish"),
    "forget_ready": ("leases", "forget_ready"),
    "claimed_index": ("leases", "claimed_index"),
    "purge": ("retention", "purge"),
    "purge_if_due": ("retention", "purge_if_due"),
    "corrupt": ("retention", "corrupt"),
}


if not TYPE_CHECKING:  # hidden from mypy, which sees the imports above instead

    def __getattr__(name: str) -> Any:
        """Import Part, Claim and ACTIONS at their first use (see _LAZY)."""
        if name == "Part":
            from . import inbox

            value = inbox.Part
        elif name in ("Claim", "ACTIONS"):
            from . import leases

            value = getattr(leases, name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value


class NoWindow:
    """A window that counts nothing: a spool without a quota, or a nested batch
    (usage.Window is one that counts)."""

    __slots__ = ()

    def __enter__(self) -> NoWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_WINDOW = NoWindow()


class NoUsage:
    """The usage of a spool without a quota: no total is kept (usage.Usage keeps one)."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def batch(self) -> NoWindow:
        """Return a window that counts nothing."""
        return NO_WINDOW

    def used(self) -> int:
        """Return 0: a spool without a quota counts nothing and refuses nothing."""
        return 0

    def check(self) -> bool:
        """Remove a total a quota left: nothing keeps it now (it is counted anew when a
        quota is set again); return False."""
        try:
            os.unlink(os.path.join(self.root, "usage"))
        except FileNotFoundError:
            pass
        return False


class Spool:
    """One spool directory: its root, node name, paths and syncs, and one object per concern.

    The concerns are ``outbox``, ``inbox``, ``leases``, ``wakeups`` and ``retention``;
    the methods callers use are bound here under the names they have always had.
    ``fs`` is the I/O seam every file operation goes through (``_fs.FS``).
    """

    def __init__(
        self, root: str, config: Config | None = None, *, create: bool = True, fs: _fs.FS | None = None
    ) -> None:
        self.root = os.path.abspath(root)
        self.config = config or Config()
        modes = GROUP_MODES if self.config.group is not None else PRIVATE_MODES
        self.fs = fs if fs is not None else _fs.FS() if not self.config.quota else _guarded(self.root, modes)
        self.fs.file_mode, self.fs.dir_mode = modes
        self.usage: Usage | NoUsage = NoUsage(self.root)  # a quota's running total (usage.py)
        if self.config.quota:
            self.usage = _usage(self)
        self.tmp = os.path.join(self.root, "tmp")
        if create:
            self._init_dirs()
        elif not os.path.isdir(self.tmp):
            raise NotFoundError(f"no spool at {self.root}; put a message first or pass --spool")
        self.node = _fix_node(self.fs, self.root, os.environ.get("DROPR_NODE") or self.config.node or "")
        self._tmpseq = 0
        self.ids = m.IdMaker()
        self.wakeups = Wakeups(self.path("wake"))
        self.outbox = ob = Outbox(self)
        # The names callers use, bound once (no call layer on the hot paths); those of
        # inbox, leases and retention are bound by __getattr__ at their first use.
        self.peer_dir = ob.peer_dir
        self.find_out = ob.find
        self.out_peers = ob.peers
        self.out_names = ob.names
        self.out_has_ttl = ob.has_ttl
        self.out_changed = ob.changed
        self.out_any = ob.any
        self.out_meta = ob.meta
        self.out_note = ob.note
        self.peer_url = ob.url
        self.peer_state = ob.peer_state
        self.set_peer_state = ob.set_peer_state
        self.read_header = ob.read_header
        self.peek = ob.peek
        self.mark_sent = ob.mark_sent
        self.mark_processed = ob.mark_processed
        self.record_failure = ob.record_failure
        self.kill = ob.kill
        self.waiter = self.wakeups.waiter
        if TYPE_CHECKING:  # what __getattr__ makes, as mypy should see it
            self.inbox = Inbox(self)
            self.leases = Leases(self)
            self.retention = Retention(self)
            self.relays = Relays(self)
            ib, le, rt = self.inbox, self.leases, self.retention
            self.channel_dir, self.channels, self.origins = ib.channel_dir, ib.channels, ib.origins
            self.find_in, self.in_names, self.in_meta, self.in_status = ib.find, ib.names, ib.meta, ib.status
            self.open_part, self.receive_file, self.unreceive = ib.open_part, ib.receive_file, ib.unreceive
            self.store = ib.store
            self.claim, self.finish, self.forget_ready = le.claim, le.finish, le.forget_ready
            self.claimed_index = le.claimed_index
            self.purge, self.purge_if_due, self.corrupt = rt.purge, rt.purge_if_due, rt.corrupt

    if not TYPE_CHECKING:  # hidden from mypy, which sees the attributes __init__ declares

        def __getattr__(self, name: str) -> Any:
            """Make a concern (inbox, leases, retention) or bind a name of one, at first use."""
            if name == "inbox":
                from .inbox import Inbox

                value: Any = Inbox(self)
            elif name == "leases":
                from .leases import Leases

                value = Leases(self)
            elif name == "retention":
                from .retention import Retention

                value = Retention(self)
            elif name == "relays":
                from .relay import Relays

                value = Relays(self)
            elif name in _LAZY:
                concern, attr = _LAZY[name]
                value = getattr(getattr(self, concern), attr)
            else:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            # Found there from now on: no second call here. Two threads (dropr-serve's)
            # may both make a concern at first: it holds only caches, so either serves.
            self.__dict__[name] = value
            return value

    def _init_dirs(self) -> None:
        # The folders are made in TOP's order, each made durable before the next: the
        # last one there means all are. (A crash between making wake/ and lock/ left a
        # spool without lock/, which every later start took for whole.)
        if os.path.isdir(os.path.join(self.root, TOP[-1])):
            return
        group = self.config.group
        gid = group_id(group) if group is not None and not os.path.isdir(self.root) else -1
        try:
            if self.fs.mkdirs(self.root) and group is not None:
                self._give_to_group(group, gid)
            for sub in TOP:
                self.fs.mkdirs(os.path.join(self.root, sub))
        except OSError as exc:
            raise from_oserror(exc, f"cannot create spool {self.root}") from None

    def _give_to_group(self, group: str, gid: int) -> None:
        """Make a new spool root the operators' group's, set-group-ID (see GROUP_MODES)."""
        try:
            self.fs.give_to_group(self.root, gid)
        except PermissionError:
            raise ConfigError(
                f"cannot give spool {self.root} to group {group!r}: this user is not in it; "
                "add the user to the group or drop group from the config"
            ) from None

    def path(self, *parts: str) -> str:
        """Return a path inside the spool (parts are names, never absolute)."""
        return "/".join((self.root, *parts))

    def tmp_name(self, tag: str) -> str:
        """Return a fresh path in tmp/ unique to this process."""
        self._tmpseq += 1
        return f"{self.tmp}/{os.getpid()}.{self._tmpseq}.{tag}"

    def sync(self, fds: Iterable[int] = (), dirs: Iterable[str] = (), many: bool = False) -> None:
        """Make written files and names durable: fsync each, or one syncfs for many."""
        fs = self.fs
        if many:
            fs.syncfs(self.root)
            return
        for fd in fds:
            fs.fsync(fd)
        for d in dirs:
            fs.fsync_dir(d)

    def batch(
        self,
        peers: list[Peer],
        *,
        channel: str = "default",
        priority: int = 5,
        ttl: float = 0,
        key: int | None = None,
    ) -> PutBatch:
        """Start a batch of messages to put durably in one commit (key: header y=)."""
        return PutBatch(self, peers, channel=channel, priority=priority, ttl=ttl, key=key)


def _guarded(root: str, modes: tuple[int, int]) -> _fs.FS:
    """Return the FS of a spool with a quota: it counts live names (usage.GuardedFS)."""
    from .usage import GuardedFS

    return GuardedFS(root, modes)


def _usage(spool: Spool) -> Usage:
    """Return the running total of a spool with a quota, given to its GuardedFS."""
    from .usage import GuardedFS, Usage

    usage = Usage(spool)
    if isinstance(spool.fs, GuardedFS):
        spool.fs.usage = usage
    return usage


def group_id(group: str) -> int:
    """Return the id of a group given by name or number, or raise ConfigError."""
    import grp

    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {group!r} in the config; create it or fix group") from None


def _read_node(path: str) -> str:
    """Return the node name in path (ASCII). Read as bytes: a text file's codec lookup
    imports encodings.ascii, a quarter of a millisecond of every dropr-put."""
    with open(path, "rb") as f:
        return f.read().decode("ascii").strip()


def _fix_node(fs: _fs.FS, root: str, wanted: str) -> str:
    """Return the spool's node name, fixing it at first use (wanted, or the host's name)."""
    path = os.path.join(root, "node")
    try:
        node = _read_node(path)
    except FileNotFoundError:
        node = ""
    except OSError as exc:
        raise from_oserror(exc, f"cannot read {path}") from None
    if node:
        if wanted and wanted != node:
            raise ConfigError(
                f"spool {root} belongs to node {node!r}, not {wanted!r}; the node name is fixed at first use"
            )
        return node
    node = wanted or _safe_hostname()
    try:
        m.check_name(node, "node")
    except ValueError as exc:
        raise ConfigError(f"bad node name {node!r}: {exc}; set node in the config") from None
    tmp = os.path.join(root, "tmp", f"node.{os.getpid()}")
    try:
        fs.write_file(tmp, node + "\n", flags=os.O_TRUNC)
        fs.link(tmp, path)  # link, not rename: the first writer wins, all agree
        fs.fsync_dir(root)
    except FileExistsError:
        node = _read_node(path)
    except OSError as exc:
        raise from_oserror(exc, f"cannot fix the node name in {path}") from None
    finally:
        try:
            fs.unlink(tmp)
        except OSError:
            pass
    return node


def _safe_hostname() -> str:
    host = os.uname().nodename.split(".")[0] or "localhost"
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in host)[: m.MAX_NAME].lstrip("-.")


__all__ = [
    "ACTIONS",
    "CHUNK",
    "DIRECT_MIN",
    "GROUP_MODES",
    "IN_STATES",
    "OUT_STATES",
    "PRIVATE_MODES",
    "PURGE_CHECK",
    "PURGE_EVERY",
    "SEND_SOCK",
    "STRAY_WHY",
    "SYNC_EACH_MAX",
    "TMP_MAX_AGE",
    "Claim",
    "DirectWriter",
    "Part",
    "PutBatch",
    "Spool",
    "TempFailError",
    "Waiter",
    "free_bytes",
    "group_id",
    "stray_test",
    "syncfs",
]
