"""The real binaries too, across two hosts: `dropr-send --once` at node a uploading to a
running `dropr-serve` at node b, both under one `strace -f`, read as one recording of the
world folder that holds both spools (var/spool/a and var/spool/b).

One tracer sees every process (serve's master, its workers and their threads, the
sender and libcurl's), and prints a call once it returns: a call that caused another
(b's fsync, then its answer, then a's link into sent/) comes before it in the log, so
one crash point over the merged order is a power loss of both hosts at that instant.
A loss of b alone is b's part of these states (b's checks never read a's tree); a can
only have moved to sent/ what b had answered before it, so had made durable first.

Promised, and checked in every state (``check``):
- a: every id dropr-put printed is in one outbox state, queued or sent, intact (or in
  both, a move cut in two, which the next pass completes);
- b: every id b answered stored (its answer on the socket, in the log) is in its inbox
  exactly once, intact, with its rcv/ entry; every upload sent again, as a sender that
  heard no answer resends it (a message a still has queued), is answered stored or
  duplicate and is in the inbox once;
- both: every message a moved to sent/ is in b's inbox, before any recovery runs.

Run it long: python tests/crash_strace_send.py --states 10000 [--json PATH] (make torture).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import crash_explorer as ce
import crash_strace as cs
from dropr import message as m
from dropr import protocol as wire
from dropr.config import Peer, url_peer_name
from dropr.spool import IN_STATES, OUT_STATES, Spool
from helpers import Node, free_port

# what a puts, and the id it chooses (None: generated): b stores a generated id through
# its rcv/ entry, a chosen one through tmp/ and a symlink
PAYLOADS: list[tuple[bytes, str | None]] = [(b"first\n", None), (b"second\n", None), (b"chosen\n", "order-7")]
SERVE_UP = 20.0  # seconds dropr-serve may take to listen, under strace


@dataclass
class SendStore:
    """A traced send+store: the recording of both spools, and a view of it for each."""

    rec: ce.Recording  # every operation under the world, in the order strace saw them finish
    a: ce.Recording  # rec at a's root: the printed ids promised for the peer
    b: ce.Recording  # rec at b's root: the ids b answered stored promised; every upload
    peer: str  # a's outbox folder for b
    ids: list[str]  # the printed ids, in put order


@contextlib.contextmanager
def as_node(name: str) -> Iterator[None]:
    """Run the block with DROPR_NODE=name (a spool takes its node name when first made)."""
    old = os.environ.get("DROPR_NODE")
    os.environ["DROPR_NODE"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["DROPR_NODE"]
        else:
            os.environ["DROPR_NODE"] = old


def receiver(root: Path) -> None:
    """Make b's spool as a node that has run before: made, and purged (so that no purge
    of a worker's falls due under the trace)."""
    with as_node("b"):
        sp = Spool(str(root))
    sp.purge_if_due()


def traced_send_store(world: Path, env: dict[str, str]) -> SendStore:
    """Put PAYLOADS at a for b (untraced), then run dropr-serve at b and dropr-send --once
    at a under one strace; return the recording with its promises."""
    a_root, b_root = world / "var" / "spool" / "a", world / "var" / "spool" / "b"
    b_root.parent.mkdir(parents=True)
    receiver(b_root)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    ids = [_put(a_root, url, payload, ident, env) for payload, ident in PAYLOADS]
    snap, data, mtimes = ce.read_tree(str(world))
    log = str(world.parent / "send.strace")
    _run_traced(world, log, a_root, b_root, port, env)
    said: list[tuple[int, bytes]] = []
    evs = cs.events(log, str(world), said)
    rec = ce.Recording("strace_send_store", str(world), str(world), snap, data, mtimes, evs)
    peer = url_peer_name(url)
    out = [ce.Promise(0, "out", i, p, (peer,)) for i, (p, _) in zip(ids, PAYLOADS, strict=True)]
    uploads = [_upload(a_root, peer, i) for i in ids]
    payloads = {u.hdr.ident: u.payload for u in uploads}
    stored = [ce.Promise(at, "in", i, payloads[i], ("a",)) for at, i in answered(said)]
    rec.promises = out + stored  # (the explorer checks a tree again once more is promised)
    view_a = dataclasses.replace(rec, root=str(a_root), promises=out)
    view_b = dataclasses.replace(rec, root=str(b_root), promises=stored, uploads=uploads)
    return SendStore(rec, view_a, view_b, peer, ids)


def _put(root: Path, url: str, payload: bytes, ident: str | None, env: dict[str, str]) -> str:
    exe = shutil.which("dropr-put")
    assert exe is not None
    args = [exe, "--to", url, *(("--id", ident) if ident else ())]
    full = {**env, "DROPR_SPOOL": str(root), "DROPR_NODE": "a"}
    return (
        subprocess.run(args, input=payload, capture_output=True, env=full, check=True).stdout.decode().strip()
    )


