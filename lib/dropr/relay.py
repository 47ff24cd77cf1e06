"""The relay's side of the wire: POST v1/relay and v1/relay/status (dropr.7, RELAYS).

A client (``serve.relay``) uploads messages for a destination (X-Dropr-To) as it would
to v1/messages; this node keeps each in its own outbox for that destination (never in
its inbox) and its sender passes it on. The parsing is the server's (server.Upload);
RelayUpload changes only what each part is checked against, where it is written and
how the good ones are committed (spool/relay.py: Relays.open and Relays.store).

Refused per message and for good (the client's other messages go on): a client not in
serve.relay, a destination with no peer here, a loop (the message's origin, or the
client, is this node; or this node relayed it before from another client), too many
hops (the next would be beyond message.MAX_HOPS), a relayed message (o=) from a client
not trusted to relay (serve.trust_relays, as at a destination).

A destination that is this node itself is served as v1/messages and v1/status are.
"""

from __future__ import annotations

from typing import Any

from . import message as m
from . import protocol as wire
from .config import Peer
from .server import App, HTTPError, Upload, _is_name, _status_request


class RelayUpload(Upload):
    """An upload whose good parts are queued for a destination, not stored in the inbox."""

    def __init__(self, app: App, client: str, dest: Peer | None, refusal: str, boundary: bytes) -> None:
        super().__init__(app.spool, client, app.cfg.max_message_size, boundary, trusted=app.trusts(client))
        self.dest = dest
        self.refusal = refusal  # every part's, when the whole request cannot be relayed
        self.relays = app.spool.relays

    def vet(self, hdr: m.Header) -> tuple[str, str]:
        """Return (the message's first origin, "") or ("", why it is refused for good)."""
        if self.refusal:
            return "", self.refusal
        origin, why = super().vet(hdr)
        if why:
            return "", why
        node = self.spool.node
        if node in (origin, self.origin):
            return "", f"loop: {origin}'s message came back to {node}"
        if hdr.hops + 1 >= m.MAX_HOPS:
            nth = hdr.hops + 2
            return "", f"too many hops: the next from {node} would be hop {nth}, at most {m.MAX_HOPS}"
        return origin, ""

    def open(self, origin: str, hdr: m.Header, entry: bool) -> Any:
        """Start the relayed message's outbox file (its new header first)."""
        return self.relays.open(self.origin, hdr)

    def commit(self) -> None:
        """Queue the good parts for the destination; a loop found in the index is refused."""
        assert self.dest is not None or all(p.refused for p in self.parts)
        good = [p for p in self.parts if not p.refused and p.header and p.tmp]
        if not good or self.dest is None:
            return
        answers = self.relays.store(self.origin, self.dest, [(p.tmp, p.header) for p in good if p.header])
        for p, (status, why) in zip(good, answers, strict=True):
            if status == wire.REFUSED:
                p.refused = why
            else:
                p.result = status


def destination(environ: dict[str, Any]) -> str:
    """Return the X-Dropr-To of a request, checked, or raise the 400."""
    dest = environ.get(wire.TO_ENVIRON, "")
    try:
        return m.check_name(dest, wire.TO_HEADER)
    except ValueError as exc:
        raise HTTPError(wire.HTTP_BAD_REQUEST, f"bad {wire.TO_HEADER} {dest!r}: {exc}") from None


def refusal(app: App, client: str, dest: str) -> str:
    """Return why no message of client can be relayed to dest, or ""."""
    node = app.spool.node
    if client not in app.cfg.relay:
        return f"{node} does not relay for {client}: add it to serve.relay at {node}"
    if dest not in app.cfg.peers:
        return f"{node} has no peer {dest}: add [peers.{dest}] at {node}"
    return ""


def upload(app: App, environ: dict[str, Any]) -> dict[str, Any]:
    """POST v1/relay: queue each good part for X-Dropr-To; answer for each part."""
    client = app.origin(environ)
    dest = destination(environ)
    if dest == app.spool.node:
        return app.messages(environ)
    why = refusal(app, client, dest)
    peer = None if why else app.cfg.peers[dest]
    return app.upload(environ, client, lambda b: RelayUpload(app, client, peer, why, b))


def status(app: App, environ: dict[str, Any]) -> dict[str, Any]:
    """POST v1/relay/status: the state of each id this client relayed to X-Dropr-To here."""
    client = app.origin(environ)
    dest = destination(environ)
    if dest == app.spool.node:
        return app.status(environ)
    ids, _, origins = _status_request(app.status_body(environ))
    relays = app.spool.relays
    results = {}
    for ident, first in zip(ids, origins, strict=True):
        if not isinstance(ident, str):
            continue
        try:
            m.check_id(ident)
        except ValueError:
            results[ident] = {wire.STATE: wire.UNKNOWN, wire.REASON: "bad id"}
            continue
        origin = first if isinstance(first, str) and first else client
        if not _is_name(origin):
            results[ident] = {wire.STATE: wire.UNKNOWN, wire.REASON: "bad origin"}
            continue
        state, reason = relays.status(client, dest, origin, ident)
        results[ident] = {wire.STATE: state, wire.REASON: reason} if reason else {wire.STATE: state}
    return {wire.RESULTS: results}
