"""Synthetic metadata rows: invented like the real ones, or sampled from the real CSVs.

Invented rows follow the real files' shape: ``IP_`` patients with several images each, ~2 %
malignant, blanks where the real files have them, ``IL_`` lesions, duplicate pairs within one
patient sharing lesion and labels. CSV bytes are CRLF-separated as the official files are.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]
SITE_WEIGHTS = [51, 25, 15, 6, 1, 0.4]
BENIGN_DIAGNOSES = [
    "unknown",
    "nevus",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
]
BENIGN_WEIGHTS = [27124, 5193, 135, 44, 37, 7]
CRLF = "\r\n"


@dataclass
class Row:
    image_name: str
    patient_id: str
    lesion_id: str
    sex: str
    age_approx: str
    site: str
    diagnosis: str
    benign_malignant: str
    target: str


def unique_ids(rng: random.Random, prefix: str, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        v = f"{prefix}{rng.randrange(10**7):07d}"
        if v not in taken:
            taken.add(v)
            out.append(v)
    return out


def invent_rows(
    rng: random.Random, n: int, taken: set[str], *, test: bool, force_blanks: bool
) -> list[Row]:
    names = unique_ids(rng, "ISIC_", n, taken)
    rows: list[Row] = []
    patients: list[tuple[str, str, str]] = []
    i = 0
    while i < n:
        # Real patients have 1 to ~100 images, 16 on average; small sets keep groups small.
        k = min(n - i, rng.randint(1, max(2, min(16, n // 3 or 1))))
        pid = unique_ids(rng, "IP_", 1, taken)[0]
        sex = "" if rng.random() < 0.01 else rng.choice(["male", "female"])
        age = "" if rng.random() < 0.01 else str(5 * rng.randint(4, 17))
        patients.append((pid, sex, age))
        for _ in range(k):
            site = "" if rng.random() < 0.02 else rng.choices(SITES, SITE_WEIGHTS)[0]
            malignant = (not test) and rng.random() < 0.02
            diag = "melanoma" if malignant else rng.choices(BENIGN_DIAGNOSES, BENIGN_WEIGHTS)[0]
            rows.append(
                Row(
                    names[i],
                    pid,
                    unique_ids(rng, "IL_", 1, taken)[0],
                    sex,
                    age,
                    site,
                    diag,
                    "malignant" if malignant else "benign",
                    "1" if malignant else "0",
                )
            )
            i += 1
    if force_blanks and n >= 8:
        # Small sets would usually have no blanks at all; the real files do, so force some.
        last = rows[-1].patient_id
        for r in rows:
            if r.patient_id == last:
                r.sex = ""
                r.age_approx = ""
        rows[1].site = ""  # (re-applied after duplicates, which copy sites)
    if not test and n >= 4 and not any(r.target == "1" for r in rows):
        r = rows[rng.randrange(n)]
        r.diagnosis, r.benign_malignant, r.target = "melanoma", "malignant", "1"
    return rows


def make_duplicates(rng: random.Random, rows: list[Row], count: int) -> list[tuple[str, str]]:
    """Pairs within one patient; the second image takes the first's lesion and labels."""
    by_patient: dict[str, list[Row]] = {}
    for r in rows:
        by_patient.setdefault(r.patient_id, []).append(r)
    candidates = [g for g in by_patient.values() if len(g) >= 2]
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()
    rng.shuffle(candidates)
    for group in candidates:
        if len(pairs) >= count:
            break
        free = [r for r in group if r.image_name not in used]
        if len(free) < 2:
            continue
        a, b = free[0], free[1]
        used.update((a.image_name, b.image_name))
        b.lesion_id, b.site = a.lesion_id, a.site
        b.diagnosis, b.benign_malignant, b.target = a.diagnosis, a.benign_malignant, a.target
        pairs.append((a.image_name, b.image_name))
    return pairs


def sample_real_rows(
    rng: random.Random, metadata_dir: Path, n_train: int, n_test: int, n_dups: int
) -> tuple[list[Row], list[Row], list[tuple[str, str]]]:
    """Rows sampled from the real CSVs (file order kept; duplicate pairs kept whole)."""
    import pandas as pd

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(metadata_dir / name, dtype=str, keep_default_na=False)

    v2 = read("ISIC_2020_Training_GroundTruth_v2.csv")
    dups = read("ISIC_2020_Training_Duplicates.csv")
    test_name = next(
        (n for n in ("ISIC_2020_Test_Metadata.csv", "kaggle_test.csv", "test.csv")
         if (metadata_dir / n).is_file()),
        None,
    )
    if test_name is None:
        raise FileNotFoundError(f"no test metadata CSV in {metadata_dir}")
    test = read(test_name)
    test = test.rename(
        columns={
            "image": "image_name",
            "patient": "patient_id",
            "anatom_site_general": "anatom_site_general_challenge",
        }
    )
    n_train, n_test = min(n_train, len(v2)), min(n_test, len(test))
    pairs: list[tuple[str, str]] = []
    chosen: set[int] = set()
    index = {name: i for i, name in enumerate(v2["image_name"])}
    for a, b in dups.sample(frac=1, random_state=rng.randrange(2**31)).itertuples(index=False):
        if len(pairs) >= n_dups or len(chosen) + 2 > n_train:
            break
        pairs.append((a, b))
        chosen.update((index[a], index[b]))
    rest = [i for i in range(len(v2)) if i not in chosen]
    chosen.update(rng.sample(rest, n_train - len(chosen)))
    if n_train == len(v2):
        pairs = list(dups.itertuples(index=False, name=None))
    keep = set(sorted(chosen))
    train = [
        Row(
            r.image_name, r.patient_id, r.lesion_id, r.sex, r.age_approx,
            r.anatom_site_general_challenge, r.diagnosis, r.benign_malignant, r.target,
        )
        for i, r in enumerate(v2.itertuples(index=False))
        if i in keep
    ]
    test_idx = sorted(rng.sample(range(len(test)), n_test))
    test_rows = [
        Row(r.image_name, r.patient_id, "", r.sex, r.age_approx,
             r.anatom_site_general_challenge, "", "", "")
        for r in test.iloc[test_idx].itertuples(index=False)
    ]
    for r in test_rows:  # normalise to integers; the writer re-adds ".0" for Kaggle columns
        if r.age_approx:
            r.age_approx = str(int(float(r.age_approx)))
    return train, test_rows, [(str(a), str(b)) for a, b in pairs]


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]], final_newline: bool) -> bytes:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    text = CRLF.join(lines) + (CRLF if final_newline else "")
    return text.encode("utf-8")

