"""Response bodies read straight into the connection's buffer (``transfer.body``), against
the FaultServer on 127.0.0.1.

What users depend on: the bytes are the server's, keep-alive still works (a download over N
connections opens N connections, not one per chunk), a body cut short fails after the bytes
that did come (so a retry resumes after them), and a body that needs urllib3 (a content
coding) is still read. And the fast path itself: if a urllib3 or Python release changes what
the reader relies on, the test of ``direct`` fails instead of every download silently taking
the slower path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest
import requests
from support.servers import FaultServer, GzipBody, ShortBody

from isic2020.transfer.body import BodyReader, Truncated
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy

KiB = 1024
MiB = 1024 * KiB
NAME = "ISIC_2020_Training_JPEG.zip"


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(3 * MiB + 4321)
    (root / NAME).write_bytes(data)
    with FaultServer(root, prefix="/challenges/2020/") as srv:
        yield srv, data


def _read_all(body: BodyReader, size: int) -> tuple[bytes, list[int]]:
    """Every byte ``body`` gives, through one reused buffer of ``size`` bytes (and how many
    each read gave)."""
    view = memoryview(bytearray(size))
    out, reads = bytearray(), []
    while n := body.readinto1(view):
        out += view[:n]
        reads.append(n)
    return bytes(out), reads


def test_a_plain_range_body_is_read_straight_into_the_buffer_and_the_connection_kept(served):
    srv, data = served
    with requests.Session() as s:
        for start in (0, 1 * MiB, 3 * MiB):
            end = min(len(data), start + 1 * MiB) - 1
            with s.get(srv.url_for(NAME), headers={"Range": f"bytes={start}-{end}"},
                       stream=True, timeout=5) as r:
                assert r.status_code == 206
                body = BodyReader(r.raw)
                assert body.direct, "the reader fell back to urllib3's read1 for a plain body"
                got, reads = _read_all(body, 256 * KiB)
            assert got == data[start:end + 1]
            assert max(reads) <= 256 * KiB
    gets = srv.requests(NAME, "GET")
    assert len(gets) == 3
    assert len({g.peer for g in gets}) == 1, "a body read to its end did not free its connection"


def test_a_ranged_download_opens_one_connection_per_connection_not_per_chunk(served, tmp_path):
    srv, data = served
    opts = DownloadOptions(connections=2, chunk_size=256 * KiB,
                           timeouts=Timeouts(connect=2.0, read=2.0),
                           retry=RetryPolicy(base=0.01, cap=0.2, window=20.0, probe_attempts=2))
    state = tmp_path / "data" / ".isic2020" / "partial"
    final = tmp_path / "data" / NAME
    d = Downloader(opts)
    try:
        d.download(NAME, [srv.url_for(NAME)], state / (NAME + ".part"),
                   state / (NAME + ".state.json"), final)
    finally:
        d.close()
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(data).digest()
    ranged = [g for g in srv.requests(NAME, "GET") if g.header("Range")]
    assert len(ranged) >= 12  # 3 MiB in 256 KiB chunks
    assert len({g.peer for g in ranged}) <= 2


def test_a_body_cut_short_fails_after_the_bytes_that_came(served):
    srv, data = served
    srv.add_fault(ShortBody(sent=100 * KiB + 7), NAME, times=1)
    with requests.Session() as s, s.get(srv.url_for(NAME), headers={"Range": "bytes=0-1048575"},
                                        stream=True, timeout=5) as r:
        body = BodyReader(r.raw)
        view = memoryview(bytearray(64 * KiB))
        got = bytearray()
        with pytest.raises(Truncated, match="before the body was complete"):
            while n := body.readinto1(view):
                got += view[:n]
    assert bytes(got) == data[:100 * KiB + 7]


def test_a_content_coded_body_is_read_through_urllib3_undecoded(served):
    srv, data = served
    srv.add_fault(GzipBody(), NAME, times=None)
    with requests.Session() as s, s.get(srv.url_for(NAME), stream=True, timeout=5) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        body = BodyReader(r.raw)
        assert not body.direct
        got, _ = _read_all(body, 256 * KiB)
    assert gzip.decompress(got) == data
