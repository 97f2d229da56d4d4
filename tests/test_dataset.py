"""load_metadata: one typed frame per split, on small synthetic metadata and on the real CSVs.

The helpers at the top (synthetic metadata, the real CSVs) are shared by test_folds,
test_stats and test_export, which import them from here.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from isic2020.dataset import ImagesMissingWarning, load_metadata
from isic2020.errors import UsageError, VerificationError

REPO = Path(__file__).resolve().parents[1]
GT = "ISIC_2020_Training_GroundTruth.csv"
GT2 = "ISIC_2020_Training_GroundTruth_v2.csv"
DUPS = "ISIC_2020_Training_Duplicates.csv"
TEST = "ISIC_2020_Test_Metadata.csv"
SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", ""]


def real_metadata_dir() -> Path | None:
    """The real CSV copies: $ISIC2020_SHARED_METADATA, else <repo>/../shared/isic2020-metadata."""
    env = os.environ.get("ISIC2020_SHARED_METADATA")
    p = Path(env) if env else REPO.parent / "shared" / "isic2020-metadata"
    return p if (p / GT2).is_file() or (p / GT).is_file() else None


REAL = real_metadata_dir()
needs_real = pytest.mark.skipif(
    REAL is None,
    reason="real ISIC 2020 metadata copies not found (set ISIC2020_SHARED_METADATA or put them "
    "in ../shared/isic2020-metadata)",
)


def make_real_data_dir(root: Path) -> Path:
    """A data directory whose metadata/ holds the real CSVs (Kaggle's test.csv as test CSV)."""
    assert REAL is not None
    meta = root / "metadata"
    meta.mkdir(parents=True)
    for name in (GT, GT2, DUPS):
        if (REAL / name).is_file():
            shutil.copyfile(REAL / name, meta / name)
    if (REAL / TEST).is_file():
        shutil.copyfile(REAL / TEST, meta / TEST)
    elif (REAL / "kaggle_test.csv").is_file():
        shutil.copyfile(REAL / "kaggle_test.csv", meta / TEST)
    return root


@dataclass
class Synthetic:
    """What a synthetic data directory holds, for the tests to check against."""

    root: Path
    train: pd.DataFrame
    test: pd.DataFrame
    pairs: list[tuple[str, str]] = field(default_factory=list)


def make_synthetic(
    root: Path,
    patients: int = 40,
    seed: int = 0,
    v2: bool = True,
    test_names: str = "isic",
    cross_patient_pair: bool = False,
    images: tuple[str, ...] = (),
) -> Synthetic:
    """Small realistic metadata in DATA/metadata: CRLF, official headers, blanks, int ages.

    ``images`` lists formats (jpeg, dicom, dicom-original) to create tiny fake image files for.
    ``cross_patient_pair`` adds a duplicate pair whose two images belong to different patients
    (never seen in the real data, but the folds must still keep it together).
    """
    rnd = random.Random(seed)
    used: set[int] = set()

    def name() -> str:
        while True:
            n = rnd.randrange(10**7)
            if n not in used:
                used.add(n)
                return f"ISIC_{n:07d}"

    rows = []
    for p in range(patients):
        pid = f"IP_{1000000 + p * 7919 % 9000000:07d}"
        sex = rnd.choice(["male", "female", "female", "male", ""])
        age = rnd.choice(["", "25", "45", "60", "70", "0"])
        n_img = rnd.choice([2, 3, 4, 5, 8, 12, 20, 30])
        n_mal = rnd.choice([0] * 8 + [1, 1, 2, 3]) if n_img > 3 else 0
        for i in range(n_img):
            mal = i < n_mal
            rows.append(
                {
                    "image_name": name(),
                    "patient_id": pid,
                    "lesion_id": f"IL_{rnd.randrange(10**7):07d}",
                    "sex": sex,
                    "age_approx": age,
                    "anatom_site_general_challenge": rnd.choice(SITES),
                    "diagnosis": "melanoma" if mal else rnd.choice(["unknown", "nevus"]),
                    "benign_malignant": "malignant" if mal else "benign",
                    "target": "1" if mal else "0",
                }
            )
    rnd.shuffle(rows)
    train = pd.DataFrame(rows)
    pairs = []
    for _pid, g in train.groupby("patient_id"):
        if len(g) >= 4 and len(pairs) < 12:
            pairs.append((g["image_name"].iloc[0], g["image_name"].iloc[1]))
    if cross_patient_pair:
        a = train[train["patient_id"] == train["patient_id"].iloc[0]]["image_name"].iloc[-1]
        b = train[train["patient_id"] != train["patient_id"].iloc[0]]["image_name"].iloc[-1]
        pairs.append((a, b))
    test_rows = []
    for p in range(max(3, patients // 4)):
        pid = f"IP_{9000000 + p:07d}"
        for _ in range(rnd.choice([2, 3, 6])):
            test_rows.append(
                {
                    "image_name": name(),
                    "patient_id": pid,
                    "sex": rnd.choice(["male", "female"]),
                    "age_approx": rnd.choice(["30", "55", ""]),
                    "anatom_site_general_challenge": rnd.choice(SITES),
                }
            )
    test = pd.DataFrame(test_rows)

    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    v1_cols = [c for c in train.columns if c != "lesion_id"]
    _write_crlf(meta / GT, v1_cols, train[v1_cols].values.tolist())
    if v2:
        _write_crlf(meta / GT2, list(train.columns), train.values.tolist())
    _write_crlf(meta / DUPS, ["image_name_1", "image_name_2"], [list(p) for p in pairs])
    if test_names == "isic":
        header = ["image", "patient", "sex", "age_approx", "anatom_site_general"]
        _write_crlf(meta / TEST, header, test.values.tolist())
    else:
        kt = test.copy()
        kt["age_approx"] = kt["age_approx"].map(lambda a: f"{float(a)}" if a else "")
        _write_crlf(meta / TEST, list(test.columns), kt.values.tolist(), final_newline=False)
    for fmt in images:
        suffix = ".jpg" if fmt == "jpeg" else ".dcm"
        for split, frame in (("train", train), ("test", test)):
            d = root / fmt / split
            d.mkdir(parents=True, exist_ok=True)
            for n in frame["image_name"]:
                (d / f"{n}{suffix}").write_bytes(f"{fmt}:{n}".encode())
    return Synthetic(root=root, train=train, test=test, pairs=pairs)


def _write_crlf(path: Path, header: list[str], rows: list[list[str]], final_newline=True) -> None:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_bytes(("\r\n".join(lines) + ("\r\n" if final_newline else "")).encode())


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ISIC2020_DATA_DIR", None)
    full_env.pop("ISIC2020_MANIFEST", None)
    return subprocess.run(
        [sys.executable, "-m", "isic2020", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


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
    with pytest.raises(VerificationError) as ei:
        load_metadata("train", data_dir=tmp_path)
    assert "isic2020 fetch --format none" in ei.value.one_line()
    with pytest.raises(VerificationError, match="no test metadata"):
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


@needs_real
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
