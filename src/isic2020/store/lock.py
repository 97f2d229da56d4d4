"""One writer per data directory.

An advisory ``flock`` on ``DATA/.isic2020/lock``: the kernel releases it when the process dies,
so a killed run never leaves a stale lock behind. Writers (fetch, extract) take it exclusively;
a second writer waits (saying so once on stderr) until the first is done, or gives up after
``timeout`` seconds. Waiting is the default because the second run then finds the work done and
finishes in a second, which is what two CI jobs sharing a cache want.

Once the lock is held, the state folder is checked for symbolic links
(:func:`isic2020.store.fsutil.refuse_state_links`): a run refuses to start on one that holds any.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from isic2020.errors import DiskError, LockError
from isic2020.store.fsutil import (
    O_CLOEXEC,
    O_NOFOLLOW,
    StateLinkError,
    file_mode,
    open_dir,
    refuse_state_links,
)


@contextlib.contextmanager
def data_dir_lock(
    lock_path: Path,
    *,
    shared: bool = False,
    timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
    read_only_ok: bool = False,
) -> Iterator[None]:
    """Hold the data directory's lock for the duration of the block.

    ``read_only_ok`` (a writer that may find nothing to write, ``fetch``): when this user may
    not write the state folder, a shared lock is taken instead (through a read-only descriptor
    of the existing lock file), as ``verify`` takes it. The writer then runs beside other
    readers and waits for a writer that can write; whatever it finds it must write fails on
    the permissions with one clear line, so only a run with nothing to do succeeds.
    """
    state_dir = lock_path.parent
    try:
        # Made here; a link in place of it is refused. O_NOFOLLOW: a link planted at ``lock``
        # is refused, never truncated through. Not replaced by a rename either: two runs must
        # lock the same inode.
        sfd = open_dir(state_dir)
        try:
            fd = os.open(lock_path.name, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_CLOEXEC,
                         file_mode(), dir_fd=sfd)
        finally:
            os.close(sfd)
    except OSError as exc:
        unwritable = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        fd = _open_read_only(lock_path) if unwritable and (shared or read_only_ok) else None
        if fd is not None:
            shared = True  # a read-only data directory can still be read, under a shared lock
        elif unwritable and shared:
            # verify: nobody ever wrote here (no lock file), so nobody can be writing now
            refuse_state_links(state_dir)
            yield
            return
        elif exc.errno == errno.ELOOP:
            raise StateLinkError(lock_path, state_dir) from None
        else:
            raise DiskError(
                f"cannot create {lock_path}: {exc.strerror or exc}",
                "make the data directory writable or choose another with --data-dir",
            ) from None
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        start = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = _read_holder(fd)
                    on_wait(
                        f"waiting for another isic2020{holder} using {lock_path.parent.parent}"
                    )
                    told = True
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise LockError(
                        f"another isic2020{_read_holder(fd)} is using {lock_path.parent.parent}",
                        "wait for it to finish or stop it, then run again",
                    ) from None
                time.sleep(0.2)
        refuse_state_links(state_dir)  # under the lock: no other run of ours is changing it
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _open_read_only(lock_path: Path) -> int | None:
    """A read-only descriptor of an existing lock file (enough for ``flock``), or None."""
    try:
        return os.open(lock_path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    except OSError:
        return None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