def _run_traced(world: Path, log: str, a_root: Path, b_root: Path, port: int, env: dict[str, str]) -> None:
    """dropr-serve at b until dropr-send --once at a has ended, all under one strace."""
    q = shlex.quote
    serve_log = q(str(world.parent / "serve.log"))
    tries = int(SERVE_UP / 0.05)
    b, a = (f"DROPR_SPOOL={q(str(root))} DROPR_NODE={root.name}" for root in (b_root, a_root))
    script = (
        f"{b} dropr-serve --listen 127.0.0.1:{port} 2>{serve_log} & s=$!\n"
        f"i=0; until grep -q listening {serve_log}; do i=$((i+1)); "
        f"if [ $i -gt {tries} ]; then kill $s; exit 99; fi; sleep 0.05; done\n"
        f"{a} dropr-send --once; rc=$?\n"
        "kill $s; wait $s; exit $rc\n"
    )
    p = subprocess.run([*cs.STRACE, "-o", log, "sh", "-c", script], env=env, capture_output=True)
    assert p.returncode == 0, (p.returncode, p.stderr.decode(), Path(world.parent / "serve.log").read_text())


def _upload(root: Path, peer: str, ident: str) -> ce.Upload:
    """The message a sends for ident, as b receives it (read from a's outbox)."""
    for state in OUT_STATES:
        folder = root / "out" / peer / state
        for name in os.listdir(folder) if folder.is_dir() else []:
            if m.split_out_name(name)[1] == ident:
                raw = (folder / name).read_bytes()
                return ce.Upload("a", m.Header.parse(raw[: m.HEADER_SIZE]), raw[m.HEADER_SIZE :])
    raise AssertionError(f"id={ident} is in no outbox state of a")


