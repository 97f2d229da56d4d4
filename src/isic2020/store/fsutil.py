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

The state folder ``DATA/.isic2020`` belongs to isic2020 alone (whoever can write into a shared
one could otherwise point ``staging/<zip>/images`` or ``partial/`` anywhere):

* before a run writes anything, :func:`refuse_state_links` refuses a state folder that is, or
  holds, a symbolic link (one line naming it, exit 3);
* during the run every write, rename and removal there is made relative to a descriptor from
  :func:`open_dir`, which reaches the folder one ``O_NOFOLLOW`` component at a time: a folder
  swapped for a link meanwhile is refused the same way, never followed.

Links the user makes on purpose are allowed above it: ``DATA`` itself and the layout folders
(``jpeg/train`` on another disk) are followed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from isic2020.errors import DiskError, Isic2020Error, UsageError
from isic2020.store.layout import STATE_DIRNAME

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_TEMP_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC

TEMP_PREFIX = "."
TEMP_SUFFIX = ".part"


def temp_name(final_name: str) -> str:
    """The hidden temporary name used while writing ``final_name`` (verify recognises it)."""
    return f"{TEMP_PREFIX}{final_name}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)




def disk_error(exc: OSError, path: str | os.PathLike[str]) -> DiskError:
    """The user's error for a failed write of ``path``: what the disk said, and what to do.

    One wording for every writer (downloads, unpacking, exports), so a full disk reads the same
    whichever part of a fetch hit it; what was finished is kept in every case, so the advice is
    always to free space and run the same command again.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(
            f"the disk is full while writing {path} ({exc.strerror or exc})",
            "free space (or choose another --data-dir) and run the same command again: "
            "what was finished is kept",
        )
    if exc.errno == errno.EFBIG:
        return DiskError(
            f"file too large (the file size limit or the filesystem's) while writing {path}",
            "raise the limit or choose another --data-dir, then run the same command again",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DiskError(
            f"cannot write {path}: {exc.strerror or exc}",
            "make the data directory writable or choose another with --data-dir",
        )
    return DiskError(f"cannot write {path}: {exc.strerror or exc}",
                     "check the disk, then run the same command again")

def output_error(exc: OSError, path: str | os.PathLike[str]) -> Isic2020Error:
    """The user's error for an output file (``folds --out``, an export's CSVs) that cannot be
    written: a folder on the way that is a file is a path that can never be a file (exit 2);
    a read-only, unwritable or impossible place is a disk error (exit 3). Either way it names
    the place and asks for another; a full disk reads as :func:`disk_error` says."""
    final = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return disk_error(exc, final)
    blocker = next((p for p in final.parents if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        return UsageError(f"cannot write {final}: {blocker} is a file, not a folder",
                          "choose another place for it")
    return DiskError(f"cannot write {final}: {(exc.strerror or str(exc)).lower()}",
                     "choose a writable place for it (or make that folder writable)")


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
    times a second and only saves work (a partial download's progress) may skip that. The
    temporary is made, and renamed, relative to a descriptor of the folder (:func:`open_dir`):
    inside the state folder no link on the way is followed, even one planted meanwhile.
    """
    final = Path(path)
    dfd = open_dir(final.parent)
    try:
        fd, tmp = _new_temp(final.name, dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        if durable:
            with contextlib.suppress(OSError):  # EINVAL where folders cannot be fsync'ed
                os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def _new_temp(name: str, dfd: int) -> tuple[int, str]:
    """A new file beside ``name`` in the folder ``dfd``: a random name, ``O_EXCL |
    O_NOFOLLOW``, :func:`file_mode` (``os.open``'s mode passes through the umask, whose bits
    ``file_mode`` already lacks)."""
    for _ in range(100):
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, _TEMP_CREATE, file_mode(), dir_fd=dfd), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def open_nofollow(
    path: str | os.PathLike[str], flags: int, mode: int = 0o666, *, dir_fd: int | None = None
) -> int:
    """``os.open(path, flags)`` that never opens through a symbolic link at ``path``.

    With ``O_CREAT``, a link found there is removed (only the link: its target is untouched)
    and a new file is made in its place; without it, the ``ELOOP`` error is raised. A path in
    the state folder is opened relative to :func:`open_dir` of its folder (no link on the way
    is followed); ``dir_fd``: ``path`` is a name in that open folder.
    """
    if dir_fd is None and STATE_DIRNAME in os.fspath(path) and state_root(Path(path)):
        p = Path(path)
        dfd = open_dir(p.parent, create=bool(flags & os.O_CREAT))
        try:
            return open_nofollow(p.name, flags, mode, dir_fd=dfd)
        finally:
            os.close(dfd)
    try:
        return os.open(path, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP or not flags & os.O_CREAT or not _is_link(path, dir_fd):
            raise
    os.unlink(path, dir_fd=dir_fd)
    return os.open(path, flags | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dir_fd)


def _is_link(path: str | os.PathLike[str], dir_fd: int | None = None) -> bool:
    try:
        return stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def state_root(path: Path) -> Path | None:
    """The state folder ``path`` lies in or is (the nearest ``.isic2020`` on its way)."""
    for p in (path, *path.parents):
        if p.name == STATE_DIRNAME:
            return p
    return None


def open_dir(folder: str | os.PathLike[str], *, create: bool = True) -> int:
    """A descriptor of ``folder`` (made if missing and ``create``), to work relative to.

    Inside the state folder it is reached one component at a time, each opened
    ``O_NOFOLLOW | O_DIRECTORY`` from the last: a link anywhere from ``.isic2020`` down raises
    :class:`StateLinkError`, and what is then done through the descriptor stays in that folder
    even if a link replaces a folder on the way later. Elsewhere (DATA and the layout folders,
    which may be the user's links) the path is followed as given.
    """
    path = Path(folder)
    root = state_root(path)
    if root is None:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if create:
        root.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(root.parent, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    shown = root.parent
    for part in (root.name, *path.relative_to(root).parts):
        shown = shown / part
        fd = _open_sub(fd, part, create, shown, root)
    return fd


def _open_sub(parent: int, name: str, create: bool, shown: Path, root: Path) -> int:
    """Open folder ``name`` in ``parent`` without following a link; ``parent`` is closed."""
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent)
        try:
            return os.open(name, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
                           dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, parent):
                raise StateLinkError(shown, root) from None
            raise
    finally:
        os.close(parent)


def move_into_place(src: Path, dst: Path) -> None:
    """Rename a finished file from the state folder (``src``) to its final path ``dst``.

    ``src`` is reached relative to :func:`open_dir` of its folder and opened ``O_NOFOLLOW``
    to drop the world-write bit through its descriptor (a link there raises, nothing
    outside is chmod'ed or moved in); a link at ``dst`` is replaced; ``dst``'s folder (the
    user's, may be a link) is fsync'ed so the new name survives a power cut.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    sfd = open_dir(src.parent, create=False)
    try:
        try:
            fd = os.open(src.name, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC, dir_fd=sfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateLinkError(src, state_root(src) or src.parent) from None
            raise
        try:
            mode = os.fstat(fd).st_mode & 0o777
            if mode & 0o002:
                os.fchmod(fd, mode & ~0o002)  # never world-writable, whatever the umask
        finally:
            os.close(fd)
        os.replace(src.name, dst, src_dir_fd=sfd)
    finally:
        os.close(sfd)
    fsync_dir(dst.parent)


def remove_file(path: str | os.PathLike[str]) -> None:
    """Unlink ``path`` if it exists (a link there: the link, never its target); in the state
    folder relative to :func:`open_dir` of its folder."""
    p = Path(path)
    try:
        dfd = open_dir(p.parent, create=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p.name, dir_fd=dfd)
    finally:
        os.close(dfd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove the folder ``path`` and everything in it, following no link (``rmtree`` relative
    to :func:`open_dir` of its parent: fd-based, so a link inside is removed, not entered)."""
    p = Path(path)
    try:
        dfd = open_dir(p.parent, create=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        shutil.rmtree(p.name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


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


def block_size(path: str | os.PathLike[str]) -> int:
    """The block a file on the filesystem holding ``path`` (its nearest existing ancestor) is
    counted in (``st_blksize``; 4096 when it does not say): a 1 KB image costs a block."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return os.stat(p).st_blksize or 4096
    except OSError:
        return 4096


def on_disk(size: int, block: int) -> int:
    """``size`` bytes rounded up to whole blocks: what one file of that size costs."""
    return -(-size // block) * block if block > 0 else size


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
