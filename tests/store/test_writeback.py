"""``store.libc.start_writeback``: a finished piece of a download is sent to the disk at once,
so the fsync before the rename does not write the whole file after the network is done.

What a user depends on: the call really starts the writing (the pages of the range leave the
dirty state; seen with Linux's ``cachestat``), it takes offsets past 4 GiB (the archives are
23-49 GB), and it never raises (a closed or foreign descriptor is only a missed speed-up).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

import pytest

from isic2020.store.libc import libc, start_writeback

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="sync_file_range is Linux's")

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGESIZE")
SYS_CACHESTAT = 451  # x86-64 and arm64 (Linux 6.5)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64)
                for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def dirty_pages(fd: int, offset: int, length: int) -> int | None:
    """Dirty pages of ``[offset, offset + length)`` of ``fd`` (None: no cachestat here)."""
    rng, st = _Range(offset, length), _Stat()
    if libc().syscall(SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
            return None
        raise OSError(ctypes.get_errno(), "cachestat")
    return int(st.dirty)


def test_the_range_is_sent_to_the_disk_and_the_rest_stays_cached(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\x5a" * (32 * MiB), 0)
        before = dirty_pages(fd, 0, 16 * MiB)
        assert start_writeback(fd, 0, 16 * MiB) is True
        if before is None:  # a kernel without cachestat: the call's answer is all we see
            return
        assert before == 16 * MiB // PAGE, "the test needs freshly dirtied pages"
        assert dirty_pages(fd, 0, 16 * MiB) == 0  # submitted (in writeback or written)
        # the rest was not asked for: still dirty unless the kernel wrote it on its own
        assert os.pread(fd, 4, 16 * MiB - 2) == b"\x5a" * 4
    finally:
        os.close(fd)


def test_offsets_past_4_gib_are_passed_whole(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "sparse", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * MiB, 5 << 30)
        assert start_writeback(fd, 5 << 30, MiB) is True
        if dirty_pages(fd, 5 << 30, MiB) is not None:
            assert dirty_pages(fd, 5 << 30, MiB) == 0
    finally:
        os.close(fd)


def test_a_bad_descriptor_is_only_a_missed_speed_up(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "closed", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    assert start_writeback(fd, 0, 0) is False  # EBADF, no exception
    assert start_writeback(-1, 0, 0) is False
