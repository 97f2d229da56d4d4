"""Staged images (unpacked while their archive downloaded) into the layout, once it landed.

Invariants: images reach the layout only from a staging made for this very version of the
archive (``object.json``: ETag and size; without an ETag there is no proof, so never); only
files named and sized like a member of the verified directory move; the staging and images
folders are reached without following links and handled through their descriptors, so
nothing outside the state folder is listed, deleted or moved.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

from isic2020.archive.rules import Member
from isic2020.store.fsutil import open_dir, remove_tree

OBJECT_FILE = "object.json"
IMAGES_DIR = "images"



def staging_matches(staging: Path, etag: str | None, size: int) -> bool:
    """Were the images in ``staging`` unpacked from this version (ETag and size) of the
    archive? Without an ETag there is no proof, so no."""
    try:
        doc = json.loads((staging / OBJECT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(etag) and doc.get("etag") == etag and doc.get("size") == size


def promote(staging: Path, dest: Path, members: list[Member]) -> int:
    """Move the staged images that belong to ``members`` (by name and size) into ``dest``;
    remove the staging folder. One rename of the folder when ``dest`` is empty.

    The staging and images folders are reached without following links (:func:`open_dir`;
    a link there raises :class:`StateLinkError`) and listed, cleaned and moved from through
    their descriptors, so nothing outside the state folder is listed, deleted or moved.
    ``dest`` may be a link the user made (``jpeg/train`` on another disk): images are then
    moved one by one where a rename reaches, and the extraction unpacks the rest.
    """
    want = {m.final: m.entry.file_size for m in members}
    keep: list[str] = []
    try:
        sfd = open_dir(staging, create=False)
    except FileNotFoundError:
        return 0
    try:
        try:
            dfd = open_dir(staging / IMAGES_DIR, create=False)
        except FileNotFoundError:
            dfd = -1
        if dfd >= 0:
            try:
                keep = _promote_from(sfd, dfd, dest, want)
            finally:
                os.close(dfd)
    finally:
        os.close(sfd)
    with contextlib.suppress(OSError):
        remove_tree(staging)
    return len(keep)


def _promote_from(sfd: int, dfd: int, dest: Path, want: dict[str, int]) -> list[str]:
    keep: list[str] = []
    with os.scandir(dfd) as it:
        for e in it:
            if not e.is_symlink() and want.get(e.name) == e.stat(follow_symlinks=False).st_size:
                keep.append(e.name)
            else:  # a temporary left by a kill, or anything else: never promoted
                with contextlib.suppress(OSError):
                    os.unlink(e.name, dir_fd=dfd)
    if not keep:
        return keep
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if (not os.path.islink(dest) and _empty_or_missing(dest)
                and _same_dir(os.stat(IMAGES_DIR, dir_fd=sfd, follow_symlinks=False), dfd)):
            os.rename(IMAGES_DIR, dest, src_dir_fd=sfd)  # replaces an empty folder (POSIX)
            return keep
    dest.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(keep):
        try:
            os.replace(name, dest / name, src_dir_fd=dfd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return keep[:n]  # another filesystem: the extraction unpacks the rest
    return keep


def _same_dir(st: os.stat_result, fd: int) -> bool:
    """``st`` (an ``lstat``) is the folder open as ``fd``: nothing swapped it meanwhile."""
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _empty_or_missing(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True
