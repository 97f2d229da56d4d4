"""load_metadata: one typed frame per split, on small synthetic metadata and on the real CSVs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
from support.metadata import (
    GT2,
    make_real_data_dir,
    make_synthetic,
)

from isic2020.catalog.tables import ImagesMissingWarning, load_metadata
from isic2020.errors import NothingThere, UsageError, VerificationError

# ---------------------------------------------------------------- synthetic metadata


def test_train_columns_dtypes_and_missing_paths(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path)
    with pytest.warns(ImagesMissingWarning, match="isic2020 fetch --split train --format jpeg"):
        df = load_metadata("train", data_dir=tmp_path)
    assert list(df.columns) == [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
        "diagnosis",
        "benign_malignant",
        "target",
        "lesion_id",
        "path",
    ]
    assert len(df) == len(syn.train)
    assert str(df["age_approx"].dtype) == "Int64"
    assert df["age_approx"].isna().sum() == (syn.train["age_approx"] == "").sum()
    assert isinstance(df["sex"].dtype, pd.CategoricalDtype)
    assert list(df["sex"].cat.categories) == ["female", "male"]
    assert isinstance(df["anatom_site_general_challenge"].dtype, pd.CategoricalDtype)
    assert (
        df["anatom_site_general_challenge"].isna().sum()
        == (syn.train["anatom_site_general_challenge"] == "").sum()
    )
    assert str(df["target"].dtype) == "int64"
    assert df["target"].sum() == (syn.train["target"] == "1").sum()
    assert df["path"].isna().all()
    assert df["lesion_id"].notna().all()
    # the CSV's row order is kept
    assert list(df["image_name"]) == list(syn.train["image_name"])


def test_test_split_isic_names_are_normalised(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path, test_names="isic")
    df = load_metadata("test", data_dir=tmp_path, image_format=None)
    assert list(df.columns) == [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
    ]
    assert len(df) == len(syn.test)
    assert str(df["age_approx"].dtype) == "Int64"
    # same category order as train: a model's codes mean the same in both
    train = load_metadata("train", data_dir=tmp_path, image_format=None)
    assert list(df["anatom_site_general_challenge"].cat.categories) == list(
        train["anatom_site_general_challenge"].cat.categories
    )


def test_test_split_kaggle_float_ages(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path, test_names="kaggle")
    df = load_metadata("test", data_dir=tmp_path, image_format="none")
    expected = pd.to_numeric(syn.test["age_approx"].replace("", None)).astype("Int64")
    assert df["age_approx"].tolist() == expected.tolist()


def test_paths_present_no_warning(tmp_path: Path) -> None:
    make_synthetic(tmp_path, images=("jpeg", "dicom"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_metadata("train", data_dir=tmp_path)
        dcm = load_metadata("test", data_dir=tmp_path, image_format="dicom")
    assert df["path"].notna().all()
    assert all(Path(p).is_file() and p.endswith(".jpg") for p in df["path"])
    assert all(Path(p).parent == tmp_path.absolute() / "dicom" / "test" for p in dcm["path"])


def test_some_images_missing(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path, images=("jpeg",))
    gone = syn.train["image_name"].iloc[:3]
    for n in gone:
        (tmp_path / "jpeg" / "train" / f"{n}.jpg").unlink()
    with pytest.warns(ImagesMissingWarning, match=f"3 of {len(syn.train)} train images"):
        df = load_metadata("train", data_dir=tmp_path)
    assert set(df.loc[df["path"].isna(), "image_name"]) == set(gone)


def test_drop_duplicates_keeps_image_name_1(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path)
    df = load_metadata("train", data_dir=tmp_path, image_format=None, drop_duplicates=True)
    names = set(df["image_name"])
    assert len(df) == len(syn.train) - len(syn.pairs)
    for a, b in syn.pairs:
        assert a in names and b not in names
    # test split: the duplicates list is about train only
    t = load_metadata("test", data_dir=tmp_path, image_format=None, drop_duplicates=True)
    assert len(t) == len(syn.test)


def test_v1_fallback_without_v2(tmp_path: Path) -> None:
    syn = make_synthetic(tmp_path, v2=False)
    df = load_metadata("train", data_dir=tmp_path, image_format=None)
    assert len(df) == len(syn.train)
    assert df["lesion_id"].isna().all()


def test_missing_metadata_one_clear_error(tmp_path: Path) -> None:
    """Missing metadata is missing input (exit 2, "run fetch first"), not failed verification."""
    with pytest.raises(NothingThere) as ei:
        load_metadata("train", data_dir=tmp_path)
    assert "isic2020 fetch --format none" in ei.value.one_line()
    assert ei.value.exit_code == 2
    with pytest.raises(NothingThere, match="no test metadata"):
        load_metadata("test", data_dir=tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    make_synthetic(tmp_path)
    with pytest.raises(UsageError):
        load_metadata("valid", data_dir=tmp_path)
    with pytest.raises(UsageError):
        load_metadata("train", data_dir=tmp_path, image_format="png")


def test_bad_target_is_rejected(tmp_path: Path) -> None:
    make_synthetic(tmp_path)
    p = tmp_path / "metadata" / GT2
    text = p.read_bytes().replace(b",0\r\n", b",yes\r\n", 1)
    p.write_bytes(text)
    with pytest.raises(VerificationError, match="target must be 0 or 1"):
        load_metadata("train", data_dir=tmp_path, image_format=None)


# ---------------------------------------------------------------- real metadata


def test_real_train_and_test(tmp_path: Path) -> None:
    root = make_real_data_dir(tmp_path)
    with pytest.warns(ImagesMissingWarning):
        df = load_metadata("train", data_dir=root)
    assert len(df) == 33126
    assert df["patient_id"].nunique() == 2056
    assert df["target"].sum() == 584
    assert df["sex"].isna().sum() == 65
    assert df["age_approx"].isna().sum() == 68
    assert df["anatom_site_general_challenge"].isna().sum() == 527
    assert df["lesion_id"].nunique() == 32701
    assert (df["benign_malignant"].eq("malignant") == df["target"].eq(1)).all()
    dd = load_metadata("train", data_dir=root, image_format=None, drop_duplicates=True)
    assert len(dd) == 32701
    test = load_metadata("test", data_dir=root, image_format=None)
    assert len(test) == 10982
    assert test["patient_id"].nunique() == 690
    assert str(test["age_approx"].dtype) == "Int64"


def test_importing_the_package_and_cli_does_not_import_pandas() -> None:
    """Every command pays for what ``import isic2020`` imports: pandas, NumPy, Pillow and
    pydicom (~0.45 s, ~50 MB) are imported only by the functions that use them."""
    import subprocess
    import sys

    code = (
        "import sys, isic2020, isic2020.cli, isic2020.commands.export, isic2020.checks.verify, "
        "isic2020.catalog.tables, isic2020.catalog.metadata, isic2020.archive.local, "
        "isic2020.commands.fetch; "
        "print(sorted(m for m in ('pandas', 'numpy', 'PIL', 'pydicom') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
