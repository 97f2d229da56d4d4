"""The bytes a hash is fed (``store.filemap.FileBlocks``), mapped or read back.

What a user depends on: the digests a fetch proves its files with are computed over exactly
the file's bytes, in order, once each, however the follower's frontier advances across the
map's windows; a file shorter than expected ends in an ordinary ``OSError`` (one clear line
upstream), never a SIGBUS that kills the process; and a map is only used where a failed
read means a failing disk, not a network filesystem having a bad moment.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap

import pytest
from support.fs import small_filesystem

from isic2020.store.filemap import WINDOW, FileBlocks, filesystem_type, mappable

BLOCK = 1 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """Three windows and a ragged tail of random bytes."""
    path = tmp_path_factory.mktemp("filemap") / "data.bin"
    data = random.Random(7).randbytes(3 * WINDOW + 12_345)
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read"])
def test_a_frontier_advancing_in_uneven_steps_feeds_every_byte_once_in_order(big_file, mapped):
    path, data = big_file
    fd = os.open(path, os.O_RDONLY)
    blocks = FileBlocks(fd, BLOCK, mapped=mapped)
    rng = random.Random(1)
    out = bytearray()
    sizes = []

    def take(view: memoryview) -> None:
        sizes.append(len(view))
        out.extend(view)

    try:
        pos = 0
        while pos < len(data):  # steps from a byte to two windows, across window edges
            frontier = min(len(data), pos + rng.choice([1, 4095, BLOCK + 3, WINDOW - 7,
                                                        2 * WINDOW + 1]))
            assert blocks.feed(pos, frontier, take) == frontier - pos
            pos = frontier
        assert blocks.mapped is mapped
    finally:
        blocks.close()
        os.close(fd)
    assert bytes(out) == data
    assert max(sizes) <= BLOCK


def test_a_file_shorter_than_the_bytes_asked_for_is_an_oserror_not_a_sigbus(tmp_path):
    """Asked for bytes past the end of the file (as when a partial file was cut short), the
    mapped reader hands out what exists and then raises EIO: the map never covers bytes past
    the end, whose touch would be a SIGBUS. In a child process, so that a regression kills
    that child, not the test run."""
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * (WINDOW + 100))
    code = textwrap.dedent(f"""
        import errno, os
        from isic2020.store.filemap import FileBlocks
        fd = os.open({str(path)!r}, os.O_RDONLY)
        blocks = FileBlocks(fd, 1 << 20, mapped=True)
        fed = []
        try:
            blocks.feed(0, {WINDOW + 5000}, lambda v: fed.append(len(v)))
        except OSError as exc:
            print("raised", errno.errorcode[exc.errno], sum(fed), blocks.mapped)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.split() == ["raised", "EIO", str(WINDOW + 100), "True"], r.stdout


def test_a_view_kept_by_the_callback_is_released_and_the_map_still_closes(big_file):
    """hashlib keeps nothing; a callback that did would otherwise pin the window (``close``
    would raise BufferError in the follower) or read a window that moved on."""
    path, data = big_file
    fd = os.open(path, os.O_RDONLY)
    blocks = FileBlocks(fd, BLOCK, mapped=True)
    kept: list[memoryview] = []
    try:
        blocks.feed(WINDOW - 10, WINDOW + 10, kept.append)
        assert len(kept) == 2  # one view per window
        blocks.close()
    finally:
        os.close(fd)
    for view in kept:
        with pytest.raises(ValueError, match="released"):
            view.tobytes()


def test_a_local_tmpfs_is_mapped_and_a_descriptor_of_no_listed_filesystem_is_read(tmp_path):
    with small_filesystem(tmp_path / "fs", 1 << 20) as fs:
        f = fs / "x.bin"
        f.write_bytes(b"abc")
        fd = os.open(f, os.O_RDONLY)
        try:
            assert filesystem_type(fd) == "tmpfs"
            assert mappable(fd)
            assert FileBlocks(fd, BLOCK).mapped
        finally:
            os.close(fd)
    r, w = os.pipe()  # pipefs is mounted nowhere: its type cannot be told, so no map
    try:
        assert filesystem_type(r) is None
        assert not mappable(r)
        blocks = FileBlocks(r, BLOCK)
        assert not blocks.mapped
    finally:
        os.close(r)
        os.close(w)


def test_a_map_that_cannot_be_made_falls_back_to_reading(tmp_path):
    """A descriptor opened write-only cannot be mapped for reading (EACCES): the reader goes
    on by reading; here that read fails too (EBADF), as an ordinary OSError."""
    path = tmp_path / "w.bin"
    path.write_bytes(b"y" * 100)
    fd = os.open(path, os.O_WRONLY)
    blocks = FileBlocks(fd, BLOCK, mapped=True)
    try:
        with pytest.raises(OSError) as err:
            blocks.feed(0, 100, lambda v: None)
        assert err.value.errno == errno.EBADF
        assert not blocks.mapped
    finally:
        blocks.close()
        os.close(fd)
