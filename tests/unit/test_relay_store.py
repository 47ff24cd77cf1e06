"""The relay store (spool/relay.py) and the relay's per-message checks (relay.RelayUpload)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
from dropr import message as m
from dropr.config import Config, Peer
from dropr.protocol import DEAD, DUPLICATE, PENDING, PROCESSED, REFUSED, STORED, UNKNOWN
from dropr.spool import Spool
from dropr.spool._trace import TracingFS

C = Peer("c", "http://127.0.0.1:9/")


def config(**serve: Any) -> Config:
    return Config({"node": "b", "peers": {"c": {"url": C.url}}, "serve": serve})


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    return Spool(str(tmp_path / "b"), config())


def relayed(sp: Spool, client: str, payload: bytes, *, ident: str = "", origin: str | None = None,
            hops: int = 0, deadline: int = 0) -> tuple[str, m.Header]:  # fmt: skip
    """Write one message as the upload parser does (Relays.open, then the payload)."""
    ident = ident or sp.ids.new()[0]
    hdr = m.Header(ident, "default", 5, m.now_us(), deadline, len(payload), m.crc32(payload), origin=origin,
                   hops=hops)  # fmt: skip
    part = sp.relays.open(client, hdr)
    part.write(payload)
    part.close()
    return part.path, hdr


def queued(sp: Spool, peer: str = "c") -> list[str]:
    return sorted(os.listdir(sp.path("out", peer, "queued")))


def test_a_relayed_message_is_queued_with_its_first_origin_and_one_hop_more(sp: Spool) -> None:
    item = relayed(sp, "a", b"payload", deadline=m.now_us() + 60_000_000)
    assert sp.relays.store("a", C, [item]) == [(STORED, "")]
    [name] = queued(sp)
    raw = Path(sp.path("out", "c", "queued", name)).read_bytes()
    hdr = m.Header.parse(raw[: m.HEADER_SIZE])
    sent = item[1]
    assert (hdr.origin, hdr.hops) == ("a", 1)
    assert (hdr.ident, hdr.created, hdr.deadline, hdr.crc, hdr.size) == (
        sent.ident, sent.created, sent.deadline, sent.crc, sent.size,
    )  # fmt: skip
    assert raw[m.HEADER_SIZE :] == b"payload"
    assert os.readlink(sp.path("relay", "c", "a", sent.ident)) == f"a/{name}"
    assert os.path.exists(sp.path("out", "c", "relayed")) and os.path.exists(sp.path("out", "c", "ttl"))
    assert os.listdir(sp.tmp) == []
    assert sp.inbox.channels() == []  # never in the relay's inbox


def test_a_relayed_message_keeps_the_origin_and_counts_the_hop(sp: Spool) -> None:
    item = relayed(sp, "x", b"p", origin="a", hops=3)
    assert sp.relays.store("x", C, [item]) == [(STORED, "")]
    hdr = sp.read_header("c", "queued", queued(sp)[0])
    assert (hdr.origin, hdr.hops) == ("a", 4)
    assert os.readlink(sp.path("relay", "c", "a", item[1].ident)).startswith("x/")


def test_the_same_message_from_the_same_client_is_a_duplicate(sp: Spool) -> None:
    first = relayed(sp, "a", b"p")
    assert sp.relays.store("a", C, [first]) == [(STORED, "")]
    again = relayed(sp, "a", b"p", ident=first[1].ident)
    twice = relayed(sp, "a", b"p", ident=first[1].ident)
    assert sp.relays.store("a", C, [again, twice]) == [(DUPLICATE, ""), (DUPLICATE, "")]
    assert len(queued(sp)) == 1 and os.listdir(sp.tmp) == []
    sp.mark_sent("c", queued(sp))  # in any state
    assert sp.relays.store("a", C, [relayed(sp, "a", b"p", ident=first[1].ident)]) == [(DUPLICATE, "")]


def test_one_id_twice_in_one_request_is_stored_once(sp: Spool) -> None:
    ident = sp.ids.new()[0]
    items = [relayed(sp, "a", b"p", ident=ident), relayed(sp, "a", b"p", ident=ident)]
    assert sp.relays.store("a", C, items) == [(STORED, ""), (DUPLICATE, "")]
    assert len(queued(sp)) == 1


def test_one_id_of_two_origins_is_two_messages(sp: Spool) -> None:
    items = [
        relayed(sp, "x", b"1", ident="job-1", origin="a"),
        relayed(sp, "x", b"2", ident="job-1", origin="e"),
    ]
    assert sp.relays.store("x", C, items) == [(STORED, ""), (STORED, "")]
    assert len(queued(sp)) == 2


def test_the_same_message_from_another_client_is_a_loop(sp: Spool) -> None:
    first = relayed(sp, "a", b"p")
    sp.relays.store("a", C, [first])
    back = relayed(sp, "c", b"p", ident=first[1].ident, origin="a", hops=2)
    [(status, why)] = sp.relays.store("c", C, [back])
    assert status == REFUSED
    assert why == f"loop: b has relayed a's message {first[1].ident} before, from a"
    assert len(queued(sp)) == 1 and os.listdir(sp.tmp) == []


def test_an_index_entry_whose_message_is_nowhere_is_replaced(sp: Spool) -> None:
    """A crash between the index entry and the link into queued/ left the entry alone:
    the client, which heard nothing, resends, and the message is stored."""
    item = relayed(sp, "a", b"p")
    ident = item[1].ident
    os.makedirs(sp.path("relay", "c", "a"))
    os.symlink("a/50000000000000,gone", sp.path("relay", "c", "a", ident))
    assert sp.relays.store("a", C, [item]) == [(STORED, "")]
    assert os.readlink(sp.path("relay", "c", "a", ident)) == f"a/{queued(sp)[0]}"


def test_a_failed_sync_answers_nothing_and_the_resend_is_stored_once(tmp_path: Path) -> None:
    armed = {"on": True}

    def hook(name: str, args: tuple[Any, ...]) -> None:
        if armed["on"] and name == "fsync_dir" and str(args[0]).endswith("/queued"):
            raise OSError(errno.EIO, "injected")

    sp = Spool(str(tmp_path / "b"), config(), fs=TracingFS(hook))
    item = relayed(sp, "a", b"p")
    with pytest.raises(OSError):
        sp.relays.store("a", C, [item])
    armed["on"] = False
    # the upload answered an error; the client resends: linked already, so a duplicate
    again = relayed(sp, "a", b"p", ident=item[1].ident)
    assert sp.relays.store("a", C, [again]) == [(DUPLICATE, "")]
    assert len(queued(sp)) == 1


def test_the_order_of_the_steps(tmp_path: Path) -> None:
    """Index entry; data and index synced; the name in queued/; queued/ synced, last."""
    fs = TracingFS()
    sp = Spool(str(tmp_path / "b"), config(), fs=fs)
    item = relayed(sp, "a", b"p")
    fs.ops.clear()
    sp.relays.store("a", C, [item])
    ops = fs.ops
    index = ops.index(("symlink", f"a/{queued(sp)[0]}", sp.path("relay", "c", "a", item[1].ident)))
    data = ops.index(("fsync", item[0]))
    index_sync = ops.index(("fsync_dir", sp.path("relay", "c", "a")))
    link = ops.index(("link", item[0], sp.path("out", "c", "queued", queued(sp)[0])))
    assert index < data < link and index < index_sync < link
    assert ops[-1] == ("fsync_dir", sp.path("out", "c", "queued"))


def test_status_follows_the_outbox_entry(sp: Spool) -> None:
    item = relayed(sp, "a", b"p")
    ident = item[1].ident
    assert sp.relays.status("a", "c", "a", ident) == (UNKNOWN, "")
    sp.relays.store("a", C, [item])
    assert sp.relays.status("a", "c", "a", ident) == (PENDING, "")
    assert sp.relays.status("x", "c", "a", ident) == (UNKNOWN, "")  # only the client that relayed it
    name = queued(sp)[0]
    sp.mark_sent("c", [name])
    assert sp.relays.status("a", "c", "a", ident) == (PENDING, "")
    sp.mark_processed("c", [name])
    assert sp.relays.status("a", "c", "a", ident) == (PROCESSED, "")
    other = relayed(sp, "a", b"q")
    sp.relays.store("a", C, [other])
    sp.kill("c", [queued(sp)[0]], "refused by peer: no")
    assert sp.relays.status("a", "c", "a", other[1].ident) == (DEAD, "refused by peer: no")


def test_status_finds_a_message_a_group_member_took(sp: Spool) -> None:
    item = relayed(sp, "a", b"p")
    sp.relays.store("a", C, [item])
    name = queued(sp)[0]
    member = sp.outbox.peer_dir(Peer("c+0badf00d", "http://127.0.0.1:10/"))
    os.link(sp.path("out", "c", "queued", name), f"{member}/sent/{name}")
    os.unlink(sp.path("out", "c", "queued", name))
    assert sp.relays.status("a", "c", "a", item[1].ident) == (PENDING, "")
    assert sp.relays.marked("c+0badf00d") and not sp.relays.marked("d")


def test_poll_origins_reads_o_and_keeps_each_id_once(sp: Spool) -> None:
    own = sp.batch([C])
    own.add(b"own", "job-1")
    own.commit()
    sp.relays.store("x", C, [relayed(sp, "x", b"r", ident="job-1", origin="a")])
    sp.relays.store("x", C, [relayed(sp, "x", b"s", ident="job-2", origin="e")])
    names = queued(sp)
    sp.mark_sent("c", names)
    kept, origins = sp.relays.poll_origins("c", names)
    assert [m.split_out_name(n)[1] for n in kept] == ["job-1", "job-2"]
    assert origins == ["", "e"]


def test_purge_drops_index_entries_whose_message_is_gone(sp: Spool) -> None:
    items = [relayed(sp, "a", b"1"), relayed(sp, "a", b"2")]
    sp.relays.store("a", C, items)
    gone, kept = queued(sp)
    os.unlink(sp.path("out", "c", "queued", gone))  # as a purge of processed/ does
    assert sp.relays.purge(time.time() - 3600) == 0  # younger than the retention: kept
    assert sp.relays.purge(time.time() + 1) == 1
    left = os.listdir(sp.path("relay", "c", "a"))
    assert left == [m.split_out_name(kept)[1]]
    sp.config.retention = 0
    assert sp.purge(time.time() + 1) >= 0 and os.listdir(sp.path("relay", "c", "a")) == left


def test_the_relay_checks_each_message(tmp_path: Path) -> None:
    from dropr.relay import RelayUpload, refusal
    from dropr.server import make_app

    sp = Spool(
        str(tmp_path / "b"),
        config(relay=["a", "x"], trust_relays=["x"], tokens={"tok-of-a": "a", "tok-of-x": "x"}),
    )
    app: Any = make_app(sp)
    assert refusal(app, "e", "c") == "b does not relay for e: add it to serve.relay at b"
    assert refusal(app, "a", "d") == "b has no peer d: add [peers.d] at b"
    assert refusal(app, "a", "c") == ""
    up = RelayUpload(app, "a", C, "", b"boundary")
    hdr = m.Header("id1", "default", 5, 1, 0, 1, 0)
    assert up.vet(hdr) == ("a", "")
    hdr.origin, hdr.hops = "e", 1
    assert up.vet(hdr)[1] == "b does not take messages relayed by a: add it to serve.trust_relays"
    up = RelayUpload(app, "x", C, "", b"boundary")
    hdr.origin, hdr.hops = "a", 6
    assert up.vet(hdr) == ("a", "")  # the next would be hop 8: fine
    hdr.hops = 7
    assert up.vet(hdr) == ("", "too many hops: the next from b would be hop 9, at most 8")
    hdr.origin, hdr.hops = "b", 1
    assert up.vet(hdr) == ("", "loop: b's message came back to b")
    assert RelayUpload(app, "x", None, "no", b"boundary").vet(hdr) == ("", "no")


def test_a_peer_reached_through_a_relay_stays_so_when_it_leaves_the_config(tmp_path: Path) -> None:
    """Its folder's url is the relay's: without out/c/via, the sender would deliver its
    messages to the relay's inbox once [peers.c] is gone."""
    from dropr.sender import Sender, SendOptions

    conf = {"node": "a", "peers": {"b": {"url": "http://127.0.0.1:9/"}, "c": {"via": "b"}}}
    sp = Spool(str(tmp_path / "a"), Config(conf))
    put = sp.batch([sp.config.peers["c"]])
    put.add(b"p")
    put.commit()
    assert Path(sp.path("out", "c", "via")).read_text() == "b\n"
    assert not Path(sp.path("out", "b")).exists()
    later = Spool(str(tmp_path / "a"), Config({"node": "a", "peers": {"b": {"url": "http://127.0.0.1:9/"}}}))
    peer = Sender(later, SendOptions())._peer("c")
    assert (peer.url, peer.to, peer.via) == ("http://127.0.0.1:9/", "c", "b")
