"""The digests computed while downloading equal S3's definitions whatever the thread count,
and never read a byte before the download announced it (tests for ``transfer.hashers``).
Every test runs twice: the file hashed through a map (a local filesystem) and read back (any
other), whatever filesystem the test's temporary folder is on."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

import isic2020.store.filemap as filemap
import isic2020.transfer.hashers as hashers_module
from isic2020.transfer.digests import MultipartHasher
from isic2020.transfer.hashers import Hashers, PartHashers, hash_file

PART = 64 * 1024
REAL_MAPPABLE = filemap.mappable  # before the fixture below replaces it


@pytest.fixture(autouse=True, params=[True, False], ids=["mapped", "read"])
def how_read(request, monkeypatch):
    monkeypatch.setattr(hashers_module, "mappable", lambda fd: request.param)
    return request.param


def _expected(data: bytes, part: int) -> tuple[str, str, str]:
    mp = MultipartHasher(part)
    mp.update(data)
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), mp.hexdigest()


@pytest.mark.parametrize("size", [1, PART - 1, PART, PART + 1, 7 * PART + 5, 16 * PART])
@pytest.mark.parametrize("threads", [1, 3])
def test_multipart_etag_of_parts_hashed_on_several_threads_is_s3s(tmp_path, size, threads):
    data = os.urandom(size)
    path = tmp_path / "obj"
    path.write_bytes(data)
    sha, md5, mp = _expected(data, PART)
    fd = os.open(path, os.O_RDONLY)
    try:
        hashers = Hashers(fd, size, PART, want_md5=True, threads=threads)
        hashers.start()
        for frontier in range(0, size + 1, PART // 3):  # announced in steps, as blocks land
            hashers.advance(frontier)
        hashers.advance(size)
        assert hashers.join() is None
        assert hashers.digests() == (sha, md5, mp)
    finally:
        os.close(fd)
    assert hash_file(path, PART, want_md5=False) == (sha, None, mp)


def test_bytes_past_the_frontier_are_never_hashed_before_it_passes_them(tmp_path):
    """The digests are of the bytes on disk once written: a part is read only after the
    download announced its end, so bytes rewritten above the frontier count as rewritten."""
    size = 6 * PART
    path = tmp_path / "obj"
    path.write_bytes(bytes(size))
    fd = os.open(path, os.O_RDWR)
    try:
        hashers = Hashers(fd, size, PART, want_md5=True, threads=3)
        hashers.start()
        hashers.advance(2 * PART + 17)  # two parts and a bit are final
        final = os.urandom(size - 2 * PART - 17)
        os.pwrite(fd, final, 2 * PART + 17)  # the rest lands afterwards
        hashers.advance(size)
        assert hashers.join() is None
        assert hashers.digests() == _expected(bytes(2 * PART + 17) + final, PART)
    finally:
        os.close(fd)


def test_an_empty_object_has_the_digests_of_no_bytes(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    sha, _, _ = _expected(b"", PART)
    assert hash_file(path, PART, want_md5=True) == (
        sha, hashlib.md5(b"").hexdigest(), f"{hashlib.md5(b'').hexdigest()}-0")


def test_a_descriptor_that_cannot_be_read_is_an_error_the_transfer_raises(tmp_path,
                                                                          monkeypatch):
    """A follower whose file cannot even be looked at (here: a closed descriptor, which
    the real choice between map and read already stats) reports the OSError through ``join``
    for the transfer to turn into one line, instead of dying with a thread's traceback on
    stderr and leaving digests of nothing."""
    monkeypatch.setattr(hashers_module, "mappable", REAL_MAPPABLE)
    path = tmp_path / "obj"
    path.write_bytes(os.urandom(3 * PART))
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    hashers = Hashers(fd, 3 * PART, None, want_md5=True)  # the followers alone
    hashers.start()
    hashers.advance(3 * PART)
    error = hashers.join()
    assert isinstance(error, OSError) and error.errno == errno.EBADF
    parts = PartHashers(fd, 3 * PART, PART, 2)  # the part threads alone
    parts.start()
    parts.advance(3 * PART)
    parts.join()
    assert isinstance(parts.error, OSError) and parts.error.errno == errno.EBADF
