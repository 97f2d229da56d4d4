"""Metadata for the tests: the real CSVs (shipped in the repository) and small synthetic ones.

The real CSVs are shipped gzip-compressed in ``tests/data/isic2020-metadata/`` (CC BY-NC 4.0,
attribution in the README beside them), so every test runs from a fresh clone: nothing outside
the repository is read and no test skips for want of them. They are unpacked into each test's
own temporary folder; the sha256 of every unpacked file is checked, so a damaged fixture fails
loudly instead of making the figures drift.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
GT = "ISIC_2020_Training_GroundTruth.csv"
GT2 = "ISIC_2020_Training_GroundTruth_v2.csv"
DUPS = "ISIC_2020_Training_Duplicates.csv"
TEST = "ISIC_2020_Test_Metadata.csv"
KAGGLE_TEST = "kaggle_test.csv"
SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", ""]

#: Where the real CSVs are shipped (``<name>.gz``), inside the repository.
SHIPPED = REPO / "tests" / "data" / "isic2020-metadata"
#: sha256 of each uncompressed CSV (also in the README beside them).
REAL_SHA256 = {
    GT: "bcc33f3fe8903d4c28862fe74de95d28020c866cbea3d14467f3defc35ca159a",
    GT2: "a8912ebda1633a18b37df601175af84fd863a77434b28b9bac25dd7880a2e075",
    DUPS: "ddfd6c2d42430bd3581f3b2116bdb1433462a7109c715a02bf7f51115fcfabce",
    KAGGLE_TEST: "af1c3c56b470e31f0e798ffec5f92ebb12a025dc405022b7f7ef858d278f5697",
}


def real_csv(name: str) -> bytes:
    """The bytes of one real CSV (``GT``, ``GT2``, ``DUPS`` or ``KAGGLE_TEST``), checked."""
    data = gzip.decompress((SHIPPED / f"{name}.gz").read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    assert digest == REAL_SHA256[name], f"{SHIPPED / name}.gz is damaged (sha256 {digest})"
    return data


def unpack_real_metadata(dest: Path) -> Path:
    """The four real CSVs under their own names in ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in REAL_SHA256:
        (dest / name).write_bytes(real_csv(name))
    return dest


def make_real_data_dir(root: Path) -> Path:
    """A data directory whose metadata/ holds the real CSVs (Kaggle's test.csv as test CSV)."""
    meta = root / "metadata"
    meta.mkdir(parents=True)
    for name in (GT, GT2, DUPS):
        (meta / name).write_bytes(real_csv(name))
    (meta / TEST).write_bytes(real_csv(KAGGLE_TEST))
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
