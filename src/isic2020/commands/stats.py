"""The counts a user checks first, so a wrong or partial download shows at a glance.

For the official data they read: 33,126 training images of 2,056 patients, 584 malignant,
425 duplicate pairs (32,701 images once they are dropped); 10,982 test images of 690 patients.
Only the metadata CSVs are needed; how many of the images are on disk is counted from one
directory listing per folder (``isic2020 verify`` is the command that proves them intact).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from isic2020.catalog.manifest import FORMATS, SPLITS, load_manifest
from isic2020.catalog.tables import image_paths, load_train_tables, read_test
from isic2020.report import plural, readable_repr
from isic2020.store.layout import Layout

MISSING = "(missing)"


def _counts(values: pd.Series) -> dict[str, int]:
    """Value counts, most frequent first, blanks as ``(missing)``; zero-count categories out."""
    vc = values.astype("object").fillna(MISSING).value_counts(sort=False)
    items = sorted(((str(k), int(v)) for k, v in vc.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return dict(items)


def _missing(df: pd.DataFrame) -> dict[str, int]:
    return {c: int(df[c].isna().sum()) for c in df.columns if c != "path"}


@dataclass
class TrainStats:
    source: str
    images: int
    patients: int
    malignant: int
    benign: int
    lesions: int | None
    images_per_patient: dict[str, float]
    by_diagnosis: dict[str, int]
    by_site: dict[str, int]
    by_sex: dict[str, int]
    missing: dict[str, int]
    duplicate_pairs: int | None
    duplicate_pairs_across_patients: int | None
    images_without_duplicates: int | None
    malignant_without_duplicates: int | None


@dataclass
class TestStats:
    __test__ = False  # not a pytest test class, despite the name

    source: str
    images: int
    patients: int
    by_site: dict[str, int]
    by_sex: dict[str, int]
    missing: dict[str, int]


@readable_repr
@dataclass
class StatsReport:
    """Training (always) and test (when its CSV is present) counts, and images on disk."""

    data_dir: str
    train: TrainStats
    test: TestStats | None
    on_disk: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("exit_code")
        return d

    def summary_lines(self) -> list[str]:
        t = self.train
        ipp = t.images_per_patient
        lines = [
            f"train ({os.path.basename(t.source)}): {plural(t.images, 'image')}, "
            f"{plural(t.patients, 'patient')}, "
            f"{t.malignant:,} malignant ({100 * t.malignant / max(t.images, 1):.2f}%), "
            f"{t.benign:,} benign" + (f", {t.lesions:,} lesions" if t.lesions is not None else ""),
            f"  images per patient: min {ipp['min']:g}, median {ipp['median']:g}, "
            f"max {ipp['max']:g}",
        ]
        if t.duplicate_pairs is None:
            lines.append("  duplicates: the duplicates CSV is not on disk")
        else:
            lines.append(
                f"  duplicates: {plural(t.duplicate_pairs, 'pair')}"
                f" ({t.duplicate_pairs_across_patients} across patients); without them "
                f"{plural(t.images_without_duplicates, 'image')}, "
                f"{t.malignant_without_duplicates:,} "
                "malignant"
            )
        lines.append("  diagnosis: " + _inline(t.by_diagnosis))
        lines.append("  site: " + _inline(t.by_site))
        lines.append("  sex: " + _inline(t.by_sex))
        lines.append("  missing values: " + (_inline(_nonzero(t.missing)) or "none"))
        if self.test is None:
            lines.append("test: the test metadata CSV is not on disk")
        else:
            s = self.test
            lines.append(
                f"test ({os.path.basename(s.source)}): {plural(s.images, 'image')}, "
                f"{plural(s.patients, 'patient')}"
            )
            lines.append("  site: " + _inline(s.by_site))
            lines.append("  missing values: " + (_inline(_nonzero(s.missing)) or "none"))
        disk = [
            f"{fmt} {split} {n:,}/{self._total(split):,}"
            for fmt, per in self.on_disk.items()
            for split, n in per.items()
        ]
        if disk:
            lines.append("images on disk: " + ", ".join(disk))
        lines.extend(self.notes)
        return lines

    def _total(self, split: str) -> int:
        if split == "train":
            return self.train.images
        return self.test.images if self.test else 0


def _inline(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items())


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def _train_stats(train: pd.DataFrame, pairs: pd.DataFrame | None, files: Any) -> TrainStats:
    """The training metadata's counts (lesions only when the v2 ground truth is on disk)."""
    ipp = train.groupby("patient_id", observed=True).size()
    dup_pairs = across = without = mal_without = None
    if pairs is not None:
        pid = train.set_index("image_name")["patient_id"]
        across = int((pairs["image_name_1"].map(pid) != pairs["image_name_2"].map(pid)).sum())
        kept = train[~train["image_name"].isin(set(pairs["image_name_2"]))]
        dup_pairs, without, mal_without = len(pairs), len(kept), int(kept["target"].sum())
    has_lesions = files.ground_truth_v2 is not None
    return TrainStats(
        source=str(files.train),
        images=len(train),
        patients=int(train["patient_id"].nunique()),
        malignant=int(train["target"].sum()),
        benign=int((train["target"] == 0).sum()),
        lesions=int(train["lesion_id"].nunique()) if has_lesions else None,
        images_per_patient={
            "min": float(ipp.min()),
            "median": float(ipp.median()),
            "max": float(ipp.max()),
        },
        by_diagnosis=_counts(train["diagnosis"]),
        by_site=_counts(train["anatom_site_general_challenge"]),
        by_sex=_counts(train["sex"]),
        missing=_missing(train if has_lesions else train.drop(columns="lesion_id")),
        duplicate_pairs=dup_pairs,
        duplicate_pairs_across_patients=across,
        images_without_duplicates=without,
        malignant_without_duplicates=mal_without,
    )


def compute_stats(
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
) -> StatsReport:
    """Count the metadata (training required, test optional) and the images present."""
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    train, pairs, files = load_train_tables(layout, man)
    tstats = _train_stats(train, pairs, files)
    test_stats = None
    test = None
    if files.test_metadata is not None:
        test = read_test(files.test_metadata)
        test_stats = TestStats(
            source=str(files.test_metadata),
            images=len(test),
            patients=int(test["patient_id"].nunique()),
            by_site=_counts(test["anatom_site_general_challenge"]),
            by_sex=_counts(test["sex"]),
            missing=_missing(test),
        )
    on_disk: dict[str, dict[str, int]] = {}
    for fmt in FORMATS:
        for split in SPLITS:
            frame = train if split == "train" else test
            if frame is None or not layout.images_dir(fmt, split).is_dir():
                continue
            _, missing = image_paths(frame["image_name"], layout, fmt, split)
            on_disk.setdefault(fmt, {})[split] = len(frame) - missing
    notes = []
    if files.ground_truth_v2 is None:
        notes.append("note: only the v1 ground truth is on disk (no lesion_id)")
    return StatsReport(
        data_dir=str(layout.root), train=tstats, test=test_stats, on_disk=on_disk, notes=notes
    )
