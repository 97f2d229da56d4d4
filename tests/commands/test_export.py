"""export --layout kaggle: Kaggle's files and folders, hard links, safe rules for DEST."""

from __future__ import annotations

import errno
import importlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from support.metadata import KAGGLE_TEST, make_real_data_dir, make_synthetic, real_csv, run_cli

from isic2020.commands.export import MARKER, export
from isic2020.errors import UsageError

# the module, not the function of the same name that isic2020/__init__ may export
export_mod = importlib.import_module("isic2020.commands.export")


def test_kaggle_layout_hard_links(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "data", images=("jpeg", "dicom", "dicom-original"))
    dest = tmp_path / "kaggle"
    r = export(dest, data_dir=tmp_path / "data")
    assert r.exit_code == 0
    n_train, n_test = len(syn.train), len(syn.test)
    assert r.linked == 2 * (n_train + n_test) and r.copied == 0 and r.missing == 0
    train = pd.read_csv(dest / "train.csv")
    assert list(train.columns) == [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
        "diagnosis",
        "benign_malignant",
        "target",
    ]
    assert len(train) == n_train
    assert train["age_approx"].dtype == "float64"
    assert (
        ",45.0," in (dest / "train.csv").read_text() or ",60.0," in (dest / "train.csv").read_text()
    )
    test = pd.read_csv(dest / "test.csv")
    assert list(test.columns) == [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
    ]
    sub = pd.read_csv(dest / "sample_submission.csv")
    assert list(sub.columns) == ["image_name", "target"] and (sub["target"] == 0).all()
    n = syn.train["image_name"].iloc[0]
    src = tmp_path / "data" / "jpeg" / "train" / f"{n}.jpg"
    assert os.path.samefile(src, dest / "jpeg" / "train" / f"{n}.jpg")
    # *.dcm comes from the corrected DICOM when both are on disk
    dcm = dest / "train" / f"{n}.dcm"
    assert os.path.samefile(tmp_path / "data" / "dicom" / "train" / f"{n}.dcm", dcm)
    assert len(list((dest / "jpeg" / "test").iterdir())) == n_test
    assert len(list((dest / "test").iterdir())) == n_test
    assert json.loads((dest / MARKER).read_text())["complete"] is True

    # again: nothing to do, same result
    again = export(dest, data_dir=tmp_path / "data")
    assert again.linked == 0 and sum(f.unchanged for f in again.folders) == 2 * (n_train + n_test)


def test_dicom_original_choice_and_missing_formats(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "data", images=("dicom-original",))
    dest = tmp_path / "out"
    r = export(dest, data_dir=tmp_path / "data")
    assert r.exit_code == 0
    assert not (dest / "jpeg").exists()
    n = syn.test["image_name"].iloc[0]
    assert os.path.samefile(
        tmp_path / "data" / "dicom-original" / "test" / f"{n}.dcm", dest / "test" / f"{n}.dcm"
    )
    assert any("no jpeg train images" in x and "jpeg/train/ is not exported" in x for x in r.notes)


def test_partial_folder_is_exit_1(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "data", images=("jpeg",))
    (tmp_path / "data" / "jpeg" / "train" / f"{syn.train['image_name'].iloc[5]}.jpg").unlink()
    r = export(tmp_path / "out", data_dir=tmp_path / "data")
    assert r.exit_code == 1 and r.missing == 1
    assert any("incomplete" in x for x in r.notes)
    assert json.loads((tmp_path / "out" / MARKER).read_text())["complete"] is False


def test_copy_fallback_across_filesystems(tmp_path: Path, monkeypatch) -> None:
    syn = make_synthetic(tmp_path / "data", images=("jpeg",))
    calls = []

    def no_link(src, dst, *a, **kw):
        calls.append(src)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(export_mod.os, "link", no_link)
    r = export(tmp_path / "out", data_dir=tmp_path / "data")
    total = len(syn.train) + len(syn.test)
    assert r.copied == total and r.linked == 0
    assert len(calls) <= 2, "after one EXDEV per folder pair we copy without trying again"
    assert r.copy_reasons == ["DEST is on another file system than the data directory"]
    assert "copied" in "\n".join(r.summary_lines())
    n = syn.train["image_name"].iloc[0]
    out = tmp_path / "out" / "jpeg" / "train" / f"{n}.jpg"
    assert out.read_bytes() == (tmp_path / "data" / "jpeg" / "train" / f"{n}.jpg").read_bytes()
    assert not os.path.samefile(out, tmp_path / "data" / "jpeg" / "train" / f"{n}.jpg")
    # a rerun recognises its own copies
    again = export(tmp_path / "out", data_dir=tmp_path / "data")
    assert again.copied == 0


def test_dest_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_synthetic(data)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        export(other, data_dir=data)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    with pytest.raises(UsageError, match="inside the data directory"):
        export(data / "kaggle", data_dir=data)
    with pytest.raises(UsageError, match="contains the data directory"):
        export(tmp_path, data_dir=data)
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        export(f, data_dir=data)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export(empty, data_dir=data).exit_code == 0


def test_symlinked_subfolder_is_refused(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "data", images=("jpeg",))
    dest = tmp_path / "out"
    export(dest, data_dir=tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    for p in (dest / "jpeg" / "train").iterdir():
        p.unlink()
    (dest / "jpeg" / "train").rmdir()
    (dest / "jpeg" / "train").symlink_to(outside)
    with pytest.raises(UsageError, match="symbolic link"):
        export(dest, data_dir=tmp_path / "data")
    assert list(outside.iterdir()) == []


def test_cli_export(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path / "data", images=("jpeg",))
    r = run_cli(
        "export",
        "--layout",
        "kaggle",
        "--data-dir",
        str(tmp_path / "data"),
        str(tmp_path / "k"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["linked"] == len(syn.train) + len(syn.test)
    r = run_cli("export", "--data-dir", str(tmp_path / "data"), str(tmp_path / "data"))
    assert r.returncode == 2 and "inside the data directory" in r.stderr


def test_real_csvs_match_kaggle(tmp_path: Path) -> None:
    root = make_real_data_dir(tmp_path / "data")
    r = export(tmp_path / "k", data_dir=root)
    assert r.csvs == {"train.csv": 33126, "test.csv": 10982, "sample_submission.csv": 10982}
    train = pd.read_csv(tmp_path / "k" / "train.csv")
    assert len(train) == 33126 and train["target"].sum() == 584
    assert train["age_approx"].isna().sum() == 68
    assert (tmp_path / "k" / "train.csv").read_text().splitlines()[1] == (
        "ISIC_2637011,IP_7279968,male,45.0,head/neck,unknown,benign,0"
    )
    # the data directory's test CSV is Kaggle's: our test.csv is Kaggle's, byte for byte
    assert (tmp_path / "k" / "test.csv").read_bytes() == real_csv(KAGGLE_TEST)
