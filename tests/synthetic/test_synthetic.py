"""The synthetic builder makes files like the real ones (checked with the real readers)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from PIL import Image
from support.metadata import GT2, unpack_real_metadata

from isic2020.catalog.manifest import load_manifest
from isic2020.catalog.metadata import (
    GROUND_TRUTH_COLUMNS,
    GROUND_TRUTH_V2_COLUMNS,
    TEST_COLUMNS_ISIC,
    TEST_COLUMNS_KAGGLE,
)
from isic2020.catalog.tables import read_metadata_frame
from isic2020.synthetic import build_dataset, official_manifest
from isic2020.transfer.digests import file_digests


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(
        tmp_path_factory.mktemp("mirror"), formats=("jpeg", "dicom", "dicom-original")
    )


def test_manifest_describes_exactly_the_files(ds) -> None:
    man = load_manifest(ds.manifest_path)
    official = official_manifest()
    assert {f.name for f in man.files} == {f.name for f in official.files}
    for f in man.files:
        p = ds.root / f.name
        assert p.stat().st_size == f.size
        assert file_digests(p)["sha256"] == f.sha256
        assert f.hosts == official.by_name(f.name).hosts
    assert man.archive("train", "jpeg").images == len(ds.train_names) == 24
    assert man.archive("test", "dicom").images == len(ds.test_names) == 12
    assert man.role("ground_truth").rows == 24
    assert man.role("test_metadata").rows == 12


def test_csvs_like_the_real_ones(ds) -> None:
    man = ds.manifest
    for f in man.files:
        if f.kind != "metadata":
            continue
        raw = (ds.root / f.name).read_bytes()
        assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
        df = read_metadata_frame(ds.root / f.name, f.role)
        assert len(df) == f.rows
    header = (ds.root / "ISIC_2020_Training_GroundTruth.csv").read_bytes().split(b"\r\n")[0]
    assert header.decode().split(",") == GROUND_TRUTH_COLUMNS
    header = (ds.root / "ISIC_2020_Training_GroundTruth_v2.csv").read_bytes().split(b"\r\n")[0]
    assert header.decode().split(",") == GROUND_TRUTH_V2_COLUMNS
    header = (ds.root / "ISIC_2020_Test_Metadata.csv").read_bytes().split(b"\r\n")[0]
    assert header.decode().split(",") == TEST_COLUMNS_ISIC
    gt = read_metadata_frame(ds.root / "ISIC_2020_Training_GroundTruth_v2.csv", "ground_truth_v2")
    assert list(gt["image_name"]) == ds.train_names
    assert gt["patient_id"].str.fullmatch(r"IP_\d{7}").all()
    assert gt["lesion_id"].str.fullmatch(r"IL_\d{7}").all()
    assert gt["patient_id"].nunique() < len(gt)  # several images per patient
    assert gt["sex"].isna().any() and gt["age_approx"].isna().any()
    assert gt["anatom_site_general_challenge"].isna().any()
    assert (gt["age_approx"].dropna().astype(int) % 5 == 0).all()
    assert ((gt["target"] == "1") == (gt["benign_malignant"] == "malignant")).all()
    assert ((gt["target"] == "1") == (gt["diagnosis"] == "melanoma")).all()
    dups = read_metadata_frame(ds.root / "ISIC_2020_Training_Duplicates.csv", "duplicates")
    assert len(dups) >= 1
    assert set(dups["image_name_1"]) | set(dups["image_name_2"]) <= set(gt["image_name"])


def test_zip_layout_and_images(ds) -> None:
    with zipfile.ZipFile(ds.archive("train", "jpeg")) as zf:
        names = zf.namelist()
        assert f"train/{ds.train_names[0]}.jpg" in names
        im = Image.open(io.BytesIO(zf.read(f"train/{ds.train_names[0]}.jpg")))
        im.load()
        assert im.size == (16, 16)
        blobs = {zf.read(f"train/{n}.jpg") for n in ds.train_names}
        assert len(blobs) == len(ds.train_names)  # every file distinct
    with zipfile.ZipFile(ds.archive("test", "jpeg")) as zf:
        names = zf.namelist()
        assert f"ISIC_2020_Test_Input/{ds.test_names[0]}.jpg" in names
        assert "ISIC_2020_Test_Input/readme.txt" in names
    for fmt in ("dicom", "dicom-original"):
        with zipfile.ZipFile(ds.archive("test", fmt)) as zf:
            raw = zf.read(f"test/{ds.test_names[0]}.dcm")
    assert raw[128:132] == b"DICM"
    d = pydicom.dcmread(io.BytesIO(raw))
    row = read_metadata_frame(ds.root / "ISIC_2020_Test_Metadata.csv", "test_metadata").iloc[0]
    assert d.PatientID == row["patient_id"]
    assert d.pixel_array.shape == (16, 16, 3)
    if not pd.isna(row["age_approx"]):
        assert d.PatientAge == f"{int(row['age_approx']):03d}Y"


def test_kaggle_columns_zip64_and_determinism(tmp_path: Path) -> None:
    a = build_dataset(tmp_path / "a", n_train=10, n_test=5, test_columns="kaggle",
                      force_zip64=True, compression="stored", seed=3)
    b = build_dataset(tmp_path / "b", n_train=10, n_test=5, test_columns="kaggle",
                      force_zip64=True, compression="stored", seed=3)
    assert a.manifest_path.read_text().split("\n", 2)[2] != ""
    assert [f.sha256 for f in a.manifest.files] == [f.sha256 for f in b.manifest.files]
    head = (a.root / "ISIC_2020_Test_Metadata.csv").read_text().splitlines()
    assert head[0].split(",") == TEST_COLUMNS_KAGGLE
    assert any(line.split(",")[3].endswith(".0") for line in head[1:])
    raw = a.archive("train", "jpeg").read_bytes()
    # ZIP64 local headers: sizes 0xFFFFFFFF, the real ones in a ZIP64 extra field (id 1)
    assert raw[:4] == b"PK\x03\x04" and raw[18:26] == b"\xff" * 8
    name_len = int.from_bytes(raw[26:28], "little")
    assert raw[30 + name_len : 32 + name_len] == b"\x01\x00"
    with zipfile.ZipFile(a.archive("train", "jpeg")) as zf:
        assert zf.testzip() is None
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_sampled_from_real_metadata(tmp_path: Path) -> None:
    real_dir = unpack_real_metadata(tmp_path / "real")
    ds = build_dataset(tmp_path / "mirror", n_train=40, n_test=10, metadata_dir=real_dir)
    real = pd.read_csv(real_dir / GT2, dtype=str,
                       keep_default_na=False).set_index("image_name")
    gt = read_metadata_frame(ds.root / "ISIC_2020_Training_GroundTruth_v2.csv", "ground_truth_v2")
    assert len(gt) == 40
    for r in gt.fillna("").itertuples(index=False):
        assert real.loc[r.image_name, "patient_id"] == r.patient_id
        assert real.loc[r.image_name, "lesion_id"] == r.lesion_id
    dups = read_metadata_frame(ds.root / "ISIC_2020_Training_Duplicates.csv", "duplicates")
    assert len(dups) >= 1
    assert set(dups["image_name_1"]) | set(dups["image_name_2"]) <= set(gt["image_name"])
