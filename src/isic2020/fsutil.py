"""Writing files safely: atomically, with the umask's mode, never through a symbolic link.

Every file isic2020 writes whole (records, selections, cached directories, ``object.json``,
``folds.csv``, the export's CSVs, the notices) goes through :func:`atomic_file`: a temporary
in the same folder, created ``O_EXCL | O_NOFOLLOW`` (so a name planted there, link or not, is
never opened), mode ``0o666 & ~umask`` without the world-write bit, fsync'ed, renamed over the
final name (a link at the final name is replaced, never written through), then the folder is
fsync'ed so the rename itself survives a power cut. Readers see the old or the new content.

Files written in place (partial downloads, members being unpacked) are opened with
:func:`open_nofollow`: a symbolic link at that name is removed (the link, not its target) and
the file made anew.

The state folder ``DATA/.isic2020`` belongs to isic2020 alone: :func:`refuse_state_links`
refuses one that is, or holds, a symbolic link (whoever can write into a shared state folder
could otherwise point ``staging/<zip>/images`` or ``partial/`` anywhere). Links the user makes
on purpose are allowed above it: ``DATA`` itself and the layout folders (``jpeg/train`` on
another disk) are followed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DiskError

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_TEMP_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC


class StateLinkError(DiskError):
    """The state folder is, or holds, a symbolic link: refused, never followed (exit 3)."""

    def __init__(self, link: Path, state_dir: Path) -> None:
        super().__init__(
            f"{link} is a symbolic link inside the state folder {state_dir}; isic2020 never "
            "follows links there",
            f"remove it (and check who can write to {state_dir}), then run again",
        )
        self.link = link


@functools.cache
def file_mode() -> int:
    """``0o666`` minus the umask, never world-writable.

    Read once per process: ``os.umask`` can only be read by setting it, which would race with
    threads creating files.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask & ~0o002


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new name in ``folder`` durable (best effort where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # EINVAL on filesystems without directory fsync
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` when the block ends without error.

    On any error (or interrupt) the temporary is removed and ``path`` is untouched. ``durable``
    fsyncs the file before the rename and the folder after it; state that is rewritten many
    times a second and only saves work (a partial download's progress) may skip that.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(final)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(final.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def _new_temp(final: Path) -> tuple[int, Path]:
    """A new file beside ``final``: a random name, ``O_EXCL | O_NOFOLLOW``, :func:`file_mode`
    (``os.open``'s mode passes through the umask, whose bits ``file_mode`` already lacks)."""
    for _ in range(100):
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _TEMP_CREATE, file_mode()), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(final))


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags)`` that never opens through a symbolic link at ``path``.

    With ``O_CREAT``, a link found there is removed (only the link: its target is untouched)
    and a new file is made in its place; without it, the ``ELOOP`` error is raised.
    """
    try:
        return os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP or not flags & os.O_CREAT or not _is_link(path):
            raise
    os.unlink(path)
    return os.open(path, flags | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)


def _is_link(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_state_links(state_dir: Path) -> None:
    """Raise :class:`StateLinkError` naming the first symbolic link at or below ``state_dir``.

    One ``scandir`` walk without following anything (``d_type``: no ``stat`` per entry, a few
    ms for a staging folder of 33,126 images). Called under the data directory's lock, before
    any writer touches the state folder.
    """
    if _is_link(state_dir):
        raise StateLinkError(state_dir, state_dir)
    stack = [os.fspath(state_dir)]
    while stack:
        folder = stack.pop()
        try:
            it = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            continue  # unreadable: whatever needs it reports the error in its own words
        with it:
            for e in it:
                if e.is_symlink():
                    raise StateLinkError(Path(e.path), state_dir)
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)


def real_dir(path: Path, state_dir: Path) -> Path:
    """Create ``path`` (inside ``state_dir``) folder by folder, refusing any component that is
    a symbolic link, so that nothing written below it can land outside the state folder."""
    rel = path.relative_to(state_dir)
    state_dir.parent.mkdir(parents=True, exist_ok=True)  # DATA: the user's, may be a link
    p = state_dir
    for part in ("", *rel.parts):
        p = p / part if part else p
        with contextlib.suppress(FileExistsError):
            p.mkdir()
        if _is_link(p):
            raise StateLinkError(p, state_dir)
    return path


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free space on the filesystem holding ``path`` (its nearest existing ancestor), or None
    when the filesystem does not say: ramfs (and some FUSE mounts) report 0 free of 0 total,
    which is no limit at all, not a full disk."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return None if usage.total == 0 else usage.free
