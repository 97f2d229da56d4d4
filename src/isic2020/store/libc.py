"""The few C library calls Python's standard library lacks, in one place.

``syncfs`` (flush one filesystem, not the whole machine's dirty data as ``os.sync`` does),
``sync_file_range`` (start writing a file's range to disk without waiting), ``malloc_trim``
(hand freed heap back to the system), ``mallopt`` (glibc's heap settings) and ``prctl``
(through :func:`libc`). Each degrades to the portable fallback, or to nothing, where the call
or the library is missing (macOS, musl, a sandbox without ``dlopen``): these calls
make things faster or smaller, never correct.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from typing import Any

O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@functools.cache
def libc() -> Any:
    """The C library with ``errno`` kept (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def syncfs_function() -> Any:
    """``syncfs(fd)`` of the C library, or None where there is none."""
    lib = libc()
    return getattr(lib, "syncfs", None) if lib is not None else None


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Make what was written under ``folder`` durable: ``syncfs`` of its filesystem, or
    ``os.sync`` where ``syncfs`` is missing or fails."""
    syncfs = syncfs_function()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY | O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    lib = libc()
    fn = getattr(lib, "sync_file_range", None) if lib is not None else None
    if fn is not None:
        import ctypes

        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Have the kernel start writing the dirty pages of ``[offset, offset + length)`` of
    ``fd`` to disk now, without waiting for them (``sync_file_range(SYNC_FILE_RANGE_WRITE)``;
    ``length`` 0: to the end of the file). False where the call is missing or fails.

    Why: the kernel leaves a file's dirty pages in memory until they are 30 s old or exceed
    ``dirty_background_ratio`` of RAM (gigabytes on a big machine), so the ``fsync`` before a
    download's rename would write all of them at the end, one after the other with the
    network. Started per finished piece, the disk writes while the network still receives,
    and that ``fsync`` waits for the last few pieces only. It is no durability promise (the
    ``fsync`` still makes one); the pages stay cached, so reading them back (hashing) costs
    no disk read."""
    fn = _sync_file_range()
    if fn is None or fd < 0 or length < 0:
        return False
    return fn(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0


def malloc_trim() -> None:
    """Collect young garbage, then hand the heap it freed back to the system (glibc keeps
    freed memory in its arenas otherwise, so a later peak adds to it). The young generations
    only: what a step leaves behind (buffers, parsed directories) is freed by reference counts
    or is young cyclic garbage; a full collection walks every object still alive (a fetch's
    tens of thousands of entries) for a few stray cycles."""
    lib = libc()
    trim = getattr(lib, "malloc_trim", None) if lib is not None else None
    if trim is None:
        return
    gc.collect(1)
    with contextlib.suppress(OSError):
        trim(0)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where there is none."""
    lib = libc()
    fn = getattr(lib, "mallopt", None) if lib is not None else None
    return bool(fn(param, value)) if fn is not None else False
