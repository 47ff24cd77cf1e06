"""Delivery at scale (#17): hung peers hold no slot of --concurrency."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import ExitStack

from helpers import Nodes, listdir, wait_until

DEADLINE = 60.0
TEMPFAIL = 75


def test_hung_peers_hold_no_slot(nodes: Nodes) -> None:
    """Two peers that take connections and never answer fill --concurrency 2, and sort first:
    the healthy peer still gets its message long before their timeout ends them."""
    a, b = nodes("a"), nodes("b")
    url_b = b.serve()
    with ExitStack() as stack:
        conf = f'[peers.zb]\nurl = "{url_b}"\n[send]\ntimeout = "5s"\n'
        for name in ("a1", "a2"):
            hung = stack.enter_context(socket.socket())
            hung.bind(("127.0.0.1", 0))
            hung.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
            conf += f'[peers.{name}]\nurl = "http://127.0.0.1:{hung.getsockname()[1]}/"\n'
        a.config(conf)
        for name in ("a1", "a2"):
            a.put(b"never answered", "--to", name)
        ident = a.put(b"goes through", "--to", "zb")
        sender = a.start("dropr-send", "--once", "--concurrency", "2", stderr=subprocess.PIPE)
        ready = b.spool / "in" / "default" / "ready"
        wait_until(lambda: listdir(ready), DEADLINE, "delivery to the healthy peer")
        arrived = time.monotonic()
        assert sender.poll() is None, "the hung transfers ended before their timeout"
        _, err = sender.communicate(timeout=DEADLINE)
        ended = time.monotonic()
    assert sender.returncode == TEMPFAIL, err.decode()
    assert ended - arrived > 2.0, "the healthy peer waited for the hung ones' timeout"
    assert a.states("out")[ident] == "sent"
