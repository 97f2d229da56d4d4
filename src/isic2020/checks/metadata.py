"""Metadata checks: every CSV of the selected splits against its schema and the manifest.

Each CSV must exist, parse, have the documented columns (ISIC or Kaggle names for the test
CSV), well-formed unique image names and well-formed values (``IP_`` patient ids, sex, age,
target consistent with benign_malignant and diagnosis; not lesion ids: the official v2 has
``0`` for ISIC_3746471) and the manifest's row count. Across files: v1 and v2 ground truth hold
the same rows in the same order, and every duplicates name is in the ground truth.

A CSV with problems still returns its table: the image checks are worth doing against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from isic2020.catalog.manifest import FileEntry, Manifest
from isic2020.catalog.metadata import (
    GROUND_TRUTH_COLUMNS,
    bad_image_names,
    read_metadata_table,
    value_problems,
)
from isic2020.catalog.table import Table
from isic2020.checks.findings import Check
from isic2020.errors import VerificationError
from isic2020.store.layout import Layout


def _repeated(names: Sequence[str | None]) -> list[str]:
    """The names seen more than once (blanks aside), in the order of their second sighting."""
    seen: set[str | None] = set()
    dup: dict[str, None] = {}
    for n in names:
        if n in seen:
            if n is not None:
                dup[n] = None
        else:
            seen.add(n)
    return list(dup)


def check_csv(layout: Layout, entry: FileEntry) -> tuple[Check, Table | None]:
    """One CSV's check, and its table when it parsed (even with problems)."""
    path = layout.final_path(entry)
    name = f"metadata/{entry.name}"
    if not path.exists():  # the fetch of this split's CSVs only, never the whole dataset
        return Check(name, "failed", f"{path} is missing; `isic2020 fetch --split {entry.split} "
                     "--format none` downloads the metadata of that split"), None
    try:
        table = read_metadata_table(path, entry.role or "")
    except VerificationError as exc:
        return Check(name, "failed", exc.one_line()), None
    problems: list[str] = []
    names = table[table.columns[0]]
    if entry.role == "duplicates":
        names = table["image_name_1"] + table["image_name_2"]
    bad = bad_image_names(names)
    problems += [f"malformed image name {n!r}" for n in bad[:50]]
    dup = _repeated(names)
    if entry.role != "duplicates":
        problems += [f"image name {n} appears more than once" for n in dup[:50]]
    else:
        table = table.with_column("image_name", table["image_name_1"])
    problems += value_problems(table)
    rows = len(table)
    figures: dict[str, Any] = {"rows": rows, "expected_rows": entry.rows}
    if entry.role != "duplicates":
        figures["duplicated_names"] = len(dup)
    figures["malformed_names"] = len(bad)
    if entry.rows is not None and rows != entry.rows:
        problems.insert(0, f"{rows} rows, the manifest expects {entry.rows}")
    if "patient_id" in table:
        figures["patients"] = len(set(table["patient_id"]) - {None})
    if "target" in table:
        figures["malignant"] = table["target"].count("1")
    if problems:
        # The table is still returned: the image checks are worth doing against it.
        return Check(name, "failed", f"{len(problems)} problem(s)", figures, problems), table
    return Check(name, "ok", f"{rows:,} rows", figures), table


def _same_ground_truth(v1: Table, v2: Table) -> Check:
    """v1 and v2 of the ground truth hold the same rows in the same order (v2's shared columns)."""
    shared = v2.select(GROUND_TRUTH_COLUMNS)
    if len(v1) != len(shared):
        return Check("metadata/v1 = v2", "failed", f"v1 has {len(v1)} rows, v2 {len(shared)}")
    differ = [i for i, (a, b) in enumerate(zip(zip(*v1.cells), zip(*shared.cells))) if a != b]

    def line(t: Table, i: int) -> str:
        return ",".join(v or "" for v in t.row(i))

    rows = [f"row {i + 2}: v1 {line(v1, i)} / v2 {line(shared, i)}" for i in differ[:50]]
    return Check(
        "metadata/v1 = v2",
        "failed" if rows else "ok",
        f"{len(differ)} row(s) differ" if rows else "same rows in the same order",
        {"differing_rows": len(differ)},
        rows,
    )


def _duplicates_known(dups: Table, gt: Table) -> Check:
    """Every name of the duplicates CSV is in the ground truth."""
    known = set(gt["image_name"])
    names = [n for n in dict.fromkeys(dups["image_name_1"] + dups["image_name_2"])
             if n is not None]
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
) -> tuple[list[Check], dict[str, Table]]:
    """The checks of every CSV of ``splits``, then across them; and the tables by role (what
    the image checks compare against)."""
    checks: list[Check] = []
    frames: dict[str, Table] = {}
    for s in splits:
        for entry in manifest.metadata(s):
            c, table = check_csv(layout, entry)
            checks.append(c)
            if table is not None and entry.role:
                frames[entry.role] = table
    v1, v2 = frames.get("ground_truth"), frames.get("ground_truth_v2")
    if v1 is not None and v2 is not None:
        checks.append(_same_ground_truth(v1, v2))
    dups = frames.get("duplicates")
    gt = v1 if v1 is not None else v2
    if dups is not None and gt is not None:
        checks.append(_duplicates_known(dups, gt))
    return checks, frames
