"""An extracted archive's central directory, kept after the archive itself is gone.

Why: with ``--no-keep-archives`` (or an archive removed by ``clean --archives`` or by hand) the
images are the only copy, and the directory is what says what they must be: every member's
name, size, CRC-32 and byte range in the remote zip. Kept in ``DATA/.isic2020/directories/``
(not ``remote/``, which ``clean`` empties), a re-run of ``fetch`` finds missing and damaged
images with one ``scandir`` (names and sizes; no image is read, nothing is asked of a server)
and fetches only those members by their byte ranges (``commands.repair``). The same directory
lets ``extract`` judge "already extracted" by names, never by a count a stray file can fake.

A folder found complete leaves a memo beside the directory (``<archive>.complete.json``): the
digest of the listing (every file's name and size, in listing order) that was judged, with the
directory's key and file stat. The judgement is a function of exactly those, so a later listing
with the same digest is complete without loading the directory again; any change (a file added,
removed, renamed or of another size; another directory) misses the memo and is judged afresh.

Invariants: a saved directory is keyed by the archive's recorded size and ETag (or sha256 when
the server gave no ETag); one that does not match the record is never used. It is written with
the one atomic writer (``remote.save_cached``, same format as the remote cache, so
``open_remote`` takes it as a cache and reads no directory bytes from the server). What
"damaged" means here is the cheap part of what ``verify`` finds: a size that is not the
member's. A file of the right size with changed bytes is found by ``verify`` (integrity,
``--deep``); delete it and the next ``fetch`` restores it.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from isic2020.archive.decode import present_files
from isic2020.archive.remote import (
    RemoteMember,
    RemoteZip,
    cache_bytes,
    cache_key,
    load_cached,
    save_cached,
)
from isic2020.archive.rules import Refused, image_file_name, plan_entries
from isic2020.archive.zipformat import BadZip, Directory, read_directory
from isic2020.catalog.manifest import EXTENSIONS
from isic2020.store.fsutil import atomic_write

#: In every memo: one made by other rules for what makes a folder complete is never trusted.
MEMO_VERSION = 1


def directory_path(state_dir: Path, archive: str) -> Path:
    """``DATA/.isic2020/directories/<archive>.json.gz``."""
    return Path(state_dir) / "directories" / f"{archive}.json.gz"


def identity(size: int, etag: str | None, sha256: str) -> tuple[str | None, str | None]:
    """``(etag, last_modified)`` fields the saved directory carries: its key is the ETag
    (what a server's HEAD gives, so ``open_remote`` takes it as its cache), else the sha256."""
    return (etag, None) if etag else (None, f"sha256:{sha256}")


def key_of(size: int, etag: str | None, sha256: str) -> str | None:
    """The cache key a directory saved for this archive carries."""
    tag, marker = identity(size, etag, sha256)
    return cache_key(tag, size, marker)


@dataclass(frozen=True)
class PreparedDirectory:
    """A directory's saved file, made while its archive downloads (off the path from the
    last byte to the end of the fetch), for the identity it carries. It is written only for
    an archive that landed verified with that very identity (:func:`save_directory`)."""

    url: str
    size: int
    etag: str | None
    sha256: str | None
    remote: RemoteZip = field(repr=False)
    data: bytes = field(repr=False)

    def fits(self, url: str, size: int, etag: str | None, sha256: str | None) -> bool:
        return (self.url, self.size, self.etag, self.sha256) == (url, size, etag, sha256)


def prepare_directory(parsed: tuple[Directory, list[RemoteMember]], size: int, url: str,
                      etag: str | None, sha256: str | None) -> PreparedDirectory:
    """The saved file of the directory ``parsed`` from the ``size``-byte archive at ``url``
    that should land as ``etag`` and ``sha256``."""
    d, entries = parsed
    tag, marker = identity(size, etag, sha256 or "")
    remote = RemoteZip(url, size, tag, entries, d.offset, d.size, last_modified=marker)
    return PreparedDirectory(url, size, etag, sha256, remote, cache_bytes(remote))


def save_directory(zip_path: Path, dest: Path, url: str, etag: str | None, sha256: str,
                   parsed: tuple[Directory, list[RemoteMember]] | None = None,
                   prepared: PreparedDirectory | None = None) -> bool:
    """Read the landed archive's directory (``parsed``: already read from this very file) and
    keep it at ``dest``; False (nothing written) when the archive cannot be read: the images
    are judged by ``verify`` then. ``prepared``: its file made already, written as it is
    when it fits this archive (URL, size, ETag, sha256)."""
    if prepared is not None:
        try:
            size = os.stat(zip_path).st_size
        except OSError:
            return False
        if prepared.fits(url, size, etag, sha256):
            save_cached(dest, prepared.remote, prepared.data)
            return True
    try:
        fd = os.open(zip_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        d, entries = parsed or read_directory(lambda at, n: os.pread(fd, n, at), size)
    except (OSError, BadZip, ValueError, struct.error):
        return False
    finally:
        os.close(fd)
    tag, marker = identity(size, etag, sha256)
    save_cached(dest, RemoteZip(url, size, tag, entries, d.offset, d.size, last_modified=marker))
    return True


def load_directory(path: Path, size: int, etag: str | None, sha256: str) -> RemoteZip | None:
    """The directory saved for this very archive (size and ETag or sha256), else None."""
    return load_cached(path, key_of(size, etag, sha256))


@dataclass
class Missing:
    """The members of an archive whose image is not in its folder as the directory says."""

    members: list[RemoteMember]
    absent: list[str]  # image file names not in the folder
    wrong_size: list[str]  # present with another size than the member's

    @property
    def names(self) -> list[str]:
        return sorted(self.absent + self.wrong_size)


def missing_members(remote: RemoteZip, fmt: str, folder: Path,
                    present: dict[str, int] | None = None) -> Missing:
    """Every image member of ``remote`` whose file in ``folder`` is absent or not its size: by
    names, from one ``scandir`` (a stray file never stands in for a missing image). Refused
    when something is missing and the directory breaks the rules (raised as :class:`Refused`).

    The folder is first compared by canonical names alone, which is what a re-run of a complete
    fetch pays (no rule decides anything when no byte is to be written); only when an image is
    absent or not its size are the entries put through the rules, which then decide what may be
    written, and where. ``present``: the folder's listing, when just made."""
    if present is None:
        present = present_files(folder)
    if _complete(remote, fmt, present):
        return Missing([], [], [])
    plan = plan_entries(remote.members, fmt, remote.size)
    remote.checked = remote.members
    out = Missing([], [], [])
    for m in plan.members:
        have = present.get(m.final)
        if have == m.entry.file_size:
            continue
        out.members.append(m.entry)
        (out.absent if have is None else out.wrong_size).append(m.final)
    return out


def _complete(remote: RemoteZip, fmt: str, present: dict[str, int]) -> bool:
    """Is every image entry of ``remote`` in ``present`` (file name -> size) with its size?"""
    ext = EXTENSIONS[fmt]
    for e in remote.members:
        final = image_file_name(e.name, ext)
        if final is not None and present.get(final) != e.file_size:
            return False
    return True


@dataclass
class FolderCheck:
    """A folder judged against an archive's saved directory."""

    missing: Missing
    #: The directory it was judged against; None when its memo said the folder is complete
    #: (the directory was not loaded).
    remote: RemoteZip | None


def check_folder(state_dir: Path, archive: str, fmt: str, folder: Path, size: int,
                 etag: str | None, sha256: str, *, keep_memo: bool = True
                 ) -> FolderCheck | None:
    """``folder``'s images of ``archive`` that are missing or not their size, by the directory
    saved for this very archive (None when there is none: the folder is not listed). Raises
    :class:`Refused` as :func:`missing_members` does. A complete folder costs one listing when
    its memo holds; ``keep_memo`` false (a dry run) writes none."""
    key = key_of(size, etag, sha256)
    path = directory_path(state_dir, archive)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if key is None or st is None:
        return None
    present = present_files(folder)
    memo = _memo(st, key, fmt, folder, present)
    memo_path = path.with_name(f"{archive}.complete.json")
    if _read_memo(memo_path) == memo:
        return FolderCheck(Missing([], [], []), None)
    remote = load_cached(path, key)
    if remote is None:
        return None
    missing = missing_members(remote, fmt, folder, present)
    if keep_memo and not missing.members:
        with contextlib.suppress(OSError):  # (a read-only copy): the next run judges again
            atomic_write(memo_path, json.dumps(memo).encode(), durable=False)
    return FolderCheck(missing, remote)


def _memo(st: os.stat_result, key: str, fmt: str, folder: Path,
          present: Mapping[str, int]) -> dict[str, object]:
    """What a complete judgement of ``present`` against the directory whose file has the stat
    ``st`` rests on."""
    listing = hashlib.sha256("\0".join(present).encode())
    listing.update(array.array("q", present.values()).tobytes())
    return {"version": MEMO_VERSION, "key": key, "directory": [st.st_size, st.st_mtime_ns],
            "fmt": fmt, "folder": os.fspath(folder), "listing": listing.hexdigest()}


def _read_memo(path: Path) -> object:
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def repair_needs(
    state_dir: Path, archive: str, fmt: str, folder: Path, size: int, etag: str | None,
    sha256: str,
) -> tuple[list[str], int, int] | None:
    """``(images, bytes to fetch, bytes to write)`` a repair of ``folder`` would cost, from the
    saved directory (None when there is none for this archive, or it breaks the rules).
    Writes nothing (``fetch --dry-run``)."""
    try:
        check = check_folder(state_dir, archive, fmt, folder, size, etag, sha256,
                             keep_memo=False)  # (a dry run's: it writes nothing)
    except Refused:
        return None
    if check is None:
        return None
    todo, remote = check.missing, check.remote
    if remote is None:
        return [], 0, 0
    ends = remote.member_end()
    return (todo.names, sum(ends[m.header_offset] - m.header_offset for m in todo.members),
            sum(m.file_size for m in todo.members))
