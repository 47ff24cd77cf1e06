"""After the daemons stopped: the sweep the commands run at start-up, then what it leaves.

The sweep is Retention.purge as dropr-send and dropr-serve run it, with the clock 37 h on
(a tmp/ file or a never-stored rcv/ entry is swept once untouched for 36 h): after it, no
tmp/ file and no rcv/ entry without its message may be left. Then dropr-ls --verify reads
every message and checks its checksum.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dropr import config
from dropr.spool import Spool

from .check import debris

BIN = Path(sys.executable).parent


def after_stop(spools: dict[str, Path], envs: dict[str, dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    for n, spool in spools.items():
        sp = Spool(str(spool), config.load(str(spool)))
        swept = sp.retention.purge(now=time.time() + 37 * 3600)
        left = debris(spool)
        v = subprocess.run(
            [str(BIN / "dropr-ls"), "--verify"], env=envs[n], capture_output=True, text=True, timeout=600
        )
        st = os.statvfs(spool)
        out[n] = {
            "bytes_used": (st.f_blocks - st.f_bfree) * st.f_frsize,
            "inodes_used": st.f_files - st.f_ffree,
            "swept": swept,
            "debris": left[:20],
            "verify_exit": v.returncode,
            "verify": (v.stdout + v.stderr).strip().splitlines()[-3:],
        }
        if left or v.returncode != 0:
            out["ok"] = False
    return out
