"""Wake-ups: datagram sockets in wake/, and every name they are bound under.

Wake-ups only save time: a waiter looks again on its own (a timeout, a rescan), so
a lost or failed wake-up delays and never loses. The names, all made here:

    send.sock                  the sender (one per spool: lock/send.lock)
    put-<pid>.sock             a dropr-put --wait, woken when receipts change
    recv-<channel>-<pid>.sock  a consumer of one channel, woken by a store into it
    fetch-<peer>-<tag>.sock    a fetch a holder's dropr-serve holds for a held peer (tag:
                               pid and a count), woken by a put or a relay store for it

What a datagram says (only the sender's are read; every other waiter drains them):

    !                  every queue may have new work (what dropr-put sent before it named
                       peers: an older dropr-put against a newer daemon wakes everything)
    =NAMES             "=" and the outbox folders (peers, groups) that got new work, UTF-8,
                       one per line (NAME_SEP); a peer name holds no newline
                       (message.check_name, config.member_name, url_peer_name), and
                       wake_sender sends "!" for one that does
    .                  no queue has new work: the daemon's loop only resumes (a signal,
                       a fetch's results; both sent by the daemon's own process)

Anything else, a datagram cut at WAKE_MAX bytes, or a queue that may have been full
(a wake-up lost) reads as "!": a wake-up only saves time, and must never make the
daemon skip a queue with work in it.
"""

from __future__ import annotations

import os

from .. import message as m

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

SEND_SOCK = "send.sock"  # the sender's wake-up socket in wake/
PUT_PREFIX = "put-"
RECV_PREFIX = "recv-"
FETCH_PREFIX = "fetch-"
WAKE_ALL = b"!"  # the datagrams: see this docstring
WAKE_NAMES = b"="
WAKE_RESUME = b"."
WAKE_MAX = 1024  # the largest datagram naming peers (~20 names); a put to more peers wakes all
NAME_SEP = "\n"  # between the names of a datagram: no peer name holds it
WAKE_SETTLE = 0.1  # wake/ unchanged this long (seconds) has a listing worth keeping: see _waiting


def put_sock(pid: int | str) -> str:
    """Return the socket name of a waiting dropr-put (pid, or a tag unique in the spool)."""
    return f"{PUT_PREFIX}{pid}.sock"


def recv_prefix(channel: str) -> str:
    """Return the prefix of the socket names of every consumer of a channel."""
    return f"{RECV_PREFIX}{channel}-"


def recv_sock(channel: str, pid: int | str) -> str:
    """Return the socket name of a consumer of a channel (pid, or a tag unique in the spool)."""
    return f"{recv_prefix(channel)}{pid}.sock"


def fetch_prefix(peer: str) -> str:
    """Return the prefix of the socket names of every fetch held for a held peer."""
    return f"{FETCH_PREFIX}{peer}-"


def fetch_sock(peer: str, tag: int | str) -> str:
    """Return the socket name of one fetch held for a peer (tag unique in the spool)."""
    return f"{fetch_prefix(peer)}{tag}.sock"


