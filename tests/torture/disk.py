"""A spool filesystem per node: a small ext4 on a loop device, filled to ENOSPC and freed.

The image is a sparse file; mkfs -m 0 leaves no blocks reserved for root (the daemons run
as root here, and would otherwise write on into the reserve). ``fill`` fallocates what is
free, then writes 1 KiB at a time until the filesystem answers ENOSPC; ``free`` unlinks
the filler.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

FILLER = ".torture-filler"


class Disk:
    def __init__(self, image: Path, mnt: Path, size_mib: int, inodes: int) -> None:
        self.image, self.mnt, self.size_mib, self.inodes = image, mnt, size_mib, inodes
        self.mounted = False

    def mount(self) -> None:
        self.unmount()  # a mount left by a killed run of this seed
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mib << 20)
        run("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", "-N", str(self.inodes), str(self.image))
        run("mount", "-o", "loop", str(self.image), str(self.mnt))
        self.mounted = True

    @property
    def filler(self) -> Path:
        return self.mnt / FILLER

    def fill(self) -> int:
        """Fill the filesystem until a write fails with ENOSPC; return the bytes written."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            st = os.statvfs(self.mnt)
            want = st.f_bavail * st.f_frsize
            while want > 1 << 20:
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, want)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    want //= 2
            chunk = b"\0" * 1024
            for _ in range(1 << 20):
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        break
                    raise
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def free(self) -> None:
        try:
            self.filler.unlink()
        except FileNotFoundError:
            pass

    def unmount(self, keep: bool = False) -> None:
        """Unmount; remove the image unless keep (for a look at a failed run's spool)."""
        if os.path.ismount(self.mnt):
            for _ in range(50):
                if subprocess.run(["umount", str(self.mnt)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)  # a process that held a file there is still exiting
            else:
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        self.mounted = False
        if keep:
            return
        try:
            self.image.unlink()
        except FileNotFoundError:
            pass


def run(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")
