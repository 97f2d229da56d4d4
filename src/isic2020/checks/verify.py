"""Prove that what is on disk is the complete, intact ISIC 2020 dataset (``isic2020 verify``).

The entry: it gathers, in report order, the metadata checks (``checks.metadata``), the files
against their records (``checks.files``) and the images against the metadata
(``checks.images``) into one :class:`~isic2020.checks.findings.VerifyReport`. Findings never
raise; only "nothing of the selection is on disk at all" does. A subset fetch
(``--images/--sample/--where``) is checked against its recorded selection, not the whole CSV.
Without ``--split``/``--format`` it checks what was fetched (``checks.fetched``): each split
with its formats, one report; a failed report names the fetch that puts it right (``repair``).

``verify`` takes the data directory's lock shared, so a concurrent fetch cannot change files in
the middle of a check while other readers still can. ``MetadataPrecheck`` lets a fetch run the
metadata part while its archives download; its result is used only while the CSVs are
unchanged.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from isic2020.catalog.manifest import (
    FORMAT_CHOICES,
    Manifest,
    expand_split,
    load_manifest,
)
from isic2020.catalog.table import Table
from isic2020.checks.fetched import fetched_pairs, fix_command, group_pairs
from isic2020.checks.files import check_recorded
from isic2020.checks.findings import Check, VerifyReport
from isic2020.checks.images import image_checks
from isic2020.checks.metadata import metadata_checks
from isic2020.checks.resized import check_resized, is_resized_format
from isic2020.errors import NothingThere, UsageError
from isic2020.store.forking import ForkFailed, call_in_fork
from isic2020.store.layout import Layout
from isic2020.store.libc import malloc_trim
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records

__all__ = ["Check", "MetadataPrecheck", "VerifyReport", "release_free_memory", "verify",
           "verify_data"]


def release_free_memory() -> None:
    """Hand the heap that earlier work freed (a download's buffers, an extraction's central
    directory) back to the system before the tables and the image lists take theirs: glibc
    keeps freed memory in its arenas, which a ``fetch`` would otherwise carry into this last
    step, whose own peak (the tables, every image name) then adds to it."""
    malloc_trim()


def _anything_on_disk(layout: Layout, manifest: Manifest, splits: Iterable[str], fmt: str) -> bool:
    for s in splits:
        for e in manifest.metadata(s):
            if layout.final_path(e).exists():
                return True
        if fmt != "none":
            a = manifest.archive(s, fmt)
            if a is not None and layout.final_path(a).exists():
                return True
            d = layout.images_dir(fmt, s)
            if d.is_dir() and any(True for _ in os.scandir(d)):
                return True
    return False


def _apply_selection(
    layout: Layout, fmt: str, split: str, expected: Table | None, report: VerifyReport
) -> Table | None:
    """A subset fetch (``--images/--sample/--where``) is checked against its recorded
    selection, not the whole CSV, and the report says so."""
    from isic2020.catalog.selection import load_selection, selection_path

    sel = load_selection(selection_path(layout.state_dir, split, fmt))
    if sel is None or expected is None:
        return expected
    chosen = set(sel.names)
    unknown = sorted(chosen - set(expected["image_name"]))
    report.checks.append(
        Check(
            f"images/{fmt}/{split}/selection",
            "failed" if unknown else "ok",
            f"a subset of {len(chosen):,} of {len(expected):,} images ({sel.describe()}); "
            "images are checked against it",
            {"selected": len(chosen), "in_metadata": len(expected)},
            [f"{n}: selected but not in the metadata" for n in unknown],
        )
    )
    return expected.filter(lambda r: r["image_name"] in chosen)


def _checks_and_names(
    layout: Layout, manifest: Manifest, splits: Sequence[str]
) -> tuple[list[Check], dict[str, Table]]:
    """The metadata checks, and of the tables only the names of the expected images: that is
    all the fast verify needs, and the full tables (tens of MB for the training CSVs) would sit
    in memory for the whole download."""
    checks, frames = metadata_checks(layout, manifest, splits)
    names = {
        role: table.select(["image_name"])
        for role, table in frames.items()
        if role in ("ground_truth", "ground_truth_v2", "test_metadata")
    }
    return checks, names


class MetadataPrecheck:
    """The metadata checks of a fetch's closing verify, run while its archives download.

    Why: reading and checking the training CSVs takes time the machine otherwise
    spends waiting for the network; at the end of the fetch it would add to its time. The
    result is used only if every CSV still has the size and mtime it had when the checks read
    it (else the verify does them again); any error here just means the same.
    """

    def __init__(self, layout: Layout, manifest: Manifest, split: str) -> None:
        self.layout = layout
        self.manifest = manifest
        self.splits = expand_split(split)
        self._thread: threading.Thread | None = None
        self._result: tuple[list[Check], dict[str, Table]] | None = None
        self._stats: list[tuple[int, int] | None] = []

    def start(self) -> None:
        """Start the checks in the background (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="isic2020-precheck",
                                            daemon=True)
            self._thread.start()

    def _files(self) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for s in self.splits:
            for e in self.manifest.metadata(s):
                try:
                    st = self.layout.final_path(e).stat()
                    out.append((st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append(None)
        return out

    def _run(self) -> None:
        try:
            stats = self._files()
            try:  # in a forked child: the CSVs' parsing does not hold the download's GIL
                result = call_in_fork(_checks_and_names, self.layout, self.manifest,
                                      self.splits)
            except ForkFailed:
                result = _checks_and_names(self.layout, self.manifest, self.splits)
                release_free_memory()
            self._stats, self._result = stats, result
        except Exception:  # noqa: BLE001 - the closing verify does the checks itself
            self._result = None

    def result(self) -> tuple[list[Check], dict[str, Table]] | None:
        """The checks, if they ran and the CSVs have not changed since; waits for them."""
        if self._thread is None:
            return None
        self._thread.join()
        if self._result is None or self._files() != self._stats:
            return None
        return self._result


def verify_data(
    layout: Layout,
    manifest: Manifest,
    *,
    split: str = "all",
    fmt: str = "jpeg",
    deep: bool = False,
    progress: bool = False,
    metadata: tuple[list[Check], dict[str, Table]] | None = None,
    checked: Mapping[Path, Collection[str]] | None = None,
) -> VerifyReport:
    """Check the selection on disk; never raises for findings (they are in the report).

    ``metadata``: the metadata checks already made (:class:`MetadataPrecheck`).
    ``checked``: per image folder, the file names whose content the calling fetch checked
    with the integrity rule as it wrote them (``decode.Vouched``); their integrity is taken
    from that check, every other file is read. Only a fetch passes it, for what it has just
    written: ``isic2020 verify`` reads every file.
    Raises NothingThere (exit 2) only when nothing of the selection is on disk at all.
    """
    start = time.monotonic()
    release_free_memory()
    splits = expand_split(split)
    if fmt not in FORMAT_CHOICES and not is_resized_format(fmt):
        raise UsageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMAT_CHOICES)}")
    if not _anything_on_disk(layout, manifest, splits, fmt):
        raise NothingThere(
            f"nothing to verify: no metadata{'' if fmt == 'none' else ', archives or images'} "
            f"for --split {split} --format {fmt} in {layout.root}",
            f"run `isic2020 fetch --split {split} --format {fmt}` first",
        )
    report = VerifyReport(str(layout.root), split, fmt, deep)
    checks, frames = metadata or metadata_checks(layout, manifest, splits)
    report.checks += checks
    records = Records(layout.records_path)
    for s in splits:
        entries = list(manifest.metadata(s))
        if fmt != "none":
            a = manifest.archive(s, fmt)
            if a is not None:
                entries.append(a)
        for e in entries:
            c = check_recorded(layout, e, records, deep)
            if c is not None:
                report.checks.append(c)
    if fmt != "none":
        for s in splits:
            if s == "train":
                expected = frames.get("ground_truth")
                if expected is None:
                    expected = frames.get("ground_truth_v2")
            else:
                expected = frames.get("test_metadata")
            if is_resized_format(fmt):  # issue 15: a folder made by `isic2020 resize`
                expected = _apply_selection(layout, "jpeg", s, expected, report)
                names = None if expected is None else set(expected["image_name"]) - {None}
                report.checks += [Check(**vars(f)) for f in
                                  check_resized(layout.root, fmt, s, names, deep)]
                continue
            expected = _apply_selection(layout, fmt, s, expected, report)
            folder = layout.images_dir(fmt, s)
            report.checks += image_checks(layout, fmt, s, expected, deep, progress,
                                          (checked or {}).get(folder, ()))
    report.repair = fix_command(layout, [(split, fmt)])
    report.seconds = time.monotonic() - start
    return report


def _runs(
    layout: Layout, manifest: Manifest, split: str | None, fmt: str | None
) -> list[tuple[str, str]]:
    """The ``(split, format)`` checks of one ``verify``: the options when both are given; else
    what was fetched, completed by the option given (``--split all`` checks the test split
    too, in the formats fetched; the old defaults, all and jpeg, when nothing was fetched)."""
    if split is not None and fmt is not None:
        return [(split, fmt)]
    pairs = fetched_pairs(layout, manifest)
    if split is None and fmt is None:
        chosen = pairs
    elif split is None:
        chosen = [(s, fmt) for s in sorted({s for s, _ in pairs}) or expand_split("all")]
    else:
        anywhere = {f for _, f in pairs if f != "none"} or {f for _, f in pairs} or {"jpeg"}
        chosen = []
        for s in expand_split(split):
            mine = {f for s2, f in pairs if s2 == s} or anywhere
            chosen += [(s, f) for f in sorted(mine)]
    return group_pairs(chosen) or [(split or "all", fmt or "jpeg")]


def verify(
    split: str | None = None,
    fmt: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    deep: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """``isic2020 verify``: shared lock (a concurrent fetch must not change files mid-check).

    ``split``/``fmt`` None: what was fetched into the data directory (``checks.fetched``).
    """
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    if not layout.root.is_dir():
        raise NothingThere(
            f"nothing to verify: {layout.root} does not exist",
            f"run `isic2020 fetch --split {split or 'train'} --format {fmt or 'jpeg'}` first"
            + ("" if data_dir is None else " with the same --data-dir"),
        )
    with data_dir_lock(layout.lock_path, shared=True):
        runs = _runs(layout, man, split, fmt)
        reports = [verify_data(layout, man, split=s, fmt=f, deep=deep, progress=progress)
                   for s, f in runs]
    if len(reports) == 1:
        return reports[0]
    covered = {x for s, _ in runs for x in expand_split(s)}
    merged = VerifyReport(str(layout.root), "all" if len(covered) > 1 else covered.pop(),
                          ",".join(f for _, f in runs), deep)
    names: set[str] = set()
    for r in reports:  # the CSVs of a split checked with two formats are listed once
        merged.checks += [c for c in r.checks if c.name not in names]
        names.update(c.name for c in r.checks)
        merged.seconds += r.seconds
    merged.repair = fix_command(layout, [(s, f) for (s, f), r in zip(runs, reports)
                                         if not r.ok] or runs)
    return merged
