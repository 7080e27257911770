"""The data directory is the server's alone: sessions, the state database, the key that seals
stored secrets. New files are made for the owner only (umask 077); what an earlier version
left readable to others is made private at start."""

from __future__ import annotations

import os
from pathlib import Path


def make_private(data_dir: Path) -> int:
    """Create ``data_dir`` (0700) if needed, set the process's umask to 077, and take group and
    other permissions off everything in it that this user owns; returns the entries changed."""
    os.umask(0o077)
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    me = os.getuid()
    changed = 0
    for root, dirs, files in os.walk(data_dir):
        for name in [root, *(os.path.join(root, f) for f in files + dirs)]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:  # gone meanwhile (a flush, a merge)
                continue
            if st.st_uid == me and st.st_mode & 0o077 and not os.path.islink(name):
                os.chmod(name, st.st_mode & ~0o077)
                changed += 1
    return changed
