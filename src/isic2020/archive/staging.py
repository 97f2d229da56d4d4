"""The staging folder of images unpacked while their archive downloads: made for one version
of the archive (:func:`open_staging`), moved into the layout once it landed (:func:`promote`).

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
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.archive.rules import Member
from isic2020.store.fsutil import open_dir, open_nofollow, remove_tree
from isic2020.store.records import atomic_write_json

OBJECT_FILE = "object.json"
IMAGES_DIR = "images"


@dataclass
class Promoted:
    """What :func:`promote` moved into the layout."""

    images: int = 0  # staged images now in the layout
    #: The destination's whole content (name -> size) when the images folder itself became
    #: it (one rename into an empty or missing folder): the caller need not list it again.
    #: ``None``: moved one by one into a folder that may hold other files.
    present: dict[str, int] | None = field(default=None, repr=False)
    #: The moved images whose content the writer checked as it wrote them (``vouched`` of
    #: :func:`promote`): the closing verify need not read them back.
    checked: set[str] = field(default_factory=set, repr=False)
    #: Every member is among ``present``, with its size: nothing is left to unpack.
    every_member: bool = False


def open_staging(staging: Path, ident: dict[str, Any]) -> int:
    """Make ``staging`` for the version ``ident`` (ETag, size) of its object, removing another
    version's; a descriptor of its images folder, reached without following any link
    (:func:`open_dir`), which the writers write relative to."""
    doc_path = staging / OBJECT_FILE
    try:
        with open(open_nofollow(doc_path, os.O_RDONLY), "rb") as fh:
            doc = json.loads(fh.read())
    except (OSError, ValueError):
        doc = None
    if doc != ident:
        remove_tree(staging)
    images_fd = open_dir(staging / IMAGES_DIR)
    if doc != ident:
        try:
            atomic_write_json(doc_path, ident, durable=False)
        except BaseException:
            os.close(images_fd)
            raise
    return images_fd


@dataclass(frozen=True)
class Stage:
    """Where a member fetch (``--direct``, subsets) may stage what it writes: ``staging``, the
    archive's folder in the state directory, for members that all land in ``folder``."""

    staging: Path
    folder: Path


def open_member_staging(stage: Stage, ident: dict[str, Any]) -> int | None:
    """A descriptor of ``stage``'s images folder for the version ``ident`` of the archive, or
    None where staging would not save the writes it costs.

    Staged members are written in place (one ``open``, no temporary, no rename each) and
    moved by :func:`promote` once every one is checked: one rename of the folder, which only
    an empty or missing ``folder`` that is no link, on the staging's own filesystem, allows.
    Anywhere else each member would still be renamed, so the fetch writes at the final paths
    as before. Without an ETag (``ident``) nothing proves a later run's staged files came
    from this version: no staging either. Another version's staging is removed; one that
    cannot be made (a read-only state folder) is not used; a link planted on its way raises
    :class:`~isic2020.store.fsutil.StateLinkError`, as every other use of the state folder."""
    folder = stage.folder
    if not ident.get("etag") or os.path.islink(folder) or not _empty_or_missing(folder):
        return None
    try:
        if _device(folder) != _device(stage.staging):
            return None
        return open_staging(stage.staging, ident)
    except OSError:
        return None


def _device(path: Path) -> int:
    """The device ``path`` is on, or would be made on (that of its nearest existing folder)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.stat(path).st_dev


def staging_matches(staging: Path, etag: str | None, size: int) -> bool:
    """Were the images in ``staging`` unpacked from this version (ETag and size) of the
    archive? Without an ETag there is no proof, so no."""
    try:
        doc = json.loads((staging / OBJECT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(etag) and doc.get("etag") == etag and doc.get("size") == size


def promote(staging: Path, dest: Path, members: list[Member],
            vouched: Collection[str] = ()) -> Promoted:
    """Move the staged images that belong to ``members`` (by name and size) into ``dest``;
    remove the staging folder. One rename of the images folder itself when ``dest`` is empty
    or missing (33,126 images: one ``renameat`` instead of 33,126); else one by one, never
    replacing what ``dest`` already holds by anything but a staged image of the same name.

    Only files named and sized like a member stay in the images folder before it moves (a
    short file from a killed write, a temporary, a link, anything else is unlinked first), so
    the folder that becomes ``dest`` holds exactly the names returned in ``present``.

    The staging and images folders are reached without following links (:func:`open_dir`;
    a link there raises :class:`StateLinkError`) and listed, cleaned and moved from through
    their descriptors, so nothing outside the state folder is listed, deleted or moved.
    ``dest`` may be a link the user made (``jpeg/train`` on another disk): images are then
    moved one by one where a rename reaches, and the extraction unpacks the rest.

    ``vouched``: names this very run wrote whole into the staging folder and checked as it
    wrote them (``StreamingExtractor.checked_names``). Their size is known, so they are not
    ``stat``'ed, and they come back as ``checked`` once moved.
    """
    want = {m.final: m.entry.file_size for m in members}
    done = Promoted()
    try:
        sfd = open_dir(staging, create=False)
    except FileNotFoundError:
        return done
    try:
        try:
            dfd = open_dir(staging / IMAGES_DIR, create=False)
        except FileNotFoundError:
            dfd = -1
        if dfd >= 0:
            try:
                done = _promote_from(sfd, dfd, dest, want, vouched)
            finally:
                os.close(dfd)
    finally:
        os.close(sfd)
    with contextlib.suppress(OSError):
        remove_tree(staging)
    return done


def _promote_from(sfd: int, dfd: int, dest: Path, want: dict[str, int],
                  vouched: Collection[str]) -> Promoted:
    keep: list[str] = []
    clean = True  # nothing but ``keep`` is left in the folder
    vouched = set(vouched)
    with os.scandir(dfd) as it:
        for e in it:
            name = e.name
            size = want.get(name)
            if size is not None and e.is_file(follow_symlinks=False) and (
                    name in vouched or size == e.stat(follow_symlinks=False).st_size):
                keep.append(name)
                continue
            try:  # a short file left by a killed write, a temporary, anything else
                os.unlink(name, dir_fd=dfd)
            except OSError:
                clean = False  # (a folder): the images go one by one, never with it
    if not keep:
        return Promoted()
    every = len(keep) == len(want)  # (names are unique): ``keep`` holds every member
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not empty after all, another filesystem: one by one
        if (clean and not os.path.islink(dest) and _empty_or_missing(dest) and _ours(dfd)
                and _same_dir(os.stat(IMAGES_DIR, dir_fd=sfd, follow_symlinks=False), dfd)):
            os.rename(IMAGES_DIR, dest, src_dir_fd=sfd)  # replaces an empty folder (POSIX)
            return Promoted(len(keep), want if every else {name: want[name] for name in keep},
                            vouched.intersection(keep), every_member=every)
    dest.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(keep):
        try:
            os.replace(name, dest / name, src_dir_fd=dfd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # another filesystem: the extraction unpacks the rest
            return Promoted(n, checked=vouched.intersection(keep[:n]))
    return Promoted(len(keep), checked=vouched.intersection(keep))


def _ours(fd: int) -> bool:
    """The images folder may become the layout's folder only if this user made it (not
    someone else who can write the state folder and would then own ``jpeg/train``); it is
    made writable by nobody else first, as a folder ``mkdir`` makes under a sane umask."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        return False
    if st.st_mode & 0o002:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o002)
    return True


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
