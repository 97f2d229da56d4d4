"""`export` and `folds` of a subset work on the images present (issue 13, defect 7).

After `fetch --sample N`, a Kaggle `train.csv` of every CSV row would point a notebook at
images that are not there (before: all rows, N linked, exit 1). The subset's rows only, the
images all linked, exit 0, and the JSON says `subset: true` with the counts; the same for the
webdataset shards and for `folds.csv`.
"""

from __future__ import annotations

import csv
import tarfile

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
N = 14


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory):
    """A data directory holding a 14-image sample of train (and the test CSV)."""
    root = tmp_path_factory.mktemp("subset")
    ds = build_dataset(root / "syn", n_train=90, n_test=8, image_size=32)
    data = root / "d"
    with FaultServer(ds.root, prefix=PREFIX) as srv:
        env = cli_env(ds.manifest_path, ISIC2020_MIRROR=srv.url)
        r = run_cli("fetch", "--split", "train", "--sample", str(N), "--data-dir", str(data),
                    "-q", env=env)
        assert r.returncode == 0, r.stderr
    names = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert len(names) == N
    return ds, data, names


def _run(fetched, *args):
    ds, data, _ = fetched
    return run_cli(*args, "--data-dir", str(data), "--json", env=cli_env(ds.manifest_path))


def test_kaggle_export_of_a_subset_writes_the_rows_of_the_images_present(fetched, tmp_path):
    _, _, names = fetched
    dest = tmp_path / "kaggle"
    r = _run(fetched, "export", str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = r.json
    assert doc["subset"] is True
    assert doc["subset_images"]["train"] == {"selected": N, "in_metadata": 90}
    assert doc["missing"] == 0 and doc["linked"] == N
    with open(dest / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["image_name"] for row in rows) == names
    assert sorted(p.stem for p in (dest / "jpeg" / "train").iterdir()) == names


def test_folds_of_a_subset_fold_the_images_present(fetched, tmp_path):
    _, _, names = fetched
    out = tmp_path / "folds.csv"
    r = _run(fetched, "folds", "-k", "3", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.json["subset"] is True and r.json["in_metadata"] == 90 and r.json["images"] == N
    with open(out, newline="") as fh:
        assert sorted(row["image_name"] for row in csv.DictReader(fh)) == names


def test_webdataset_export_of_a_subset_holds_it_and_passes(fetched, tmp_path):
    _, _, names = fetched
    dest = tmp_path / "wds"
    r = _run(fetched, "export", "--layout", "webdataset", "--split", "train", str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.json["subset"] is True
    assert r.json["subset_images"]["train"] == {"selected": N, "in_metadata": 90}
    keys: set[str] = set()
    for tar in dest.glob("isic2020-train-*.tar"):
        with tarfile.open(tar) as tf:
            keys |= {m.name.split(".")[0] for m in tf.getmembers()}
    assert sorted(keys) == names
