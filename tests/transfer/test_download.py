"""The download engine against a real HTTP server on 127.0.0.1 that misbehaves on purpose.

Each test states a promise the engine makes to users: what lands at the final path is exactly
the source object, resumes do not re-download finished bytes, and every failure is an error
that says what happened (never a hang, never a splice of two versions).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from support.servers import (
    BadContentRange,
    FaultServer,
    IgnoreRange,
    ReplaceObject,
    Reset,
    ShortBody,
    Stall,
    Status,
    ranged,
    refused_url,
    unresolvable_url,
)

from isic2020.errors import DownloadError, VerificationError
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy

KiB = 1024
MiB = 1024 * KiB
NAME = "ISIC_2020_Training_JPEG.zip"


def _random_blob(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "mirror"
    root.mkdir()
    data = _random_blob(3 * MiB + 12345)
    (root / NAME).write_bytes(data)
    with FaultServer(root, prefix="/challenges/2020/") as srv:
        yield srv, data


def _options(**kw) -> DownloadOptions:
    base = dict(
        connections=4,
        chunk_size=256 * KiB,
        timeouts=Timeouts(connect=2.0, read=2.0),
        retry=RetryPolicy(base=0.01, cap=0.2, window=20.0, probe_attempts=2),
    )
    base.update(kw)
    return DownloadOptions(**base)


def _paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    state = tmp_path / "data" / ".isic2020" / "partial"
    return state / (NAME + ".part"), state / (NAME + ".state.json"), tmp_path / "data" / NAME


def _download(tmp_path: Path, urls: list[str], opts: DownloadOptions | None = None, **kw):
    partial, state, final = _paths(tmp_path)
    d = Downloader(opts or _options())
    try:
        return d.download(NAME, urls, partial, state, final, **kw)
    finally:
        d.close()


def _assert_landed(tmp_path: Path, data: bytes) -> None:
    partial, state, final = _paths(tmp_path)
    assert final.read_bytes() == data
    assert not partial.exists() and not state.exists()


def test_parallel_download_lands_exact_bytes_verified_by_md5_etag(served, tmp_path):
    srv, data = served
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.etag_check == "md5"
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.bytes_transferred == len(data)
    ranged_gets = [r for r in srv.requests(NAME, "GET") if r.header("Range")]
    assert len(ranged_gets) >= 13  # 3 MiB in 256 KiB chunks: it really used ranges
    assert all(r.header("If-Match") for r in ranged_gets)
    assert all(r.header("Accept-Encoding") == "identity" for r in ranged_gets)


def test_connection_resets_mid_body_resume_from_the_break(served, tmp_path):
    srv, data = served
    srv.add_fault(Reset(after=(1, 200 * KiB), seed=7), NAME, times=25, when=ranged)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    resets = [r for r in srv.requests(NAME, "GET") if r.outcome == "reset"]
    assert len(resets) == 25

    def asked(r) -> int:
        a, b = r.header("Range").split("=")[1].split("-")
        return int(b) - int(a) + 1

    # A reset after the last byte of a range needs no retry (the bytes before a reset are
    # kept, so the retried ranges shrink and some resets land exactly at their end).
    broken = [r for r in resets if r.bytes_sent < asked(r)]
    assert res.retries >= len(broken) >= 15
    # Each retry asks only for what is missing: not one byte was received twice. (The server's
    # own count is higher: bytes in flight when the RST hits are lost by the kernel.)
    assert res.bytes_transferred == len(data)


def test_503_slowdown_with_retry_after_is_retried(served, tmp_path):
    srv, data = served
    srv.add_fault(Status.slow_down(retry_after=1), NAME, times=3, when=ranged)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.retries >= 3
    statuses = [r.status for r in srv.requests(NAME, "GET")]
    assert statuses.count(503) == 3


def test_500_is_retried(served, tmp_path):
    """Four 500s in a row on one range: retried with exponential backoff (full jitter: each
    wait is 0.5-1x of base * 2^attempt), as the gaps between the server's arrivals show."""
    srv, data = served
    srv.add_fault(Status.internal_error(), NAME, times=4,
                  when=lambda req: req.ranged and req.start == 0)
    policy = RetryPolicy(base=0.2, cap=5.0, window=20.0, probe_attempts=2)
    res = _download(tmp_path, [srv.url_for(NAME)], _options(retry=policy))
    _assert_landed(tmp_path, data)
    assert res.retries >= 4
    first = sorted((r for r in srv.requests(NAME, "GET")
                    if (r.header("Range") or "").startswith("bytes=0-")), key=lambda r: r.arrived)
    assert [r.status for r in first] == [500, 500, 500, 500, 206]
    gaps = [b.arrived - a.arrived for a, b in zip(first, first[1:])]
    for attempt, gap in enumerate(gaps):
        assert gap >= 0.5 * policy.base * 2**attempt - 0.01, (attempt, gaps)


