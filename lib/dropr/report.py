"""What dropr-ls shows: summaries, listings and single-message details of a spool.

Everything is read from names and one lstat per file: no file is opened for a
summary, so a million messages take seconds. A file in a state folder that is no
message (see spool.stray_test) is not counted or listed but reported on stderr; it
stays where it is: the process that owns the folder moves it to corrupt/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import IO, Any

from . import message as m
from .config import group_of
from .spool import IN_STATES, OUT_STATES, STRAY_WHY, Spool, stray_test

log = logging.getLogger(__name__)


class Filter:
    """Which part of the spool to look at."""

    __slots__ = ("box", "peer", "channel", "state")

    def __init__(
        self,
        *,
        box: str | None = None,
        peer: str | None = None,
        channel: str | None = None,
        state: str | None = None,
    ) -> None:
        self.box = box
        self.peer = peer
        self.channel = channel
        self.state = state

    def places(self, spool: Spool) -> Iterator[tuple[str, str, str]]:
        """Yield (box, name, state) folders that match (--peer GROUP: its members' too)."""
        if self.box in (None, "out") and self.channel is None:
            for peer in out_folders(spool):
                if self.peer in (None, peer, group_of(peer)):
                    for st in OUT_STATES:
                        if self.state in (None, st):
                            yield "out", peer, st
        if self.box in (None, "in") and self.peer is None:
            for ch in spool.channels():
                if self.channel in (None, ch):
                    for st in IN_STATES:
                        if self.state in (None, st):
                            yield "in", ch, st


LIVE = ("queued", "sent", "ready", "wait", "claimed")  # still to deliver or consume


def _scan(folder: str, box: str) -> tuple[int, int, str, int]:
    """Return count, payload bytes, the smallest arrival prefix and the strays of a state folder.

    One lstat per message, relative to the folder's descriptor (no path lookups).
    Files that are no messages are only counted as strays.
    """
    header = m.HEADER_SIZE if box == "out" else 0
    stray = stray_test(box)
    count = 0
    size = 0
    strays = 0
    oldest = "~"
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0, "", 0
    try:
        with os.scandir(dfd) as it:
            for e in it:
                name = e.name
                if stray(name):
                    strays += 1
                    continue
                try:
                    size += e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                count += 1
                arr = name[1:14]
                if arr < oldest:
                    oldest = arr
    finally:
        os.close(dfd)
    return count, size - header * count, oldest if count else "", strays


def _report_strays(folder: str, count: int) -> None:
    """Say on stderr that a state folder holds files that are no messages (not counted)."""
    log.warning(
        "stray folder=%s files=%d reason=%s (not counted; the sender, consumer or purge working "
        "there moves them to corrupt/)",
        folder,
        count,
        STRAY_WHY,
    )


def out_folders(spool: Spool) -> list[str]:
    """Return the outbox folders by name, a group's members after it in config order."""

    def key(folder: str) -> tuple[str, int, str]:
        group = group_of(folder)
        peer = spool.config.peers.get(group or "")
        if group is None or peer is None:
            return folder, -1, ""
        names = [p.name for p in peer.members]
        return group, names.index(folder) if folder in names else len(names), folder

    return sorted(spool.out_peers(), key=key)


def member_of(spool: Spool, folder: str, folders: list[str]) -> tuple[str, str | None]:
    """Return (the name dropr-ls shows, member) for an outbox folder: a group member's
    folder shows as its group with the member's url; the group's own queue as the group
    with member ""; any other peer as itself with no member (None)."""
    group = group_of(folder)
    if group is not None:
        try:
            return group, spool.peer_url(folder)
        except OSError:
            return group, folder
    if any(group_of(f) == folder for f in folders):
        return folder, ""
    return folder, None


def summary(spool: Spool, flt: Filter) -> list[dict[str, Any]]:
    """Return one row per (box, name, state) with count, bytes and oldest arrival (epoch s);
    a peer group's rows carry "member" (member_of)."""
    rows = []
    folders = spool.out_peers() if flt.box != "in" else []
    for box, name, state in flt.places(spool):
        folder = spool.path(box, name, state)
        count, size, oldest, strays = _scan(folder, box)
        if strays:
            _report_strays(folder, strays)
        if count or flt.state or state in ("queued", "ready"):
            shown, member = member_of(spool, name, folders) if box == "out" else (name, None)
            row = {"box": box, "name": shown, "state": state, "count": count, "bytes": size}
            row["oldest"] = int(oldest, 16) / 1e6 if oldest else None
            if member is not None:
                row["member"] = member
            rows.append(row)
    return rows


def peers(spool: Spool, flt: Filter, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Return per-peer health: backlog, age of oldest queued, last success, last error.

    Pass the summary's rows to reuse its scans of queued/ (each one a stat per file).
    """
    queued = {
        (r["name"], r.get("member")): r for r in rows or () if r["box"] == "out" and r["state"] == "queued"
    }
    out: list[dict[str, Any]] = []
    if flt.box not in (None, "out") or flt.channel is not None:
        return out
    folders = out_folders(spool)
    for peer in folders:
        if flt.peer not in (None, peer, group_of(peer)):
            continue
        shown, member = member_of(spool, peer, folders)
        if (shown, member) in queued:
            row = queued[shown, member]
            count, size, oldest_s = row["count"], row["bytes"], row["oldest"]
        else:
            count, size, oldest, _ = _scan(spool.path("out", peer, "queued"), "out")
            oldest_s = int(oldest, 16) / 1e6 if oldest else None
        st = spool.peer_state(peer)
        try:
            url = spool.peer_url(peer)
        except OSError:
            url = ""
        row = {"peer": shown, "url": url, "backlog": count, "bytes": size, "oldest": oldest_s}
        row.update(last_ok=st.get("last_ok") or None)  # 0: never (not the epoch)
        row.update(last_error=st.get("last_error"), last_error_at=st.get("last_error_at"))
        row.update(backoff_until=st.get("until"))
        if member is not None:
            row["member"] = member
        out.append(row)
    return out


def messages(spool: Spool, flt: Filter) -> Iterator[dict[str, Any]]:
    """Yield one record per message in the matching folders, in folder order."""
    for box, name, state in flt.places(spool):
        folder = spool.path(box, name, state)
        try:
            metas = set(os.listdir(spool.path(box, name, "meta")))
        except FileNotFoundError:
            metas = set()
        strays: list[str] = []  # left where they are: dropr-ls changes nothing
        if box == "out":
            names = spool.out_names(name, state, strays=strays)
        else:
            names = spool.in_names(name, state, strays=strays)
        if strays:
            _report_strays(folder, len(strays))
        for fn in names:
            yield _record(spool, box, name, state, folder, fn, metas)


def _record(
    spool: Spool, box: str, name: str, state: str, folder: str, fn: str, metas: set[str]
) -> dict[str, Any]:
    path = os.path.join(folder, fn)
    try:
        st = os.lstat(path)
        size = st.st_size
    except FileNotFoundError:
        size = 0
    if box == "out":
        prio, arrival, ident = m.parse_out_name(fn)
        size -= m.HEADER_SIZE
        key, origin = ident, spool.node
        meta = spool.out_meta(name, ident) if ident in metas else {}
        attempts = int(meta.get("attempts", 0))
    else:
        prio, arrival, origin, ident = m.parse_in_name(fn)
        key = f"{origin},{ident}"
        meta = spool.in_meta(name, origin, ident) if key in metas else {}
        attempts = int(meta.get("returns", 0))
    rec: dict[str, Any] = {
        "id": ident,
        "box": box,
        "name": name,
        "state": state,
        "priority": prio,
        "size": max(size, 0),
        "attempts": attempts,
        "created": arrival / 1e6,
        "path": path,
        "error": meta.get("error"),
    }
    if box == "in":
        rec["origin"] = origin
    return rec


def details(spool: Spool, ident: str) -> list[dict[str, Any]]:
    """Return everything known about one id, outbox and inbox, one record per place."""
    found = []
    for peer, state, fn in spool.find_out(ident):
        rec = _record(spool, "out", peer, state, spool.path("out", peer, state), fn, {ident})
        try:
            hdr = spool.read_header(peer, state, fn)
            rec.update(channel=hdr.channel, created=hdr.created / 1e6, deadline=hdr.deadline / 1e6 or None)
        except (OSError, ValueError) as exc:
            rec["error"] = f"unreadable: {exc}"
        pst = spool.peer_state(peer)
        if state == "queued" and pst.get("until"):
            rec["next_attempt"] = pst["until"]
        failing = float(pst.get("last_error_at") or 0) > float(pst.get("last_ok") or 0)
        if state == "queued" and not rec.get("error") and pst.get("last_error") and failing:
            rec["error"] = f"peer: {pst['last_error']}"
        found.append(rec)
    origin, _, bare = ident.rpartition(",")
    origins = [origin] if origin else spool.origins()
    for o in origins:
        hit = spool.find_in(o, bare)
        if hit is None:
            continue
        ch, state, fn, created = hit
        rec = _record(spool, "in", ch, state, spool.path("in", ch, state), fn, {f"{o},{bare}"})
        rec["created"] = created / 1e6
        if state in ("claimed", "wait"):
            try:
                key = "lease_until" if state == "claimed" else "next_attempt"
                rec[key] = os.lstat(rec["path"]).st_mtime
            except FileNotFoundError:
                pass
        found.append(rec)
    return found


def spool_bytes(spool: Spool) -> int:
    """Return the bytes of every message still to deliver or consume (for the quota).

    Only the live states are read: done, processed and dead, kept for the retention
    period, can be most of a spool and do not count.
    """
    return sum(
        _scan(spool.path(box, name, state), box)[1]
        for box, name, state in Filter().places(spool)
        if state in LIVE
    )


# -- formatting ---------------------------------------------------------------


def age(ts: float | None, now: float | None = None) -> str:
    """Format the age of a timestamp compactly: 850ms, 42s, 7m, 3h, 2d."""
    if ts is None:
        return "-"
    s = (now or time.time()) - ts
    if s < 1:
        return f"{max(s, 0) * 1000:.0f}ms"
    for unit, div in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= div:
            return f"{s / div:.0f}{unit}"
    return f"{s:.0f}s"


def human_bytes(n: int) -> str:
    """Format a byte count: 512B, 1.5KiB, 20MiB."""
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f}{unit}" if unit == "B" or v >= 100 else f"{v:.1f}{unit}"
        v /= 1024
    return f"{n}B"


def table(rows: list[list[str]]) -> str:
    """Align rows of strings into columns."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return (
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"
    )


def summary_text(rows: list[dict[str, Any]], prs: list[dict[str, Any]]) -> str:
    """Render the summary table and, when there are peers, their health; a MEMBER column
    when there is a peer group (its queue's member shows as "-", other peers' blank)."""
    grouped = any("member" in r for r in (*rows, *prs))

    def member(r: dict[str, Any]) -> list[str]:  # blank: no group; "-": the group's queue
        return [(r["member"] or "-") if "member" in r else ""] if grouped else []

    out = table(
        [["BOX", "NAME", *(["MEMBER"] if grouped else []), "STATE", "COUNT", "BYTES", "OLDEST"]]
        + [
            [r["box"], r["name"], *member(r), r["state"], str(r["count"]), human_bytes(r["bytes"])]
            + [age(r["oldest"])]
            for r in rows
        ]
    )
    if prs:
        out += "\n" + table(
            [["PEER", *(["MEMBER"] if grouped else []), "BACKLOG", "OLDEST", "LAST-OK", "LAST-ERROR"]]
            + [
                [
                    p["peer"],
                    *member(p),
                    str(p["backlog"]),
                    age(p["oldest"]),
                    f"{age(p['last_ok'])} ago" if p["last_ok"] else "never",
                    f"{age(p['last_error_at'])} ago: {p['last_error']}" if p["last_error"] else "-",
                ]
                for p in prs
            ]
        )
    return out


def message_line(rec: dict[str, Any]) -> str:
    """Render one message for -l."""
    err = f"  {rec['error']}" if rec.get("error") else ""
    return (
        f"{rec['id']}  {rec['box']}  {rec['name']}  {rec['state']}  p{rec['priority']}  "
        f"{human_bytes(rec['size'])}  {age(rec['created'])}  a{rec['attempts']}{err}\n"
    )


def json_line(rec: dict[str, Any]) -> str:
    """Render one record as a JSON line."""
    return json.dumps(rec, sort_keys=False) + "\n"


def prom(rows: list[dict[str, Any]], prs: list[dict[str, Any]], now: float | None = None) -> str:
    """Render Prometheus text exposition for node_exporter's textfile collector."""
    now = now or time.time()
    lines: list[str] = []

    def metric(name: str, text: str, samples: list[tuple[str, float | int]]) -> None:
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} gauge"))
        lines.extend(f"{name}{{{labels}}} {value}" for labels, value in samples)

    def where(r: dict[str, Any]) -> str:
        return f'box="{r["box"]}",name="{r["name"]}",state="{r["state"]}"' + member(r)

    def member(r: dict[str, Any]) -> str:
        if "member" not in r:
            return ""
        value = r["member"].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f',member="{value}"'

    metric("dropr_messages", "Messages in a spool state.", [(where(r), r["count"]) for r in rows])
    metric("dropr_bytes", "Payload bytes in a spool state.", [(where(r), r["bytes"]) for r in rows])
    metric(
        "dropr_oldest_age_seconds",
        "Age of the oldest message in a spool state.",
        [(where(r), round(now - r["oldest"], 3) if r["oldest"] else 0) for r in rows],
    )
    metric(
        "dropr_peer_last_success_timestamp_seconds",
        "Last successful delivery to a peer.",
        [(f'peer="{p["peer"]}"' + member(p), p["last_ok"]) for p in prs if p["last_ok"]],  # none: never
    )
    metric(
        "dropr_peer_failing",
        "Whether the last attempt to a peer failed.",
        [
            (
                f'peer="{p["peer"]}"' + member(p),
                1 if p["last_error"] and (p["last_error_at"] or 0) > (p["last_ok"] or 0) else 0,
            )
            for p in prs
        ],
    )
    return "\n".join(lines) + "\n"