def answered(said: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    """(events before the answer, id) of each id an upload's answer said stored or
    duplicate: the bodies {"results": [...]} written to a socket."""
    out = []
    for at, chunk in said:
        try:
            body = json.loads(chunk)
        except ValueError:
            continue  # a status line and headers, a request, a multipart upload
        results = body.get(wire.RESULTS) if isinstance(body, dict) else None
        if isinstance(results, list):  # (a status poll's results are a dict)
            out += [
                (at, r[wire.ID]) for r in results if r.get(wire.STATUS_KEY) in (wire.STORED, wire.DUPLICATE)
            ]
    return out


# -- checking a state ----------------------------------------------------------------------


def check(ss: SendStore, st: ce.State, dest: str) -> list[str]:
    """Make a crash state of both spools a tree at dest; recover each as its commands do
    at start-up and return the violations (a's, then b's, and any message a holds sent
    that b does not have)."""
    ce.materialise(ss.rec, st, dest)
    a_root, b_root = (dest + v.root[len(ss.rec.world) :] for v in (ss.a, ss.b))
    bad = [f"a holds id={i} sent, which b has not stored" for i in sent_not_stored(a_root, b_root, ss.peer)]
    return bad + ce.check(ss.a, a_root, st.k) + ce.check(ss.b, b_root, st.k)


def sent_not_stored(a_root: str, b_root: str, peer: str) -> list[str]:
    """The ids a's tree holds in sent/ or processed/ for peer with no inbox entry in b's
    tree (read as the crash left them: a sender never sends those again)."""
    held = set()
    for state in ("sent", "processed"):
        folder = os.path.join(a_root, "out", peer, state)
        held |= {m.split_out_name(n)[1] for n in (os.listdir(folder) if os.path.isdir(folder) else [])}
    stored = set()
    for top, _, files in os.walk(os.path.join(b_root, "in")):
        if os.path.basename(top) != "meta":
            stored |= {n.rsplit(",", 1)[1] for n in files if n.count(",") >= 2}
    return sorted(held - stored)


def kinds(ss: SendStore, st: ce.State) -> set[str]:
    """Which of the crash windows a recovery has work in a state shows: "resent" (b
    stored a message a still has only queued: sent again, b answers duplicate), "moved"
    (a message in queued/ and sent/ at a: the move is completed), "indexed" (b's rcv/
    entry of a message its inbox lacks: replaced when it is sent again)."""
    found = set()
    names = set(st.entries)
    for i in ss.ids:
        at_a = {s for s in ("queued", "sent") if any(p.startswith(f"{ss.a.root}/out/{ss.peer}/{s}/")
                                                      and p.endswith("," + i) for p in names)}  # fmt: skip
        at_b = any(p.startswith(f"{ss.b.root}/in/") and p.endswith(",a," + i) for p in names)
        if at_b and at_a == {"queued"}:
            found.add("resent")
        if at_a == {"queued", "sent"}:
            found.add("moved")
        if f"{ss.b.root}/rcv/a/{i}" in names and not at_b:
            found.add("indexed")
    return found


def recover_by_the_commands(ss: SendStore, st: ce.State, dest: Path) -> list[str]:
    """Make a crash state a tree at dest and recover it with the installed commands, as
    the hosts do when the power is back: dropr-serve at b, one dropr-send --once at a.
    Return the violations: a printed id not sent (in sent/ alone), or not in b's inbox
    exactly once and intact."""
    ce.materialise(ss.rec, st, str(dest))
    spools = dest / "var" / "spool"
    a, b = Node(spools, "a"), Node(spools, "b")
    try:
        # b back on a new port (its old one may be taken by now): a's outbox is told so
        (a.spool / "out" / ss.peer / "url").write_text(b.serve("--workers", "1") + "\n")
        sent = a.send_once()
    finally:
        b.stop_all()
    bad = [f"dropr-send --once exited {sent.returncode}: {sent.stderr.decode()}"] if sent.returncode else []
    payloads = {u.hdr.ident: u.payload for u in ss.b.uploads}
    for i in ss.ids:
        at_a = [s for s in OUT_STATES for n in _names(a.spool / "out" / ss.peer / s) if n.endswith("," + i)]
        if at_a != ["sent"]:
            bad.append(f"printed id={i} is in {at_a} at a after the next send")
        at_b = [p for s in IN_STATES for p in (b.spool / "in" / "default" / s).glob(f"*,a,{i}")]
        if len(at_b) != 1 or at_b[0].read_bytes() != payloads[i]:
            bad.append(
                f"id={i} is in b's inbox as {[str(p.relative_to(b.spool)) for p in at_b]}, not once intact"
            )
    return bad


def _names(folder: Path) -> list[str]:
    return os.listdir(folder) if folder.is_dir() else []


def explore(
    ss: SendStore, budget: int, trees: Path, seed: int = 0, stop_after: int = 3
) -> tuple[int, list[str]]:
    """Check up to budget crash states of a traced send+store (every crash point gets a
    share, as crash_explorer.states gives it); return (states checked, the violations
    of the first stop_after bad states, described)."""
    n, found = 0, []
    for st in ce.states(ss.rec, budget, seed):
        dest = tempfile.mkdtemp(dir=trees)
        try:
            bad = check(ss, st, dest)
        except Exception as exc:  # noqa: BLE001 - a crash of recovery is a finding too
            bad = [f"recovery raised {type(exc).__name__}: {exc}"]
        n += 1
        if bad:
            found.append(ce._describe(ss.rec, st, dest, bad))
            if len(found) >= stop_after:
                break
        else:
            shutil.rmtree(dest)
    return n, found


# -- the same send+store through the seam ----------------------------------------------------


def seam_send_store(world: Path) -> tuple[ce.Recording, ce.Recording, str]:
    """The same send+store in this process: a's sender through one recording FS, b's
    app (served by wsgiref on a thread) through another; return (a's recording, b's,
    a's outbox folder for b). The caller clears DROPR_* from the environment."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from dropr.sender import SendOptions, run
    from dropr.server import make_app
    from dropr.spool._trace import TracingFS

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
            """Log nothing."""

    a_root, b_root = world / "var" / "spool" / "a", world / "var" / "spool" / "b"
    b_root.parent.mkdir(parents=True)
    receiver(b_root)
    fs_b = TracingFS()
    srv = make_server("127.0.0.1", 0, make_app(Spool(str(b_root), fs=fs_b), threads=4, read_timeout=0),
                      handler_class=Quiet)  # fmt: skip
    url = f"http://127.0.0.1:{srv.server_port}/"
    peer = Peer(url_peer_name(url), url)
    with as_node("a"):
        sp = Spool(str(a_root))
    for payload, ident in PAYLOADS:  # one dropr-put each
        batch = sp.batch([peer])
        batch.add(payload, ident)
        batch.commit()
    import threading

    serving = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    try:
        fs_a = TracingFS()
        assert run(Spool(str(a_root), fs=fs_a), SendOptions(once=True)) == 0
    finally:
        srv.shutdown()
        srv.server_close()
    rec = ce.Recording("seam_send_store", str(world), "", {}, {}, {}, [])
    return (dataclasses.replace(rec, root=str(a_root), events=fs_a.events),
            dataclasses.replace(rec, root=str(b_root), events=fs_b.events), peer.name)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Trace one send+store, check its crash states; print the count; exit 1 on a violation."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=3000, help="about this many states")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts to this file")
    args = ap.parse_args(argv)
    if not cs.have_strace():
        print("strace is not installed or may not trace here: nothing checked")
        return 0
    start = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")}
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # trees made and dropped fast
    with (
        tempfile.TemporaryDirectory(prefix="dropr-crash-send-") as work,
        tempfile.TemporaryDirectory(prefix="dropr-crash-send-", dir=shm) as trees,
    ):
        ss = traced_send_store(Path(work) / "world", env)
        n, found = explore(ss, args.states, Path(trees), args.seed, 20)
        for v in found:
            print(v, end="\n\n")
    secs = time.monotonic() - start
    more = "+" if len(found) >= 20 else ""
    print(f"strace_send_store: {len(ss.rec.events)} operations, crash states checked: {n}, "
          f"violations: {len(found)}{more}, seed {args.seed}, {secs:.0f} s")  # fmt: skip
    if args.json:
        counts = {"scenario": ss.rec.name, "operations": len(ss.rec.events), "states": n,
                  "violations": len(found), "seed": args.seed, "seconds": round(secs, 1)}  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(counts, indent=1) + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
