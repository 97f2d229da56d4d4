"""Metadata checks: every CSV of the selected splits against its schema and the manifest.

Each CSV must exist, parse, have the documented columns (ISIC or Kaggle names for the test
CSV), well-formed unique image names and well-formed values (``IP_`` patient ids, sex, age,
target consistent with benign_malignant and diagnosis; not lesion ids: the official v2 has
``0`` for ISIC_3746471) and the manifest's row count. Across files: v1 and v2 ground truth hold
the same rows in the same order, and every duplicates name is in the ground truth.

A CSV with problems still returns its frame: the image checks are worth doing against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from isic2020.catalog.manifest import FileEntry, Manifest
from isic2020.catalog.metadata import (
    GROUND_TRUTH_COLUMNS,
    bad_image_names,
    read_metadata_csv,
    value_problems,
)
from isic2020.checks.findings import Check
from isic2020.errors import VerificationError
from isic2020.store.layout import Layout

if TYPE_CHECKING:
    import pandas as pd



def check_csv(layout: Layout, entry: FileEntry) -> tuple[Check, pd.DataFrame | None]:
    """One CSV's check, and its frame when it parsed (even with problems)."""
    import pandas as pd

    path = layout.final_path(entry)
    name = f"metadata/{entry.name}"
    if not path.exists():  # the fetch of this split's CSVs only, never the whole dataset
        return Check(name, "failed", f"{path} is missing; `isic2020 fetch --split {entry.split} "
                     "--format none` downloads the metadata of that split"), None
    try:
        df = read_metadata_csv(path, entry.role or "")
    except VerificationError as exc:
        return Check(name, "failed", exc.one_line()), None
    problems: list[str] = []
    cols = list(df.columns)
    names = df[cols[0]]
    if entry.role == "duplicates":
        names = pd.concat([df["image_name_1"], df["image_name_2"]], ignore_index=True)
    bad = bad_image_names(names)
    problems += [f"malformed image name {n!r}" for n in bad[:50]]
    dup = names[names.duplicated()].dropna().unique().tolist()
    if entry.role != "duplicates":
        problems += [f"image name {n} appears more than once" for n in dup[:50]]
    else:
        df = df.assign(image_name=df["image_name_1"])
    problems += value_problems(df)
    figures: dict[str, Any] = {"rows": len(df), "expected_rows": entry.rows}
    if entry.role != "duplicates":
        figures["duplicated_names"] = len(dup)
    figures["malformed_names"] = len(bad)
    if entry.rows is not None and len(df) != entry.rows:
        problems.insert(0, f"{len(df)} rows, the manifest expects {entry.rows}")
    if "patient_id" in df:
        figures["patients"] = int(df["patient_id"].nunique())
    if "target" in df:
        figures["malignant"] = int((df["target"] == "1").sum())
    if problems:
        # The frame is still returned: the image checks are worth doing against it.
        return Check(name, "failed", f"{len(problems)} problem(s)", figures, problems), df
    return Check(name, "ok", f"{len(df):,} rows", figures), df


def _same_ground_truth(v1: pd.DataFrame, v2: pd.DataFrame) -> Check:
    """v1 and v2 of the ground truth hold the same rows in the same order (v2's shared columns)."""
    shared = v2[GROUND_TRUTH_COLUMNS].reset_index(drop=True)
    a = v1.reset_index(drop=True)
    if len(a) != len(shared):
        return Check("metadata/v1 = v2", "failed", f"v1 has {len(a)} rows, v2 {len(shared)}")
    diff = (a.fillna("\x00") != shared.fillna("\x00")).any(axis=1)
    rows = [
        f"row {i + 2}: v1 {','.join(a.iloc[i].fillna(''))} / "
        f"v2 {','.join(shared.iloc[i].fillna(''))}"
        for i in diff[diff].index[:50]
    ]
    return Check(
        "metadata/v1 = v2",
        "failed" if rows else "ok",
        f"{int(diff.sum())} row(s) differ" if rows else "same rows in the same order",
        {"differing_rows": int(diff.sum())},
        rows,
    )


def _duplicates_known(dups: pd.DataFrame, gt: pd.DataFrame) -> Check:
    """Every name of the duplicates CSV is in the ground truth."""
    import pandas as pd

    known = set(gt["image_name"])
    names = pd.concat([dups["image_name_1"], dups["image_name_2"]]).dropna().unique()
    missing = [n for n in names if n not in known]
    return Check(
        "metadata/duplicates in ground truth",
        "failed" if missing else "ok",
        f"{len(missing)} name(s) not in the ground truth"
        if missing
        else f"all {len(names)} names are in the ground truth",
        {"names": len(names), "not_in_ground_truth": len(missing)},
        [f"{n} is not in the ground truth" for n in missing],
    )


def metadata_checks(
    layout: Layout, manifest: Manifest, splits: Sequence[str]
) -> tuple[list[Check], dict[str, pd.DataFrame]]:
    """The checks of every CSV of ``splits``, then across them; and the frames by role (what
    the image checks compare against)."""
    checks: list[Check] = []
    frames: dict[str, pd.DataFrame] = {}
    for s in splits:
        for entry in manifest.metadata(s):
            c, df = check_csv(layout, entry)
            checks.append(c)
            if df is not None and entry.role:
                frames[entry.role] = df
    v1, v2 = frames.get("ground_truth"), frames.get("ground_truth_v2")
    if v1 is not None and v2 is not None:
        checks.append(_same_ground_truth(v1, v2))
    dups = frames.get("duplicates")
    gt = v1 if v1 is not None else v2
    if dups is not None and gt is not None:
        checks.append(_duplicates_known(dups, gt))
    return checks, frames
