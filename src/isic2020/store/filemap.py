"""A file's bytes handed out as views for hashing: through a memory map where that is safe,
else read into one reused buffer.

Why map: reading back for a hash copies every byte from the page cache into a buffer first;
hashing the page cache's own pages through a read-only shared map skips that copy (about
0.06-0.08 s of CPU per pass over 400 MB, per hash). Why not always: a mapped page that
cannot be read (an I/O error, a file cut shorter behind our back) raises SIGBUS, which kills
the process without the one clear line every other error gets; on a local disk that means
the disk itself is failing, and the next run resumes from the state file (which claims only
synced bytes). On a network or FUSE filesystem such errors are ordinary (a server goes
away, a handle goes stale), so there a map is never used (:func:`mappable`).

Invariants: a view handed to the callback is released before the next one is made and before
its map is closed (the callback must not keep it: hashlib keeps no reference); only bytes
below ``end`` and below the file's size at the time its window is mapped are ever touched,
so a map is never read past the end of the file; at most :data:`WINDOW` bytes are mapped at
a time (file-backed pages count in the process's RSS only while mapped).
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

#: Bytes mapped at a time: windows on a fixed grid, so a follower remaps once per window.
WINDOW = 8 * 1024 * 1024

#: Local filesystems whose mapped reads fail only when the disk does (see the module's doc).
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})

Feed = Callable[[memoryview], None]


def _filesystem_of_device(major: int, minor: int) -> str | None:
    """The type of the mounted filesystem with this device number (``/proc/self/mountinfo``),
    or None where it cannot be told (not Linux, no procfs, not listed). Read afresh each
    time, not cached: an anonymous device number (tmpfs, NFS, FUSE) is reused by the next
    such mount once its filesystem is unmounted."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if sep and len(fields) > 2 and fields[2] == f"{major}:{minor}":
                    return right.split(maxsplit=1)[0] if right.strip() else None
    except OSError:
        return None
    return None


def filesystem_type(fd: int) -> str | None:
    """The filesystem type of the open file ``fd`` (``ext4``, ``nfs4``, ``fuse.sshfs``…), or
    None where it cannot be told."""
    dev = os.fstat(fd).st_dev
    return _filesystem_of_device(os.major(dev), os.minor(dev))


def mappable(fd: int) -> bool:
    """Whether ``fd``'s bytes may be read through a map (see the module's doc): only on a
    known local filesystem; anything unknown is read."""
    return filesystem_type(fd) in LOCAL_FILESYSTEMS


class FileBlocks:
    """Hands out ``[pos, end)`` of the file ``fd`` as views of at most ``block`` bytes.

    ``mapped`` None decides by :func:`mappable`; a map that cannot be made (no address space,
    a filesystem that refuses) falls back to reading for good. One instance per thread: the
    buffer or the window is its own.
    """

    def __init__(self, fd: int, block: int, mapped: bool | None = None) -> None:
        self.fd = fd
        self.block = block
        self.mapped = mappable(fd) if mapped is None else mapped
        self._buffer: memoryview | None = None
        self._map: mmap.mmap | None = None
        self._base = 0
        self._length = 0

    def feed(self, pos: int, end: int, fn: Feed) -> int:
        """Call ``fn`` with the bytes of ``[pos, end)`` in order; the bytes fed (``end - pos``).
        An ``OSError`` when the file ends before ``end``."""
        start = pos
        while pos < end:
            if self.mapped and self._window(pos):
                stop = min(end, self._base + self._length)
                with memoryview(self._map) as whole:  # type: ignore[arg-type]
                    while pos < stop:
                        n = min(self.block, stop - pos)
                        with whole[pos - self._base:pos - self._base + n] as view:
                            fn(view)
                        pos += n
            else:
                pos += self._read(pos, end, fn)
        return pos - start

    def _window(self, pos: int) -> bool:
        """Map the window that holds ``pos``; False (and reading from now on) where it cannot
        be mapped or the file ends at ``pos``."""
        if self._map is not None and self._base <= pos < self._base + self._length:
            return True
        self._unmap()
        base = pos - pos % WINDOW
        try:
            length = min(WINDOW, os.fstat(self.fd).st_size - base)
            if length <= pos - base:
                return False  # the file ends here: the read below reports it
            self._map = mmap.mmap(self.fd, length, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError, OverflowError):
            self.mapped = False
            return False
        self._base, self._length = base, length
        return True

    def _read(self, pos: int, end: int, fn: Feed) -> int:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(self.block))
        got = os.preadv(self.fd, [self._buffer[:min(self.block, end - pos)]], pos)
        if got <= 0:
            raise OSError(errno.EIO, "the file ends before the bytes to hash")
        fn(self._buffer[:got])
        return got

    def _unmap(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            self._length = 0

    def close(self) -> None:
        """Unmap the window (the descriptor stays the caller's)."""
        self._unmap()
