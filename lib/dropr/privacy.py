"""Who else can read what dropr keeps: warnings for the daemons to give once at start.

A spool is private to the user that runs dropr, and to an operators' group when the
config names one (``group``): new spools are made that way (spool.PRIVATE_MODES,
GROUP_MODES). A spool made by an earlier release, or a config file with tokens, may
still be open to other users; the daemons say so, as ssh does of a readable key,
and go on: refusing would stop a working service at an upgrade.
"""

from __future__ import annotations

import os
import stat

from .config import Config

PAYLOAD_FOLDERS = ("tmp", "out", "in", "rcv", "corrupt")  # every folder below which a payload lies


def _too_open(mode: int, gid: int, group_gid: int) -> bool:
    """Whether a file or folder lets in users other than its owner and the group allowed.

    The group allowed is the operators' group, or else the user's own (primary) group:
    Debian and most others give each user a group of their own."""
    return bool(mode & stat.S_IRWXO) or (bool(mode & stat.S_IRWXG) and gid != group_gid)


def warnings(root: str, config: Config) -> list[str]:
    """Return one line for each file of tokens, and one for a spool, that others can read."""
    if config.group is not None:
        from .spool import group_id

        group_gid = group_id(config.group)
    else:
        group_gid = os.getgid()
    lines = []
    for path in dict.fromkeys(config.secrets):  # once each, in order
        try:
            st = os.stat(path)
        except OSError:
            continue  # read a moment ago; a file that went away since is not a leak
        if _too_open(st.st_mode, st.st_gid, group_gid):
            mode = stat.S_IMODE(st.st_mode)
            lines.append(f"{path} holds tokens and others can read it (mode {mode:04o}); chmod 600 {path}")
    for sub in PAYLOAD_FOLDERS:  # the root itself may be open: it shows names, not payloads
        path = os.path.join(root, sub)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if _too_open(st.st_mode, st.st_gid, group_gid):
            mode = stat.S_IMODE(st.st_mode)
            lines.append(
                f"spool {root} lets other users read its payloads ({sub}/ has mode {mode:04o}); "
                f"chmod -R go-rwx {root}, or set group in the config for an operators' group"
            )
            break
    return lines


def warn(root: str, config: Config, prog: str) -> None:
    """Write each of warnings() to stderr as one line, in the usual form."""
    import sys

    for line in warnings(root, config):
        sys.stderr.write(f"{prog}: warning: {line}\n")
