"""Downloads from an S3-compatible server (moto in server mode), objects uploaded with boto3.

The ISIC files live on S3, so S3's ETag rules are what the tool's verification is built on:
a single PUT gives the object's MD5; a multipart upload gives ``md5(part md5s)-N``, checkable
only with the part size, which the client asks with ``HEAD ?partNumber=1``. Here the objects
are made by boto3 on a real S3 implementation (not by our own FaultServer, whose multipart
ETags tests/transfer/test_download.py uses), in one part and in parts of non-default sizes.

Whether ``HEAD ?partNumber=1`` was used is proven through the result: 1 MiB and 3 MiB parts
are not among the part sizes the engine would guess, so ``etag_check == "multipart"`` is only
possible when the server told it the part size (``part_size_source == "server"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.errors import VerificationError
from isic2020.synthetic import build_dataset
from isic2020.transfer.digests import COMMON_PART_SIZES
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy

pytestmark = pytest.mark.s3

ARCHIVE = "ISIC_2020_Training_JPEG.zip"
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=12)


def _upload_dataset(s3, bucket: str, dataset, *, part_size: int | None = None) -> None:
    for f in dataset.manifest.files:
        s3.upload(bucket, f.name, dataset.path(f.name), part_size=part_size)


def _blob_manifest(dataset, tmp_path: Path, blob: bytes) -> Path:
    """The synthetic manifest with the training archive replaced by ``blob`` (size + sha256)."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(
        dataclasses.replace(f, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        if f.name == ARCHIVE
        else f
        for f in man.files
    )
    path = tmp_path / "blob.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    return path


def _options() -> DownloadOptions:
    return DownloadOptions(
        connections=4,
        chunk_size=256 * KiB,
        timeouts=Timeouts(connect=2.0, read=5.0),
        retry=RetryPolicy(base=0.01, cap=0.2, window=10.0, probe_attempts=2),
    )


def _download(tmp_path: Path, url: str, **kw):
    part = tmp_path / "data" / ".isic2020" / "partial"
    final = tmp_path / "data" / "archives" / ARCHIVE
    d = Downloader(_options())
    try:
        res = d.download(ARCHIVE, [url], part / (ARCHIVE + ".part"),
                         part / (ARCHIVE + ".state.json"), final, **kw)
    finally:
        d.close()
    return res, final


def test_single_part_objects_fetch_and_extract_with_md5_etags(
    dataset, s3_server, s3_bucket, tmp_path
):
    _upload_dataset(s3_server, s3_bucket, dataset)
    data = tmp_path / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", s3_server.bucket_url(s3_bucket),
                "--split", "train", "--format", "jpeg", "--json", "--quiet",
                env=cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(16 * KiB)))
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["ok"] is True
    for entry in doc["files"]:
        want = dataset.path(entry["name"]).read_bytes()
        assert entry["etag_check"] == "md5"
        assert entry["etag"] == hashlib.md5(want).hexdigest()
        assert entry["etag"] == s3_server.etag(s3_bucket, entry["name"]).strip('"')
        assert entry["bytes_transferred"] == len(want)
    assert (data / "archives" / ARCHIVE).read_bytes() == dataset.path(ARCHIVE).read_bytes()
    got = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert got == sorted(dataset.train_names)


def test_multipart_object_with_1mib_parts_is_verified_via_the_cli(
    dataset, s3_server, s3_bucket, tmp_path
):
    """boto3 multipart upload in 1 MiB parts (moto's 5 MiB minimum lowered): the CLI's JSON
    says ``multipart`` (the ETag was recomputed from per-part MD5s), and the bytes are exact."""
    assert MiB not in COMMON_PART_SIZES  # so only the server's answer can give the part size
    blob = random.Random(1).randbytes(3 * MiB + 12345)
    for f in dataset.manifest.files:
        if f.kind == "metadata":
            s3_server.upload(s3_bucket, f.name, dataset.path(f.name))
    s3_server.upload(s3_bucket, ARCHIVE, blob, part_size=MiB)
    etag = s3_server.etag(s3_bucket, ARCHIVE).strip('"')
    assert etag.endswith("-4")
    data = tmp_path / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", s3_server.bucket_url(s3_bucket),
                "--split", "train", "--format", "jpeg", "--no-extract", "--json", "--quiet",
                env=cli_env(_blob_manifest(dataset, tmp_path, blob),
                            ISIC2020_CHUNK_SIZE=str(256 * KiB)))
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == ARCHIVE]
    assert entry["etag"] == etag
    assert entry["etag_check"] == "multipart"
    assert entry["bytes_transferred"] == len(blob)
    assert (data / "archives" / ARCHIVE).read_bytes() == blob


