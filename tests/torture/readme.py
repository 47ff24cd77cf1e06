"""Write README.md's Reliability section from the counts `make torture` left in .torture/.

    python tests/torture/readme.py [--out .torture] [--readme README.md]

Only the text between the markers <!-- reliability:begin --> and <!-- reliability:end -->
changes. Reads three-hosts.json (python -m tests.torture), crash-states.txt (the crash
explorer's output), crash-send.json, fuzz-wire.json and fuzz-parsers.json; what is missing
is left out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def crash_states(path: Path) -> tuple[int, int] | None:
    """(states checked, violations) from the explorer's last line."""
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"crash states checked: (\d+).*?violations: (\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def n(x: int) -> str:
    return f"{x:,}"


NAMES = {  # the run's names of what it killed or did to a link, in the README's words
    "serve": "dropr-serve (master)", "worker": "gunicorn worker", "send": "dropr-send",
    "recv": "dropr-recv --exec", "handler": "an --exec handler", "put": "dropr-put",
    "recv-pipe": "dropr-recv -n", "ack": "dropr-ack",
    "cut": "cut", "loss": "loss", "delay": "slow", "reorder": "reordering", "mixed": "loss and reordering",
}  # fmt: skip


def parts(d: dict[str, Any]) -> str:
    shown = sorted(((k, v) for k, v in d.items() if k != "total" and v), key=lambda kv: -kv[1])
    return ", ".join(f"{NAMES.get(k, k)} {n(v)}" for k, v in shown)


def listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def section(out: Path) -> str:
    t = load(out / "three-hosts.json")
    crash = crash_states(out / "crash-states.txt")
    wire, parsers = load(out / "fuzz-wire.json"), load(out / "fuzz-parsers.json")
    send = load(out / "crash-send.json")
    rows = []
    if crash:
        rows.append(
            (
                "Power-loss crash states, recovered and checked (tests/crash_explorer.py)",
                f"{n(crash[0])}, {n(crash[1])} violations",
            )
        )
    if send:
        rows.append(
            (
                "Power-loss crash states of the installed dropr-send --once and dropr-serve, traced "
                "across two hosts (tests/crash_strace_send.py)",
                f"{n(send['states'])}, {n(send['violations'])} violations",
            )
        )
    if t:
        d = t["deliveries"]
        rows += [
            (
                "Messages put at three hosts in network namespaces, each printed id checked at every "
                "destination (multicast, a spread group with keys, a failover group, a relay a → b → c)",
                f"{n(t['messages'])} ({n(d['owed'])} deliveries)",
            ),
            (
                "SIGKILLs of dropr processes, each daemon restarted",
                f"{n(t['kills']['total'])} ({parts(t['kills'])})",
            ),
            (
                "Network events: link cuts, packet loss, slow links, reordering",
                f"{n(t['network_events']['total'])} ({parts(t['network_events'])})",
            ),
            ("A spool's filesystem filled to ENOSPC, then freed", n(t["disk_full_events"])),
            ("A sender's clock stepped by ±1 h (libfaketime)", n(t["clock_steps"]["total"])),
        ]
    if wire:
        rows.append(
            (
                "Fuzzed HTTP requests to a real dropr-serve (tests/fuzz/wire.py)",
                f"{n(wire['inputs'])}, {len(wire['findings'])} findings",
            )
        )
    if parsers:
        total = sum(v["inputs"] for v in parsers.values())
        rows.append(
            (
                f"Fuzzed inputs to the {listed(sorted(parsers))} parsers (tests/fuzz/parsers.py)",
                f"{n(total)}, {sum(v['findings'] for v in parsers.values())} findings",
            )
        )
    lines = [
        "What `make torture` tried on its last run, and what it found (written by",
        "tests/torture/readme.py from the counts in .torture/).",
        "",
        "| Tried | Count |",
        "|---|---|",
    ]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines.append("")
    if t:
        lines += outcome(t)
    else:
        lines.append("The three-host run has not been run (no .torture/three-hosts.json).")
    return "\n".join(lines)


def outcome(t: dict[str, Any]) -> list[str]:
    v = t["violations"]
    others = ", ".join(
        f"{k.replace('_', ' ')} {n(x)}" for k, x in v.items() if x and k not in ("lost", "duplicated")
    )
    mins = round(t["load_seconds"] / 60)
    seed = t["seed"]
    return [
        f"Lost: **{n(t['lost'])}**. Stored twice in an inbox (or at two members of a group): "
        f"**{n(t['duplicated'])}**. Other violations: {others or 'none'}. Daemons that died of their own: "
        f"{n(t['daemon_deaths'])}; down at the end: {len(t['down_at_end'])}. After the drain "
        f"({t['drain_seconds']:.0f} s) every id was consumed at each destination, acked once and "
        "processed at its origin; a sweep left no debris and `dropr-ls --verify` found every message "
        "intact."
        if t["ok"]
        else "The run FAILED: see .torture/three-hosts.json.",
        "",
        f"Machine: {t['machine']['nproc']} CPUs, {t['machine']['uname']}; {mins} minutes of load, "
        f"{t['wall_seconds'] / 60:.0f} minutes in all; seed {seed}.",
        "",
        f"Rerun: `make torture TORTURE_SEED={seed} TORTURE_MINUTES={mins}`, or only the three hosts: "
        f"`{t['command']}` (as root). The seed fixes the random draws (what kind of process is killed, "
        "which link, disk and clock, what is put where); the timing of the processes, and so what "
        "exactly each draw hits, cannot be fixed.",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".torture")
    ap.add_argument("--readme", default="README.md")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"readme.py: {readme} has no {BEGIN} ... {END}", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{section(Path(args.out))}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
