"""Wake-ups: datagram sockets in wake/, and every name they are bound under.

Wake-ups only save time: a waiter looks again on its own (a timeout, a rescan), so
a lost or failed wake-up delays and never loses. The names, all made here:

    send.sock                  the sender (one per spool: lock/send.lock)
    put-<pid>.sock             a dropr-put --wait, woken when receipts change
    recv-<channel>-<pid>.sock  a consumer of one channel, woken by a store into it
    fetch-<peer>-<tag>.sock    a fetch a holder's dropr-serve holds for a held peer (tag:
                               pid and a count), woken by a put or a relay store for it
"""

from __future__ import annotations

import os

from .. import message as m

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

SEND_SOCK = "send.sock"  # the sender's wake-up socket in wake/
PUT_PREFIX = "put-"
RECV_PREFIX = "recv-"
FETCH_PREFIX = "fetch-"
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

    def wake_sender(self) -> int:
        """Wake the sender, without listing wake/; 1 if it was there, else 0."""
        return self.wake_one(SEND_SOCK)

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

    def wake_one(self, name: str) -> int:
        """Wake the waiter bound as name without listing wake/; return 1 if it was there,
        else 0. Never fails, as wake()."""
        if not os.path.exists(os.path.join(self.folder, name)):
            return 0  # nobody waits: no socket to make (a put from cron)
        try:
            return _send_wakes(self.folder, [name])
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


def _send_wakes(folder: str, names: list[str]) -> int:
    s = _wake_socket()
    woken = 0
    for n in names:
        try:
            s.sendto(b"!", os.path.join(folder, n))
            woken += 1
        except BlockingIOError:
            woken += 1  # its queue is full: it has wake-ups pending anyway
        except ConnectionRefusedError:
            _unlink_quiet(os.path.join(folder, n))  # its owner is gone
        except OSError:
            pass  # nobody waits under that name
    return woken


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

    def wait(self, timeout: float | None) -> bool:
        """Block until woken or timeout; drain pending wake-ups; True if woken."""
        import select

        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return False
        self.drain()
        return True

    def drain(self) -> None:
        """Discard pending wake-ups."""
        try:
            while True:
                self.sock.recv(64)
        except OSError:
            pass

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
