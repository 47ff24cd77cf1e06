"""The checker: every printed id against the spools and the consumers' logs.

For each owed message (load.Owed) and each of its --to names: the origin's outbox holds it
processed (for a group: in exactly one member's folder, none left in the group's queue);
the destination's inbox holds it exactly once, in done/, with its rcv/ index entry; the
destination's consumers logged it at least once with the payload's MD5; and no other
member of a group stored it. Any inbox holding a message twice (owed or not) is a
duplicate; an outbox entry not processed at the end is a receipt that did not converge.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .load import Owed

IN_STATES = ("ready", "wait", "claimed", "done", "dead")
OUT_STATES = ("queued", "sent", "processed", "dead")


def listdir(path: str | Path) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Found:
    """One node's spool as the checker sees it."""

    inbox: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    no_index: int = 0
    outbox: dict[str, dict[str, str]] = field(default_factory=dict)  # folder -> id -> state
    urls: dict[str, str] = field(default_factory=dict)  # folder -> url
    consumed: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))


def scan(spool: Path, log: Path) -> Found:
    f = Found()
    for ch in listdir(spool / "in"):
        for st in IN_STATES:
            for name in listdir(spool / "in" / ch / st):
                parts = name.split(",")
                if len(parts) != 3:
                    continue
                f.inbox[(parts[1], parts[2])].append(st)
    for origin, ident in f.inbox:
        if not os.path.lexists(spool / "rcv" / origin / ident):
            f.no_index += 1
    for folder in listdir(spool / "out"):
        ids: dict[str, str] = {}
        for st in OUT_STATES:
            for name in listdir(spool / "out" / folder / st):
                if "," in name:
                    ident = name.split(",", 1)[1]
                    # a move cut between link and unlink shows in two states: the later one counts
                    ids[ident] = st
        f.outbox[folder] = ids
        try:
            f.urls[folder] = (spool / "out" / folder / "url").read_text().strip()
        except OSError:
            pass
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            f.consumed[(parts[0], parts[1])].append(parts[2])
    return f


@dataclass
class Verdict:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def bad(self, what: str, example: str) -> None:
        self.counts[what] += 1
        if len(self.examples[what]) < 10:
            self.examples[what].append(example)

    @property
    def violations(self) -> int:
        return sum(n for k, n in self.counts.items() if k in VIOLATIONS)


VIOLATIONS = (
    "lost",
    "duplicated",
    "not_done",
    "not_consumed",
    "bad_checksum",
    "not_processed",
    "in_two_members",
    "group_queue_left",
    "no_index",
    "outbox_unsettled",
    "undelivered",
)


def check(
    owed: list[Owed], found: dict[str, Found], groups: dict[str, set[str]], node_of_url: dict[str, str]
) -> Verdict:
    """groups: origin -> its group names; node_of_url: a member url -> the node serving it."""
    v = Verdict()
    for node, f in found.items():
        for key, states in f.inbox.items():
            if len(states) > 1:
                v.bad("duplicated", f"{node} holds {key[0]}/{key[1]} {len(states)} times: {states}")
        if f.no_index:
            v.counts["no_index"] += f.no_index
        for folder, ids in f.outbox.items():
            for ident, st in ids.items():
                if st != "processed":
                    v.bad("outbox_unsettled", f"{node} out/{folder} {ident} {st}")
    owed_keys = set()
    for o in owed:
        owed_keys.add((o.origin, o.ident))
        for to in o.to:
            _one(v, o, to, found, groups.get(o.origin, set()), node_of_url)
        v.counts["deliveries_owed"] += len(o.to)
    for f in found.values():
        v.counts["stored"] += len(f.inbox)
        v.counts["stored_unowed"] += sum(1 for k in f.inbox if k not in owed_keys)
        v.counts["consumed_again"] += sum(len(x) - 1 for x in f.consumed.values() if len(x) > 1)
    return v


def _one(
    v: Verdict, o: Owed, to: str, found: dict[str, Found], groups: set[str], node_of_url: dict[str, str]
) -> None:
    at = found[o.origin]
    key = (o.origin, o.ident)
    where = f"{o.origin}/{o.ident} to {to}"
    if to in groups:
        if o.ident in at.outbox.get(to, {}):
            v.bad("group_queue_left", where)
        members = [fo for fo, ids in at.outbox.items() if fo.startswith(to + "+") and o.ident in ids]
        if len(members) != 1:
            v.bad("undelivered" if not members else "in_two_members", f"{where}: members {members}")
            if not members:
                return
        state = at.outbox[members[0]][o.ident]
        dest = node_of_url[at.urls[members[0]]]
        others = {node_of_url[at.urls[fo]] for fo in at.outbox if fo.startswith(to + "+")} - {dest}
        for other in others:
            if key in found[other].inbox:
                v.bad("in_two_members", f"{where}: at {dest} and {other}")
    else:
        state = at.outbox.get(to, {}).get(o.ident, "none")
        dest = to
    if state != "processed":
        v.bad("not_processed", f"{where}: {state} at the origin")
    states = found[dest].inbox.get(key, [])
    if not states:
        v.bad("lost", f"{where}: not in {dest}'s inbox")
        return
    if states != ["done"] and len(states) == 1:
        v.bad("not_done", f"{where}: {states[0]} at {dest}")
    sums = found[dest].consumed.get(key, [])
    if not sums:
        v.bad("not_consumed", f"{where}: no consumer at {dest} logged it")
    elif any(s != o.md5 for s in sums):
        v.bad("bad_checksum", f"{where}: MD5 {sums} at {dest}, put {o.md5}")
    v.counts["delivered"] += 1


def debris(spool: Path) -> list[str]:
    """tmp/ files, and rcv/ entries that no inbox state links (an upload never stored)."""
    out = [f"tmp/{n}" for n in listdir(spool / "tmp")]
    for origin in listdir(spool / "rcv"):
        for e in os.scandir(spool / "rcv" / origin):
            if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_nlink == 1:
                out.append(f"rcv/{origin}/{e.name}")
    return out
