"""The early fsync of a finished partial file (``PartialFile.start_flush``): it lets the disk
write while the hash catches up, and it must never hide a write error from the fsync that
makes the file final."""

from __future__ import annotations

import os

import pytest

from isic2020.errors import DiskError
from isic2020.transfer.model import RemoteObject
from isic2020.transfer.partial import PartialFile


def _partial(tmp_path, size: int) -> PartialFile:
    remote = RemoteObject(url="http://127.0.0.1/x.zip", size=size, etag="e", last_modified=None)
    return PartialFile(remote, tmp_path / "x.zip.part", tmp_path / "x.zip.state", None)


def test_an_error_of_the_early_fsync_fails_the_finish_although_a_second_fsync_passes(tmp_path):
    """Linux reports a lost write to one fsync per open file: once the early fsync has seen
    it, the finishing fsync returns 0. Here the early fsync fails (it is given a pipe, which
    cannot be synced) and the finishing one would pass (a real file): ``finish`` must still
    raise, or a file the disk lost would be renamed final."""
    pf = _partial(tmp_path, 10)
    pf.open()
    real = pf.fd
    r, w = os.pipe()
    try:
        pf.fd = r
        pf.start_flush()
        pf.fd = real
        with pytest.raises(DiskError) as err:
            pf.finish()
        assert "x.zip.part" in str(err.value)
    finally:
        os.close(w)
        os.close(r)
    assert pf.fd == -1  # closed all the same


def test_a_write_after_the_early_fsync_is_in_the_finished_file(tmp_path):
    """A repair writes into the file after the early flush began: the finish syncs again and
    the file holds the repaired bytes."""
    pf = _partial(tmp_path, 8)
    pf.open()
    pf.write(0, b"AAAAAAAA")
    pf.start_flush()
    pf.write(2, b"bb")
    pf.finish()
    assert (tmp_path / "x.zip.part").read_bytes() == b"AAbbAAAA"
