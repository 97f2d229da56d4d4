"""The saved directory made while the archive downloads (``saved.prepare_directory``), and the
directory asked for with the end records (``StreamingExtractor.first_offset``).

What a user depends on: after a streamed fetch the archive's directory is kept exactly as if
it had been read from the landed archive (a later ``fetch`` repairs images from it once the
archive is gone); a directory prepared for another identity (another URL, ETag or sha256)
is never written for this archive; and the streaming's first request covers the directory,
so the unpacking can start without waiting for a second one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

from isic2020.archive.remote import load_cached
from isic2020.archive.saved import (
    directory_path,
    key_of,
    load_directory,
    prepare_directory,
    save_directory,
)
from isic2020.archive.streaming import StreamingExtractor
from isic2020.archive.zipformat import read_directory, tail_start
from isic2020.catalog.manifest import load_manifest
from isic2020.store.layout import Layout
from isic2020.store.records import Records
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 150


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("prepared"), n_train=N_TRAIN, n_test=4,
                         image_size=32)


def _parsed(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_directory(lambda at, n: os.pread(fd, n, at), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_a_streamed_fetch_keeps_the_directory_of_the_archive_that_landed(dataset, tmp_path):
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split", "train",
                    "--format", "jpeg", "--connections", "2", "--json",
                    env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["extraction"]["while_downloading"]["unpacked"] == N_TRAIN
    rec = Records(Layout.at(data).records_path).file(TRAIN)
    assert rec is not None
    saved = load_directory(directory_path(data / ".isic2020", TRAIN), rec.size, rec.etag,
                           rec.sha256)
    assert saved is not None, "no directory kept for the landed archive"
    cd, entries = _parsed(data / "archives" / TRAIN)
    assert saved.url == rec.url and saved.size == rec.size
    assert (saved.cd_offset, saved.cd_size) == (cd.offset, cd.size)
    assert [(m.name, m.crc, m.file_size, m.header_offset) for m in saved.members] == \
        [(e.name, e.crc, e.file_size, e.header_offset) for e in entries]


@pytest.mark.parametrize("differs", ["url", "etag", "sha256"])
def test_a_directory_prepared_for_another_identity_is_not_written(dataset, tmp_path, differs):
    path = dataset.root / TRAIN
    size = path.stat().st_size
    ident = {"url": "http://mirror/a.zip", "etag": "abc", "sha256": "1" * 64}
    other = {**ident, differs: {"url": "http://else/a.zip", "etag": "xyz",
                                "sha256": "2" * 64}[differs]}
    cd, entries = _parsed(path)
    # prepared from a directory that is not this archive's (its first entry renamed)
    wrong = [dataclasses.replace(entries[0], name="train/ISIC_9999999.jpg"), *entries[1:]]
    prepared = prepare_directory((cd, wrong), size, other["url"], other["etag"],
                                 other["sha256"])
    dest = tmp_path / "dir.json.gz"
    assert save_directory(path, dest, ident["url"], ident["etag"], ident["sha256"],
                          prepared=prepared)
    kept = load_cached(dest, key_of(size, ident["etag"], ident["sha256"]))
    assert kept is not None and kept.url == ident["url"]
    assert [m.name for m in kept.members] == [e.name for e in entries]


def test_a_fitting_prepared_directory_is_written_as_it_is(dataset, tmp_path):
    path = dataset.root / TRAIN
    size = path.stat().st_size
    cd, entries = _parsed(path)
    prepared = prepare_directory((cd, entries), size, "http://m/a.zip", "abc", "1" * 64)
    dest = tmp_path / "dir.json.gz"
    assert save_directory(path, dest, "http://m/a.zip", "abc", "1" * 64, prepared=prepared)
    assert dest.read_bytes() == prepared.data


def test_the_first_request_covers_the_directory(tmp_path):
    """A zip whose directory is larger than the end records' room (1,500 images: ~100 KB)."""
    ds = build_dataset(tmp_path / "big", n_train=1500, n_test=2, image_size=8)
    (entry,) = [f for f in load_manifest(ds.manifest_path).files if f.name == TRAIN]
    size = (ds.root / TRAIN).stat().st_size
    cd, _ = _parsed(ds.root / TRAIN)
    assert cd.offset < tail_start(size)  # the end records' room alone would miss it
    first = StreamingExtractor(Layout.at(tmp_path / "d"), entry).first_offset(size)
    assert first is not None and first <= cd.offset