def test_stall_fires_read_timeout_instead_of_hanging(served, tmp_path):
    """Two ranged GETs go silent after 1000 body bytes and the server keeps those connections
    open for good: only the client's read timeout can end them. Each broken range is asked
    again from byte 1000 on, no sooner than the read timeout and long before anything else
    could have ended the request (the server never does; the retry window is 20 s)."""
    srv, data = served
    read = 0.5
    srv.add_fault(Stall(seconds=None, after=1000), NAME, times=2, when=ranged)
    opts = _options(timeouts=Timeouts(connect=2.0, read=read))
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.append(_download(tmp_path, [srv.url_for(NAME)], opts)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60 * read)
    hung = worker.is_alive()
    srv.close()  # ends the stalls, so their requests are logged (and a hung client is freed)
    assert not hung, "the download hung on a stalled connection: no read timeout fired"
    (res,) = outcome
    _assert_landed(tmp_path, data)
    assert res.retries >= 2
    gets = srv.requests(NAME, "GET")
    stalled = [r for r in gets if r.outcome == "stall"]
    assert len(stalled) == 2
    for s in stalled:
        first, last = s.header("Range").split("=")[1].split("-")
        retry = min((r for r in gets if r.arrived > s.arrived
                     and r.header("Range").endswith(f"-{last}")), key=lambda r: r.arrived)
        waited = retry.arrived - s.arrived
        assert read <= waited < 20 * read, f"retried {waited:.2f}s after the stall began"
        # and from the byte where it broke: the 1000 bytes before the stall are kept
        assert retry.header("Range") == f"bytes={int(first) + 1000}-{last}"


def test_server_ignoring_ranges_falls_back_to_one_stream(served, tmp_path):
    srv, data = served
    srv.add_fault(IgnoreRange(), NAME, times=None)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.etag_check == "md5"
    # exactly one plain GET (no Range), and it carried the whole file
    plain = [r for r in srv.requests(NAME, "GET") if r.header("Range") is None]
    assert [(r.status, r.bytes_sent) for r in plain] == [(200, len(data))]


def test_mismatched_content_range_is_never_written(served, tmp_path):
    srv, data = served
    srv.add_fault(BadContentRange(shift=3), NAME, times=5, when=ranged)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.retries >= 5


def test_short_body_is_detected_and_completed(served, tmp_path):
    srv, data = served
    srv.add_fault(ShortBody(), NAME, times=5, when=ranged)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.retries >= 5


def test_object_replaced_mid_download_gives_the_new_object_never_a_splice(served, tmp_path):
    srv, data = served
    new = _random_blob(len(data) + 777)
    srv.add_fault(ReplaceObject(content=new, after_bytes=len(data) // 2), NAME)
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, new)
    assert res.etag == hashlib.md5(new).hexdigest()
    assert res.etag_check == "md5"


def test_multipart_etag_is_verified_with_part_size_from_the_server(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    data = _random_blob(5 * MiB + 4321)
    (root / NAME).write_bytes(data)
    with FaultServer(root, prefix="/challenges/2020/", etag="multipart", part_size=MiB) as srv:
        res = _download(tmp_path, [srv.url_for(NAME)])
        assert any(r.query.get("partNumber") == "1" for r in srv.requests(NAME, "HEAD"))
    _assert_landed(tmp_path, data)
    assert res.etag and res.etag.endswith("-6")
    assert res.etag_check == "multipart"


def test_wrong_sha256_fails_verification_and_nothing_lands(served, tmp_path):
    srv, data = served
    with pytest.raises(VerificationError, match="sha256"):
        _download(tmp_path, [srv.url_for(NAME)], expected_sha256="0" * 64)
    partial, state, final = _paths(tmp_path)
    assert not final.exists() and not partial.exists()


def test_mirror_with_a_different_size_than_the_manifest_is_refused(served, tmp_path):
    srv, data = served
    with pytest.raises(DownloadError, match="manifest says"):
        _download(tmp_path, [srv.url_for(NAME)], expected_size=len(data) + 1)
    assert not _paths(tmp_path)[2].exists()


def test_failover_from_dead_hosts_to_a_live_mirror(served, tmp_path):
    srv, data = served
    res = _download(tmp_path, [refused_url() + NAME, unresolvable_url() + NAME, srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert len(res.failed_hosts) == 2
    assert "refused" in res.failed_hosts[0]
    assert "DNS" in res.failed_hosts[1]


def test_all_hosts_failing_is_a_download_error_naming_each(tmp_path):
    with pytest.raises(DownloadError) as exc:
        _download(tmp_path, [refused_url() + NAME, refused_url("/other/") + NAME])
    assert exc.value.one_line().count("connection refused") == 2
    assert exc.value.exit_code == 3


def test_missing_object_on_one_host_fails_over(served, tmp_path):
    srv, data = served
    srv.add_fault(Status.not_found(), NAME, times=1)
    srv2_root = tmp_path / "mirror"
    with FaultServer(srv2_root, prefix="/challenges/2020/") as srv2:
        res = _download(tmp_path, [srv.url_for(NAME), srv2.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert "HTTP 404" in res.failed_hosts[0]


def test_interrupted_transfer_resumes_without_refetching_finished_chunks(served, tmp_path):
    """A host that dies half-way leaves a partial state that the next run continues."""
    srv, data = served
    # The server dies (resets every request) after ~half the file: the run gives up quickly.
    srv.add_fault(
        Reset(after=0, before_headers=True), NAME, times=None,
        when=lambda req: req.ranged and req.start >= len(data) // 2,
    )
    with pytest.raises(DownloadError):
        opts = _options(retry=RetryPolicy(base=0.01, cap=0.05, window=1.0))
        _download(tmp_path, [srv.url_for(NAME)], opts)
    partial, state, final = _paths(tmp_path)
    assert state.exists() and partial.exists() and not final.exists()
    first = srv.bytes_sent(NAME)
    assert first < len(data)
    srv.clear_faults()
    res = _download(tmp_path, [srv.url_for(NAME)])
    _assert_landed(tmp_path, data)
    assert res.status == "resumed"
    # The second run fetched only what the first did not finish.
    assert res.bytes_transferred <= len(data) - first + 4 * 256 * KiB
