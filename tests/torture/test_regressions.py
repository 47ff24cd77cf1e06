"""What the torture runs found, each kept as a test of its own (#16).

- A sender whose clock was stepped back after a failure kept the peer backed off for as
  long as the step (peer.json's backoff end is wall-clock time): an hour without a try.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers import Node, inbox_states, wait_until


def test_a_backoff_set_before_the_clock_stepped_back_ends_within_backoff_max(tmp_path: Path) -> None:
    a, b = Node(tmp_path, "a"), Node(tmp_path, "b")
    try:
        url = b.serve()
        a.config(f'[peers.b]\nurl = "{url}"\n[send]\nbackoff_min = "100ms"\nbackoff_max = "1s"\n')
        ident = a.put("after the step", "--to", "b")
        # the failure was recorded while the clock was an hour ahead: its backoff ends in an hour
        now = time.time()
        state = {
            "failures": 4,
            "until": now + 3600,
            "last_error": "HTTP 503",
            "last_error_at": now + 3599,
            "failing_since": now + 3590,
        }
        (a.spool / "out" / "b" / "peer.json").write_text(json.dumps(state))
        a.start_sender()
        wait_until(lambda: ident in inbox_states(b.spool), 10, "delivery within backoff_max, not in an hour")
    finally:
        a.stop_all()
        b.stop_all()