class LsRequest:
    """What dropr-ls was asked to show; check() holds the rules between its options."""

    __slots__ = (
        "only_out", "only_in", "peer", "channel", "state", "listing", "as_json", "as_prom", "ids", "verify",
    )  # fmt: skip

    def __init__(
        self,
        *,
        only_out: bool = False,
        only_in: bool = False,
        peer: str | None = None,
        channel: str | None = None,
        state: str | None = None,
        listing: bool = False,
        as_json: bool = False,
        as_prom: bool = False,
        ids: list[str] | tuple[str, ...] = (),
        verify: bool = False,
    ) -> None:
        self.only_out = only_out
        self.only_in = only_in
        self.peer = peer
        self.channel = channel
        self.state = state
        self.listing = listing
        self.as_json = as_json
        self.as_prom = as_prom
        self.ids = list(ids)
        self.verify = verify

    def check(self) -> None:
        """Refuse options that exclude each other, rather than let the last one win quietly."""
        from .errors import DataError, UsageError

        if self.only_out and self.only_in:
            raise UsageError("--out and --in exclude each other; give neither for both boxes")
        if self.as_json and self.as_prom:
            raise UsageError("--json and --prom exclude each other")
        if self.as_prom and (self.listing or self.ids):
            raise UsageError("--prom prints the summary; -l and ID do not apply")
        if self.verify and (self.listing or self.ids or self.as_prom):
            raise UsageError("--verify checks every message (of --in, --out, --peer, --channel, --state); "
                             "-l, --prom and ID do not apply")  # fmt: skip
        for value, kind in ((self.channel, "channel"), (self.peer, "peer")):
            if value is not None:
                try:
                    m.check_name(value, kind)
                except ValueError as exc:
                    raise DataError(f"bad {kind} {value!r}: {exc}") from None

    def filter(self) -> Filter:
        """Return the part of the spool to look at."""
        box = "out" if self.only_out else "in" if self.only_in else None
        return Filter(box=box, peer=self.peer, channel=self.channel, state=self.state)

    def run(
        self, spool: Spool, out: IO[str] | None = None, err: IO[str] | None = None, *, progress: bool = False
    ) -> int:
        """Write the details of ids, one line per message, or the summary; 1 if an id is not found
        (or, with verify, if a message was corrupt). progress: a bar on stderr for --verify."""
        import sys

        from .errors import EX_NOTFOUND

        w = (out or sys.stdout).write
        if self.verify:
            from .verify import verify

            counts = verify(spool, self.filter(), progress=progress)
            w(json_line(counts.as_dict()) if self.as_json else counts.text())
            return EX_NOTFOUND if counts.corrupt else 0
        if self.ids:
            missing = 0
            for ident in self.ids:
                recs = details(spool, ident)
                if not recs:
                    err = err or sys.stderr
                    err.write(f"dropr-ls: error: no message {ident!r} in {spool.root}\n")
                    err.flush()
                    missing += 1
                render = json_line if self.as_json else message_line if self.listing else detail_text
                for rec in recs:
                    w(render(rec))
            return EX_NOTFOUND if missing else 0
        flt = self.filter()
        if self.listing:
            for rec in messages(spool, flt):
                w(json_line(rec) if self.as_json else message_line(rec))
            return 0
        rows = summary(spool, flt)
        prs = peers(spool, flt, rows)
        if self.as_json:
            for r in rows:
                w(json_line(r))
        elif self.as_prom:
            w(prom(rows, prs))
        else:
            w(summary_text(rows, prs))
        return 0


def detail_text(rec: dict[str, Any]) -> str:
    """Return one message's details as aligned KEY  VALUE lines and a blank line."""
    width = max(len(k) for k in rec)
    return "".join(f"{k.ljust(width)}  {'-' if v is None else v}\n" for k, v in rec.items()) + "\n"
