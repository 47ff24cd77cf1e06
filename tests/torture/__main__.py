"""python -m tests.torture --minutes 30 --seed 0 --json .torture/three-hosts.json"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .run import Plan, missing_tools, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.torture", description=__doc__)
    ap.add_argument("--minutes", type=float, default=30, help="of load and faults (default 30)")
    ap.add_argument("--seconds", type=float, help="instead of --minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rate", type=float, default=0, help="messages a second, all nodes (default: 120,000 in 30 min)"
    )
    ap.add_argument("--drain", type=float, default=300, help="at most this long to settle afterwards (s)")
    ap.add_argument("--json", help="write the counts to this file")
    ap.add_argument("--work", help="keep the logs and the owed ids here (default: a temporary folder)")
    args = ap.parse_args(argv)
    why = missing_tools()
    if why:
        print(f"torture: {why}", file=sys.stderr)
        return 77
    secs = args.seconds if args.seconds is not None else args.minutes * 60
    with tempfile.TemporaryDirectory(prefix=f"torture-{args.seed}-", dir="/var/tmp") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        t0 = time.monotonic()
        res = run(
            Plan(args.seed, secs, work, rate=args.rate, drain=args.drain), say=lambda s: print(s, flush=True)
        )
        res["wall_seconds"] = round(time.monotonic() - t0, 1)
        span = f"--minutes {secs / 60:g}" if secs % 60 == 0 else f"--seconds {secs:g}"
        res["command"] = f"python -m tests.torture {span} --seed {args.seed}" + (
            f" --rate {args.rate:g}" if args.rate else ""
        )
    print(summary(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["ok"] else 1


def summary(r: dict) -> str:  # type: ignore[type-arg]
    v = ", ".join(f"{k} {n}" for k, n in r["violations"].items() if n) or "none"
    return (
        f"torture seed {r['seed']}: {r['messages']} messages over {r['load_seconds']:.0f} s "
        f"({r['deliveries']['owed']} deliveries owed, {r['deliveries']['checked']} checked), "
        f"{r['kills']['total']} kills, {r['network_events']['total']} network events, "
        f"{r['disk_full_events']} disk-full events, {r['clock_steps']['total']} clock steps, "
        f"{r['restarts']} restarts; drained in {r['drain_seconds']:.0f} s\n"
        f"lost {r['lost']}, duplicated {r['duplicated']}, violations: {v}; "
        f"daemon deaths {r['daemon_deaths']}, down at the end {r['down_at_end'] or 'none'}; "
        f"after stop: {'clean' if r['after_stop']['ok'] else r['after_stop']}\n"
        f"{'OK' if r['ok'] else 'FAILED'}"
    )


if __name__ == "__main__":
    sys.exit(main())
