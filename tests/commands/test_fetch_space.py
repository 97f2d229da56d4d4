"""The disk-space check before a fetch, and what its dry run says about space.

What a user depends on: a fetch that cannot fit is refused before a single byte is downloaded
(not after an hour, with the disk full); one that fits is never refused because the manifest's
published sizes are larger than what this mirror serves; images are counted as the filesystem
stores them (each costs whole blocks: thousands of small images cost far more than their
bytes); and the dry run says when a fetch will not fit and when ``--direct`` (the images, no
archive) would. Real tmpfs filesystems of a few hundred KB (tests/support/fs.py), the real CLI,
a real FaultServer.
"""

from __future__ import annotations

import dataclasses

import pytest
from support.cli import cli_env, run_cli
from support.fs import small_filesystem
from support.servers import FaultServer

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"
KiB = 1024


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    """60 training images of 256 px (about 4.7 KB each: two 4 KiB blocks for most), a zip of
    about 250 KB; unpacked they take about 430 KB of a tmpfs."""
    return build_dataset(tmp_path_factory.mktemp("photos"), n_train=60, n_test=2,
                         image_size=256)


@pytest.fixture(scope="module")
def thumbs(tmp_path_factory: pytest.TempPathFactory):
    """300 training images of about 800 bytes: a zip of about 220 KB whose images take 1.2 MB
    once unpacked (a 4 KiB block each)."""
    return build_dataset(tmp_path_factory.mktemp("thumbs"), n_train=300, n_test=2)


def _fetch(srv: FaultServer, data, env, *extra: str):
    return run_cli("fetch", "--mirror", srv.url, "--split", "train", "--format", "jpeg",
                   "--data-dir", str(data), *extra, env=env)


def _gets(srv: FaultServer) -> list:
    return srv.requests(method="GET")


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("isic2020: error")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_too_small_is_refused_before_any_download_and_the_dry_run_suggests_direct(
    photos, tmp_path
):
    """A 640 KiB tmpfs: twice the archive fits (the old estimate let the fetch start and fill
    the disk while unpacking), the archive and its images in whole blocks do not. The fetch is
    refused with exit 3 before any GET, its hint and the dry run name ``--direct``, and
    ``--direct`` then fetches every image into the same filesystem."""
    env = cli_env(photos.manifest_path)
    with FaultServer(photos.root, prefix=PREFIX) as srv, small_filesystem(
        tmp_path / "fs", 640 * KiB
    ) as fs:
        data = fs / "data"
        archive = (photos.root / ZIP).stat().st_size
        assert 2 * archive + 16 * KiB < 640 * KiB  # what the old check asked for fits

        dry = _fetch(srv, data, env, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "will not fit" in dry.stdout, dry.stdout
        assert "--direct would fit" in dry.stdout, dry.stdout

        r = _fetch(srv, data, env)
        assert r.returncode == 3, r.stderr
        line = _error_line(r.stderr)
        assert "not enough disk space" in line and "--direct" in line, line
        assert _gets(srv) == [], "bytes were downloaded before the refusal"

        r = _fetch(srv, data, env, "--direct")
        assert r.returncode == 0, r.stderr
        got = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
        assert got == sorted(photos.train_names)
        assert not (data / "archives" / ZIP).exists()


def test_many_small_images_cost_a_block_each(thumbs, tmp_path):
    """300 images of 800 bytes from a 220 KB zip, a tmpfs with 900 KiB: their bytes (and the
    zip twice) fit, their blocks (1.2 MB) do not even without the archive. Refused before any
    GET; the dry run says it will not fit and does not suggest ``--direct``."""
    env = cli_env(thumbs.manifest_path)
    with FaultServer(thumbs.root, prefix=PREFIX) as srv, small_filesystem(
        tmp_path / "fs", 900 * KiB
    ) as fs:
        data = fs / "data"
        archive = (thumbs.root / ZIP).stat().st_size
        assert 2 * archive + 64 * KiB < 900 * KiB < 300 * 4096

        dry = _fetch(srv, data, env, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "will not fit" in dry.stdout and "--direct would fit" not in dry.stdout

        r = _fetch(srv, data, env)
        assert r.returncode == 3, r.stderr
        assert "not enough disk space" in _error_line(r.stderr)
        assert _gets(srv) == []
        assert not (data / "jpeg").exists()


def test_an_archive_alone_that_does_not_fit_is_refused_with_a_hint_that_can_help(
    photos, tmp_path
):
    """``--no-extract`` of a 250 KB zip into a 192 KiB tmpfs: refused before any GET, and the
    hint does not suggest the ``--no-extract`` the user already gave (nor ``--direct``,
    which would unpack what they asked to keep packed)."""
    env = cli_env(photos.manifest_path)
    with FaultServer(photos.root, prefix=PREFIX) as srv, small_filesystem(
        tmp_path / "fs", 192 * KiB
    ) as fs:
        assert (photos.root / ZIP).stat().st_size > 192 * KiB
        r = _fetch(srv, fs / "data", env, "--no-extract")
        assert r.returncode == 3, r.stderr
        line = _error_line(r.stderr)
        assert "not enough disk space" in line and "--data-dir" in line, line
        assert "--no-extract" not in line and "--direct" not in line, line
        assert _gets(srv) == []


def test_the_servers_sizes_win_over_the_manifests_published_ones(photos, tmp_path):
    """A manifest that pins no sizes and publishes the archive as 2 MB (the mirror serves
    250 KB), a 1.5 MiB tmpfs: by the published sizes the fetch needs 4 MB and would be
    refused; by the sizes the server answers the HEADs with, it fits, and it completes."""
    man = load_manifest(photos.manifest_path)
    files = tuple(
        dataclasses.replace(f, size=None, published_size="2 MB" if f.name == ZIP else
                            f.published_size)
        for f in man.files
    )
    path = tmp_path / "published.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    env = cli_env(path)
    with FaultServer(photos.root, prefix=PREFIX) as srv, small_filesystem(
        tmp_path / "fs", 1536 * KiB
    ) as fs:
        data = fs / "data"
        dry = _fetch(srv, data, env, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "will not fit" not in dry.stdout, dry.stdout

        r = _fetch(srv, data, env)
        assert r.returncode == 0, r.stderr
        got = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
        assert got == sorted(photos.train_names)