@pytest.mark.parametrize(
    ("part_size", "size", "parts"),
    [
        (5 * MiB, 11 * MiB + 7, 3),  # the S3 minimum, not boto3's default 8 MiB
        (3 * MiB, 7 * MiB, 3),  # a size no tool uses: only HEAD ?partNumber=1 can tell
        (MiB, 300 * KiB, 1),  # a multipart upload of one short part ("-1")
    ],
)
def test_multipart_part_size_comes_from_head_part_number_and_etag_verifies(
    s3_server, s3_bucket, tmp_path, part_size, size, parts
):
    blob = random.Random(size).randbytes(size)
    url = s3_server.upload(s3_bucket, ARCHIVE, blob, part_size=part_size)
    d = Downloader(_options())
    try:
        remote = d.probe(url)
    finally:
        d.close()
    assert remote.etag is not None and remote.etag.endswith(f"-{parts}")
    assert remote.size == size
    # Asked from the server (HEAD ?partNumber=1), not guessed from the usual sizes.
    assert (remote.part_size, remote.part_size_source) == (min(part_size, size), "server")
    res, final = _download(tmp_path, url, expected_size=size)
    assert res.etag_check == "multipart"
    assert res.etag == remote.etag
    assert final.read_bytes() == blob
    assert res.sha256 == hashlib.sha256(blob).hexdigest()


def test_corrupted_object_on_s3_is_refused_exit_1_and_nothing_lands(
    dataset, s3_server, s3_bucket, tmp_path
):
    """The bucket holds other bytes (same size) than the manifest's sha256: S3's own ETag is
    consistent with the bad bytes, so only the pinned sha256 can catch it; it must."""
    good = dataset.path(ARCHIVE).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x40
    for f in dataset.manifest.files:
        if f.kind == "metadata":
            s3_server.upload(s3_bucket, f.name, dataset.path(f.name))
    s3_server.upload(s3_bucket, ARCHIVE, bytes(bad), part_size=16 * KiB)
    data = tmp_path / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", s3_server.bucket_url(s3_bucket),
                "--split", "train", "--format", "jpeg", "--quiet",
                env=cli_env(dataset.manifest_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(r.error_lines) == 1, r.stderr
    assert ARCHIVE in r.error_lines[0] and "sha256" in r.error_lines[0]
    assert "Traceback" not in r.stderr
    assert not (data / "archives" / ARCHIVE).exists()
    assert not list((data / ".isic2020" / "partial").glob(ARCHIVE + "*"))
    assert not (data / "jpeg" / "train").exists()
    # The library says the same, as a VerificationError (exit code 1).
    with pytest.raises(VerificationError, match="sha256"):
        _download(tmp_path / "lib", s3_server.url_for(s3_bucket, ARCHIVE),
                  expected_sha256=hashlib.sha256(good).hexdigest())


def test_missing_key_in_bucket_is_exit_3_naming_the_http_status(
    dataset, s3_server, s3_bucket, tmp_path
):
    """A bucket without the file (S3 answers 404 NoSuchKey to HEAD): exit 3, one line."""
    data = tmp_path / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", s3_server.bucket_url(s3_bucket),
                "--split", "test", "--format", "none", "--quiet",
                env=cli_env(dataset.manifest_path))
    assert r.returncode == 3, r.stderr
    assert len(r.error_lines) == 1 and "HTTP 404" in r.error_lines[0], r.stderr
    assert not (data / "metadata" / "ISIC_2020_Test_Metadata.csv").exists()
