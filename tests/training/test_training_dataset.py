"""isic2020.ISICDataset: a map-style dataset over a verified folder (len, items of image,
target, metadata), folds and duplicates on request, picklable, with no torch import."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support.cli import cli_env, run_cli
from support.jpegs import write_jpegs
from support.metadata import make_synthetic

import isic2020
from isic2020.errors import UsageError, VerificationError


def _data(tmp_path: Path, folds: bool = True):
    data = tmp_path / "data"
    syn = make_synthetic(data)
    images = write_jpegs(data, {"train": list(syn.train["image_name"]),
                                "test": list(syn.test["image_name"])})
    if folds:
        assert run_cli("folds", "--data-dir", str(data)).returncode == 0
    return data, syn, images


def test_items_are_image_target_and_metadata(tmp_path: Path) -> None:
    data, syn, images = _data(tmp_path)
    ds = isic2020.ISICDataset(data)
    assert len(ds) == len(syn.train)
    assert ds.keys == sorted(syn.train["image_name"])
    truth = syn.train.set_index("image_name")
    image, target, meta = ds[3]
    key = ds.keys[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    with Image.open(io.BytesIO(images[key])) as ref:
        assert image.tobytes() == ref.convert("RGB").tobytes()
    assert target == int(truth.loc[key, "target"]) and ds.targets[3] == target
    assert meta["image_name"] == key and meta["patient_id"] == truth.loc[key, "patient_id"]
    assert isinstance(meta["fold"], int)
    json.dumps(meta)  # plain values only
    with pytest.raises(IndexError):
        ds[len(ds)]
    raw, _, _ = isic2020.ISICDataset(data, decode=False)[3]
    assert raw == images[key]
    sized = isic2020.ISICDataset(data, transform=lambda im: im.size)
    assert sized[0][0] == (24, 16)
    # a plain loop over every item, as DataLoader's sampler would index it
    assert sum(t for _, t, _ in (ds[i] for i in range(len(ds)))) == int(
        syn.train["target"].astype(int).sum())


def test_folds_and_duplicates(tmp_path: Path) -> None:
    import pandas as pd

    data, syn, _ = _data(tmp_path)
    folds = pd.read_csv(data / "folds.csv").set_index("image_name")["fold"]
    val = isic2020.ISICDataset(data, fold=2)
    train = isic2020.ISICDataset(data, exclude_fold=2)
    assert set(val.keys) == set(folds[folds == 2].index)
    assert set(train.keys) == set(folds[folds != 2].index)
    assert len(val) + len(train) == len(syn.train) and len(val) > 0
    dedup = isic2020.ISICDataset(data, drop_duplicates=True)
    second = {b for _, b in syn.pairs}
    assert set(dedup.keys) == set(syn.train["image_name"]) - second and second


def test_test_split_has_no_labels_and_missing_images_warn(tmp_path: Path) -> None:
    data, syn, _ = _data(tmp_path, folds=False)
    test = isic2020.ISICDataset(data, split="test")
    assert len(test) == len(syn.test) and test[0][1] == -1 and "target" not in test[0][2]
    gone = sorted(syn.train["image_name"])[0]
    (data / "jpeg" / "train" / f"{gone}.jpg").unlink()
    with pytest.warns(isic2020.ImagesMissingWarning, match="1 of"):
        ds = isic2020.ISICDataset(data)
    assert gone not in ds.keys and len(ds) == len(syn.train) - 1


def test_bad_requests_and_damaged_images(tmp_path: Path) -> None:
    data, syn, images = _data(tmp_path, folds=False)
    with pytest.raises(UsageError, match="folds"):
        isic2020.ISICDataset(data, fold=0)
    with pytest.raises(UsageError, match="unknown image format"):
        isic2020.ISICDataset(data, image_format="png")
    ds = isic2020.ISICDataset(data)
    bad = data / "jpeg" / "train" / f"{ds.keys[0]}.jpg"
    bad.write_bytes(images[ds.keys[0]][:-2] + b"\x00\x00")
    with pytest.raises(VerificationError, match="truncated JPEG"):
        ds[0]


def test_pickles_for_dataloader_workers_and_never_imports_torch(tmp_path: Path) -> None:
    """DataLoader workers get the dataset by pickling; nothing in the package needs torch."""
    data, _, images = _data(tmp_path, folds=False)
    ds = isic2020.ISICDataset(data, decode=False)
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == len(ds) and copy[5][0] == images[ds.keys[5]]
    code = (
        "import sys, isic2020; ds = isic2020.ISICDataset(sys.argv[1]); ds[0]; "
        "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True,
                       timeout=120, env=cli_env())
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_cli_start_does_not_import_pyarrow() -> None:
    code = ("import sys, isic2020.cli; "
            "print(sorted(m for m in ('pyarrow', 'webdataset', 'datasets') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=cli_env())
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr
