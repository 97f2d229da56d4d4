"""What has been fetched into a data directory: what a plain ``verify`` checks.

Why: ``verify`` without ``--split``/``--format`` must check what the user fetched, not the whole
dataset (a ``fetch --split train`` followed by ``verify`` would fail on the test CSV the user
never asked for, and its advice would download it). What was fetched is the union of what the
records say (files verified, archives unpacked, selections that passed a fetch's closing
verify) and what is on disk (CSVs, archives, image folders, recorded subsets): the records keep
a deleted file expected, so ``verify`` reports it missing instead of forgetting it, and the
disk covers a data directory copied or unpacked without our records. Explicit options win.

The advice of a failed verify is one command that fetches exactly what was checked
(:func:`fix_command`, the report's ``repair``): the same split and format, the subset's options,
the data directory; never a split or format that was not asked for.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable

from isic2020.catalog.manifest import FORMATS, SPLITS, Manifest
from isic2020.catalog.selection import load_selection, selection_path
from isic2020.checks.resized import is_resized_format
from isic2020.store.layout import Layout
from isic2020.store.records import Records

__all__ = ["fetched_pairs", "fix_command", "group_pairs"]


def _has_entries(folder: os.PathLike[str] | str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError:
        return False


def fetched_pairs(layout: Layout, manifest: Manifest) -> list[tuple[str, str]]:
    """``(split, format)`` of everything fetched, ``format`` ``none`` for a split of which only
    the CSVs are here; sorted, one pair per split and image format."""
    records = Records(layout.records_path)
    seen: set[tuple[str, str]] = set()
    for key in records.verified:  # "train:jpeg", "all:none": selections a fetch verified
        split, _, fmt = key.partition(":")
        if split in (*SPLITS, "all") and fmt in (*FORMATS, "none"):
            seen.update((s, fmt) for s in (SPLITS if split == "all" else (split,)))
    recorded = set(records.files) | set(records.extracted)
    for e in manifest.files:
        fmt = e.format if e.is_archive else "none"
        if e.name in recorded or layout.final_path(e).exists():
            seen.add((e.split, fmt))
    for split in SPLITS:
        for fmt in FORMATS:
            if _has_entries(layout.images_dir(fmt, split)) or selection_path(
                layout.state_dir, split, fmt
            ).exists():
                seen.add((split, fmt))
    # A split with images needs no separate "none" pass: its CSVs are checked with them.
    with_images = {s for s, f in seen if f != "none"}
    return sorted(p for p in seen if p[1] != "none" or p[0] not in with_images)


def group_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(split, format)`` runs of ``verify_data``: the splits of one format together
    (``all`` when both), in the order of the formats."""
    by_fmt: dict[str, set[str]] = {}
    for split, fmt in pairs:
        by_fmt.setdefault(fmt, set()).add(split)
    out = []
    order = (*FORMATS, "none")
    for fmt in sorted(by_fmt, key=lambda f: (order.index(f) if f in order else len(order), f)):
        splits = by_fmt[fmt]
        out.append(("all" if splits >= set(SPLITS) else splits.pop(), fmt))
    return out


def fix_command(layout: Layout, runs: Iterable[tuple[str, str]]) -> str | None:
    """The fetch that puts back what ``runs`` checked, as one shell line (``&&`` between the
    runs), or None for a resized folder (``resize`` makes those; its check names the command).
    A subset's fetch repeats its options, so it never fetches the whole split."""
    commands = []
    for split, fmt in runs:
        if is_resized_format(fmt):
            return None
        argv = ["isic2020", "fetch", "--split", split, "--format", fmt]
        sel = None
        if fmt != "none" and split != "all":
            sel = load_selection(selection_path(layout.state_dir, split, fmt))
        if sel is not None:
            if sel.where:
                argv += ["--where", sel.where]
            if sel.images_file:
                argv += ["--images", sel.images_file]
            if sel.sample is not None:
                argv += ["--sample", str(sel.sample), "--seed", str(sel.seed)]
        commands.append(shlex.join([*argv, "--data-dir", str(layout.root)]))
    return " && ".join(commands) or None
