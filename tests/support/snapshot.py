"""Snapshots of folder trees, to prove that a command wrote nothing where it must not.

Spot checks ("evil.jpg is not there") miss whatever name the bug happens to use; comparing the
whole tree before and after does not. A snapshot records every path under a root (files,
folders, symlinks, not followed) with its type, size and mtime, so a new, removed or rewritten
entry anywhere shows up.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` (``root`` itself excluded) -> (file type, size, mtime_ns).

    Folders record their type only: an entry added to or removed from a folder shows up as
    that entry, and a folder's own size and mtime would only repeat it.
    """
    out: Snapshot = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            out[p] = (kind, 0, 0) if kind == stat.S_IFDIR else (kind, st.st_size, st.st_mtime_ns)
    return out


def changed(before: Snapshot, after: Snapshot, *, allowed: tuple[Path, ...] = ()) -> list[str]:
    """Paths added, removed or modified between the two snapshots, except inside ``allowed``
    (and the folders created to lead to an allowed path)."""
    keep = tuple(str(a) for a in allowed)

    def ok(p: str) -> bool:
        if any(p == a or p.startswith(a + os.sep) for a in keep):
            return True
        return after.get(p, (0,))[0] == stat.S_IFDIR and any(
            a.startswith(p + os.sep) for a in keep
        ) and p not in before

    return sorted(
        p for p in before.keys() | after.keys() if before.get(p) != after.get(p) and not ok(p)
    )
