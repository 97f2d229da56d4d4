"""Subsets and direct mode through the real CLI: only the chosen members' byte ranges travel,
straight into the layout, and `verify` checks a subset against its recorded selection."""

from __future__ import annotations

import warnings
import zipfile

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

from isic2020.dataset import load_metadata
from isic2020.selection import select_images
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(
        tmp_path_factory.mktemp("syn"), n_train=400, n_test=30, image_size=64
    )


@pytest.fixture
def mirror(dataset):
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        yield srv


def _fetch(data, mirror, dataset, *args):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--json", *args,
                   env=cli_env(dataset.manifest_path))


def _metadata(data, split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_metadata(split, data, image_format=None)


def test_sample_fetches_only_the_chosen_images_and_verify_checks_the_subset(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    r = _fetch(data, mirror, dataset, "--split", "train", "--sample", "12", "--seed", "3")
    assert r.returncode == 0, r.stderr
    expected = select_images(_metadata(data, "train"), sample=12, seed=3)
    got = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert got == sorted(expected)
    assert not (data / "archives" / "ISIC_2020_Training_JPEG.zip").exists()
    # Server side: the tail, the central directory and 12 members, not the archive.
    zip_name = "ISIC_2020_Training_JPEG.zip"
    assert mirror.bytes_sent(zip_name) < dataset.path(zip_name).stat().st_size / 4
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        for info in zf.infolist():
            stem = info.filename.rsplit("/", 1)[-1][:-4]
            if stem in expected:
                assert (data / "jpeg" / "train" / f"{stem}.jpg").read_bytes() == zf.read(info)
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--json",
                env=cli_env(dataset.manifest_path))
    assert v.returncode == 0, v.stdout + v.stderr
    names = [c["name"] for c in v.json["checks"]]
    assert "images/jpeg/train/selection" in names


def test_where_selects_by_metadata(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    r = _fetch(data, mirror, dataset, "--split", "train", "--where", "target == 1")
    assert r.returncode == 0, r.stderr
    df = _metadata(data, "train")
    expected = sorted(df.loc[df["target"] == 1, "image_name"])
    assert expected, "the synthetic set has malignant images"
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == expected


def test_bad_where_is_a_usage_error_in_one_line(dataset, mirror, tmp_path):
    r = _fetch(tmp_path / "d", mirror, dataset, "--split", "train", "--where", "target ==")
    assert r.returncode == 2
    assert len(r.error_lines) == 1 and "--where" in r.error_lines[0]


def test_subset_needs_one_split(dataset, mirror, tmp_path):
    r = _fetch(tmp_path / "d", mirror, dataset, "--sample", "3")
    assert r.returncode == 2 and "--split" in r.error_lines[0]


def test_direct_gives_the_same_files_as_download_then_extract_without_the_archive(
    dataset, mirror, tmp_path
):
    direct, classic = tmp_path / "direct", tmp_path / "classic"
    r = _fetch(direct, mirror, dataset, "--split", "test", "--direct")
    assert r.returncode == 0, r.stderr
    assert r.json["verification"]["ok"] is True
    assert _fetch(classic, mirror, dataset, "--split", "test").returncode == 0
    a = {p.name: p.read_bytes() for p in (direct / "jpeg" / "test").iterdir()}
    b = {p.name: p.read_bytes() for p in (classic / "jpeg" / "test").iterdir()}
    assert a == b and len(a) == len(dataset.test_names)
    assert not (direct / "archives").exists() or not any((direct / "archives").iterdir())
    again = _fetch(direct, mirror, dataset, "--split", "test", "--direct")
    assert again.returncode == 0, again.stderr
    assert again.json["bytes_transferred"] == 0  # directory cached, every image present


def test_inspect_reports_members_against_the_metadata(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    assert _fetch(data, mirror, dataset, "--format", "none", "--split", "train").returncode == 0
    r = run_cli("inspect", "--data-dir", str(data), "--mirror", mirror.url, "--split", "train",
                "--json", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    (arch,) = r.json["archives"]
    assert arch["images"] == len(dataset.train_names)
    zip_name = "ISIC_2020_Training_JPEG.zip"
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        assert arch["entries"] == len(zf.infolist())
    # The tail and the central directory only: a small part of the archive.
    assert mirror.bytes_sent(zip_name) < dataset.path(zip_name).stat().st_size / 4