class Wakeups:
    """The wake/ folder of one spool: bind waiters, wake them."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._list: tuple[tuple[int, int], list[str]] | None = None  # see _waiting

    # -- the waiters of each program --------------------------------------------

    def sender(self) -> Waiter:
        """Bind the sender's socket."""
        return self.waiter(SEND_SOCK)

    def putter(self) -> Waiter:
        """Bind this dropr-put's socket (woken by wake_putters)."""
        return self.waiter(put_sock(os.getpid()))

    def consumer(self, channel: str) -> Waiter:
        """Bind this consumer's socket for a channel (woken by wake_consumers)."""
        return self.waiter(recv_sock(channel, os.getpid()))

    def wake_sender(self, peers: Iterable[str] = ()) -> int:
        """Wake the sender, without listing wake/; 1 if it was there, else 0.

        peers: the outbox folders that got new work (the daemon lists only their queues);
        none means every queue, as does a set too long for one datagram.
        """
        return self.wake_one(SEND_SOCK, names_datagram(peers))

    def resume_sender(self) -> int:
        """Make the sender's loop run again without listing any queue (a signal, results)."""
        return self.wake_one(SEND_SOCK, WAKE_RESUME)

    def wake_putters(self) -> int:
        """Wake every waiting dropr-put; return how many."""
        return self.wake(PUT_PREFIX)

    def wake_consumers(self, channel: str) -> int:
        """Wake every consumer of a channel; return how many."""
        return self.wake(recv_prefix(channel))

    def wake_fetchers(self, peer: str) -> int:
        """Wake every fetch held for a held peer (hold = true): a message was queued for
        it. PutBatch.commit and the relay store call it for held peers only."""
        return self.wake(fetch_prefix(peer))

    def sender_running(self) -> bool:
        """Tell whether a sender holds this spool's wake-up socket."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.connect(f"{self.folder}/{SEND_SOCK}")
                return True
            except OSError:
                return False

    # -- the mechanism ------------------------------------------------------------

    def wake(self, prefix: str) -> int:
        """Send a datagram to every waiter whose socket starts with prefix; return how many.

        Wake-ups only save time (waiters look again on their own), so they never fail
        their caller: an unreadable wake/ or no descriptor left wakes nobody.
        """
        try:
            names = [n for n in self._waiting() if n.startswith(prefix)]
            return _send_wakes(self.folder, names) if names else 0
        except OSError:
            return 0

    def wake_one(self, name: str, data: bytes = WAKE_ALL) -> int:
        """Send data to the waiter bound as name without listing wake/; return 1 if it was
        there, else 0. Never fails, as wake()."""
        if not os.path.exists(os.path.join(self.folder, name)):
            return 0  # nobody waits: no socket to make (a put from cron)
        try:
            return _send_wakes(self.folder, [name], data)
        except OSError:
            return 0

    def _waiting(self) -> list[str]:
        """The sockets in wake/, listed again only when the folder has changed.

        A stat instead of a listing on every store (0.06 against 0.11 ms on an idle
        CPU). A folder changed within the last WAKE_SETTLE seconds is not cached: its
        timestamp has a clock tick's granularity, and a socket bound in the same tick
        as the listing would not change it. Past that, any change moves the mtime.
        """
        try:
            st = os.stat(self.folder)
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_mtime_ns)
        if self._list is not None and self._list[0] == key:
            return self._list[1]
        names = os.listdir(self.folder)
        settled = m.now_us() * 1000 - st.st_mtime_ns > WAKE_SETTLE * 1e9
        self._list = (key, names) if settled else None
        return names

    def waiter(self, name: str) -> Waiter:
        """Bind a wake-up socket named name in wake/."""
        return Waiter(os.path.join(self.folder, name))


def names_datagram(peers: Iterable[str]) -> bytes:
    """Return the datagram that wakes the sender for peers (see this module's docstring)."""
    names = sorted(set(peers))
    if not names or any(not n or NAME_SEP in n for n in names):
        return WAKE_ALL
    try:
        data = WAKE_NAMES + NAME_SEP.join(names).encode()
    except UnicodeEncodeError:  # a folder name os.listdir read with surrogateescape
        return WAKE_ALL
    return data if len(data) <= WAKE_MAX else WAKE_ALL


def parse_wake(data: bytes) -> set[str] | None:
    """Return the outbox folders a sender's datagram names (empty: none), or None for all."""
    if data == WAKE_RESUME:
        return set()
    if not data.startswith(WAKE_NAMES) or len(data) > WAKE_MAX:
        return None
    try:
        names = data[len(WAKE_NAMES) :].decode().split(NAME_SEP)
    except UnicodeDecodeError:
        return None
    return None if "" in names else set(names)


def _send_wakes(folder: str, names: list[str], data: bytes = WAKE_ALL) -> int:
    s = _wake_socket()
    woken = 0
    for n in names:
        try:
            s.sendto(data, os.path.join(folder, n))
            woken += 1
        except BlockingIOError:
            # The waiter's queue is full (it has wake-ups pending, and a sender that
            # drains a full queue takes it as "!": see Waiter.drain_names), or this
            # process's socket has used up its send buffer on waiters that do not read:
            # then a wake-up naming peers is lost, and nothing else names them. Once
            # more from a socket of its own.
            if data != WAKE_ALL:
                _send_alone(data, os.path.join(folder, n))
            woken += 1
        except ConnectionRefusedError:
            _unlink_quiet(os.path.join(folder, n))  # its owner is gone
        except OSError:
            pass  # nobody waits under that name
    return woken


def _send_alone(data: bytes, path: str) -> None:
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(data, path)
    except OSError:
        pass  # its queue is full: Waiter.drain_names reads that as everything
    finally:
        s.close()


class Waiter:
    """A bound datagram socket that wakes its owner; removed on close."""

    def __init__(self, path: str) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _unlink_quiet(path)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        """Return the socket's descriptor, for select/poll."""
        return self.sock.fileno()

    def wait(self, timeout: float | None, *, drain: bool = True) -> bool:
        """Block until woken or timeout; drain pending wake-ups (unless drain is False:
        the sender reads what they name, drain_names); True if woken."""
        import select

        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        if drain:
            self.drain()
        return True

    def drain(self) -> None:
        """Discard pending wake-ups."""
        try:
            while True:
                self.sock.recv(64)
        except OSError:
            pass

    def drain_names(self) -> set[str] | None:
        """Take every pending wake-up; return the outbox folders they name, or None for all.

        None as soon as one names no peer ("!", anything unreadable), and when the queue
        may have been full: a wake-up sent then was lost (EAGAIN at its sender), and
        nothing tells which peers it named.
        """
        names: set[str] = set()
        count = 0
        try:
            while True:
                named = parse_wake(self.sock.recv(WAKE_MAX + 1))
                count += 1
                if named is None:
                    self.drain()
                    return None
                names |= named
        except OSError:
            pass
        return None if count >= _queue_length() else names

    def close(self) -> None:
        """Unbind and close."""
        _unlink_quiet(self.path)
        self.sock.close()

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink_quiet(path: str) -> None:
    # A socket is no spool file: it holds no data and is made by bind(2), so neither
    # its binding nor its removal goes through the FS seam.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_qlen: int | None = None  # see _queue_length


def _queue_length() -> int:
    """Return how many datagrams a wake-up socket queues (net.unix.max_dgram_qlen; the
    kernel takes one more), read once; 10, Linux's default, if it cannot be read."""
    global _qlen
    if _qlen is None:
        try:
            with open("/proc/sys/net/unix/max_dgram_qlen", "rb") as f:
                _qlen = max(1, int(f.read()))
        except (OSError, ValueError):
            _qlen = 10
    return _qlen


_wake_sock: tuple[int, Any] | None = None  # (pid, socket): see _wake_socket


def _wake_socket() -> Any:
    """This process's socket for sending wake-ups, made once (a socket per wake-up cost
    0.1 ms on an idle CPU, on the path from a store to its consumer). From _socket: the
    socket module's import (enum and more) took 6 ms, a fifth of a dropr-put's start."""
    global _wake_sock
    if _wake_sock is None or _wake_sock[0] != os.getpid():  # not the one of a parent
        import _socket

        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        s.setblocking(False)
        _wake_sock = (os.getpid(), s)
    return _wake_sock[1]
