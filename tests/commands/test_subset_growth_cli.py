"""A subset grows, into the whole split if asked (issue 13, defect 2).

`--sample`/`--images`/`--where` record a selection in `DATA/.isic2020/selections/`; `verify`
checks the folder against it. A larger subset adds to it; a fetch (or `extract`) of the whole
split supersedes it, so the folder is checked against the CSV again; a subset of a folder that
holds the whole split leaves it the whole split; `--reset-selection` replaces it. Every step
must end in a `verify` that passes (before: "200 of 10 images; 190 extra", forever).
"""

from __future__ import annotations

import pytest
from support.cli import cli_env, run_cli
from support.fixtures import served_dataset

SELECTION = ".isic2020/selections/train-jpeg.json"


dataset, mirror = served_dataset("syn", n_train=80, n_test=8, image_size=32)


@pytest.fixture
def cli(dataset, mirror, tmp_path):
    data = tmp_path / "d"

    def run(*args: str):
        return run_cli(*args, "--data-dir", str(data),
                       env=cli_env(dataset.manifest_path, ISIC2020_MIRROR=mirror.url))

    run.data = data  # type: ignore[attr-defined]
    return run


def _images(data):
    return sorted(p.stem for p in (data / "jpeg" / "train").iterdir())


def _ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    return r


def test_a_fetch_of_the_whole_split_supersedes_a_subset(cli, dataset):
    _ok(cli("fetch", "--split", "train", "--sample", "10", "-q"))
    assert (cli.data / SELECTION).exists()
    _ok(cli("fetch", "--split", "train", "-q"))
    assert not (cli.data / SELECTION).exists()
    assert _images(cli.data) == sorted(dataset.train_names)
    v = _ok(cli("verify", "--split", "train", "--json"))
    assert "images/jpeg/train/selection" not in {c["name"] for c in v.json["checks"]}


def test_a_larger_subset_adds_images_and_both_stay_expected(cli):
    first = _ok(cli("fetch", "--split", "train", "--sample", "5", "-q"))
    assert first.returncode == 0
    five = set(_images(cli.data))
    _ok(cli("fetch", "--split", "train", "--sample", "12", "--seed", "7", "-q"))
    now = set(_images(cli.data))
    assert five < now and len(now) >= 12
    v = _ok(cli("verify", "--json"))
    assert v.json["checks"][[c["name"] for c in v.json["checks"]].index(
        "images/jpeg/train/selection")]["figures"]["selected"] == len(now)


def test_a_subset_of_a_folder_holding_the_whole_split_keeps_it_whole(cli, dataset):
    _ok(cli("fetch", "--split", "train", "-q"))
    _ok(cli("fetch", "--split", "train", "--sample", "4", "-q"))
    assert not (cli.data / SELECTION).exists()
    v = _ok(cli("verify", "--json"))
    names = v.json["checks"][[c["name"] for c in v.json["checks"]].index(
        "images/jpeg/train/names")]
    assert names["figures"]["expected"] == len(dataset.train_names)


def test_reset_selection_replaces_the_subset_and_removes_the_rest(cli):
    _ok(cli("fetch", "--split", "train", "--sample", "15", "-q"))
    r = _ok(cli("fetch", "--split", "train", "--sample", "4", "--seed", "9",
                "--reset-selection", "--json"))
    assert r.json["verification"]["ok"] is True
    assert len(_images(cli.data)) == 4
    _ok(cli("verify"))
    bad = cli("fetch", "--split", "train", "--reset-selection")
    assert bad.returncode == 2 and "--reset-selection" in bad.error_lines[0]


def test_extract_of_the_whole_archive_supersedes_a_subset(cli, dataset):
    _ok(cli("fetch", "--split", "train", "--sample", "6", "-q"))
    _ok(cli("fetch", "--split", "train", "--no-extract", "-q"))
    _ok(cli("extract", "--split", "train", "-q"))
    assert not (cli.data / SELECTION).exists()
    assert _images(cli.data) == sorted(dataset.train_names)
    _ok(cli("verify"))
