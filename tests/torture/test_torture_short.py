"""The three-host torture, short and seeded, for `make test` (the long one: `make torture`).

About 30 s of messages at a, b and c while processes are SIGKILLed, links cut and
degraded, a spool filled to ENOSPC and a sender's clock stepped; then every printed id
must be consumed at each destination, stored once, acked, processed at its origin.
Needs root, iproute2, nftables, e2fsprogs and libfaketime (make sysdeps); skipped otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .__main__ import summary
from .run import Plan, missing_tools, run

pytestmark = [pytest.mark.slow, pytest.mark.netns]
SEED = 16


def test_three_hosts_under_faults_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    why = missing_tools()
    if why:
        pytest.skip(f"the torture run {why}")
    plan = Plan(SEED, 30, tmp_path, rate=24, drain=90, disk_mib=256, inodes=65536)
    res = run(plan, say=lambda s: None)
    detail = (
        summary(res) + "\n" + json.dumps({k: res[k] for k in ("examples", "deaths", "after_stop")}, indent=1)
    )
    assert res["ok"], detail
    assert res["lost"] == 0 and res["duplicated"] == 0, detail
    assert res["messages"] >= 500, detail
    assert res["deliveries"]["checked"] == res["deliveries"]["owed"], detail
    # the faults did happen: every kind, and kills of every command but the rarest
    assert res["kills"]["total"] >= 10 and res["network_events"]["total"] >= 3, detail
    assert res["disk_full_events"] >= 1 and res["clock_steps"]["total"] >= 1, detail
