"""Export the data in another tool's layout, made of hard links, so nothing is stored twice.

(``--layout webdataset`` and ``--layout parquet`` write training shards instead: see
:mod:`isic2020.commands.export_shards`.)

``--layout kaggle`` rebuilds the SIIM-ISIC Melanoma Classification competition layout, so
existing Kaggle notebooks run unchanged (point ``../input/siim-isic-melanoma-classification``
at DEST)::

    DEST/train.csv  DEST/test.csv        Kaggle's column names, ages as floats (``45.0``)
    DEST/sample_submission.csv           image_name,target (0) for every test image
    DEST/jpeg/train/ISIC_xxxxxxx.jpg     DEST/jpeg/test/...
    DEST/train/ISIC_xxxxxxx.dcm          DEST/test/...  (corrected DICOM when present)
    DEST/.isic2020-export.json           marks DEST as ours (see the rules below)

``train.csv`` keeps all 33,126 rows, duplicates included, as Kaggle's did. Images are hard
links to the files in the data directory (no extra disk space); where a hard link is impossible
(DEST on another file system: EXDEV; a file system without hard links; the kernel's
``protected_hardlinks``) the file is copied and the report says how many and why. Hard links
share the file: editing an exported image edits the data directory's copy (``isic2020 verify``
would then report it).

Rules, so an export can never damage anything:

* DEST must be a new or empty folder, or a previous export (it holds the marker file, written
  first, so an interrupted export can be resumed by running the same command again);
* DEST may not be, contain, or lie inside the data directory;
* nothing is written outside DEST: sub-folders that are symbolic links are refused, and files
  are written to a temporary name in their folder and renamed over the target (a rename
  replaces a symbolic link, it never writes through it);
* only images named in the metadata are exported; stale files in a previous export are left.

A subset fetch (``--sample``/``--images``/``--where``) exports what is present: ``train.csv``
(``test.csv``, ``sample_submission.csv``) hold the rows of the recorded selection only, so a
notebook never meets a row without its image; the report says ``subset`` and the counts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isic2020.catalog.manifest import load_manifest
from isic2020.catalog.metadata import GROUND_TRUTH_COLUMNS, TEST_COLUMNS_KAGGLE
from isic2020.catalog.selection import recorded_subset
from isic2020.catalog.tables import (
    SUFFIX,
    image_paths,
    load_train_tables,
    read_test,
    write_csv_atomic,
)
from isic2020.commands.export_shards import SHARD_LAYOUTS, ShardOptions, ShardReport, export_shards
from isic2020.errors import EXIT_OK, EXIT_VERIFY, DiskError, UsageError
from isic2020.report import readable_repr
from isic2020.store.fsutil import atomic_write
from isic2020.store.layout import Layout
from isic2020.training.bucket import dest_scheme
from isic2020.training.destination import check_outside_data
from isic2020.training.shards import DEFAULT_SHARD_SIZE, parse_shard_size

if TYPE_CHECKING:
    import pandas as pd

LAYOUTS = ("kaggle", *SHARD_LAYOUTS)
DICOM_CHOICES = ("auto", "corrected", "original")
MARKER = ".isic2020-export.json"

#: errno values meaning "cannot hard-link here", with what we tell the user.
_NO_LINK = {
    errno.EXDEV: "DEST is on another file system than the data directory",
    errno.EPERM: "the file system or the kernel (protected_hardlinks) refuses hard links",
    errno.EMLINK: "a file has too many hard links",
    errno.ENOTSUP: "the file system does not support hard links",
    errno.EOPNOTSUPP: "the file system does not support hard links",
}


@dataclass
class FolderResult:
    """One exported image folder (``rel`` is relative to DEST)."""

    rel: str
    source: str
    expected: int
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    missing: int = 0


@readable_repr
@dataclass
class ExportReport:
    """What ``isic2020 export`` wrote, and how (links or copies)."""

    dest: str
    layout: str
    data_dir: str
    csvs: dict[str, int] = field(default_factory=dict)
    folders: list[FolderResult] = field(default_factory=list)
    copy_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Per split that is a subset: ``{"selected": n, "in_metadata": m}``.
    subset_images: dict[str, dict[str, int]] = field(default_factory=dict)
    exit_code: int = EXIT_OK

    @property
    def subset(self) -> bool:
        return bool(self.subset_images)

    @property
    def linked(self) -> int:
        return sum(f.linked for f in self.folders)

    @property
    def copied(self) -> int:
        return sum(f.copied for f in self.folders)

    @property
    def missing(self) -> int:
        return sum(f.missing for f in self.folders)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("exit_code")
        d.update(linked=self.linked, copied=self.copied, missing=self.missing,
                 subset=self.subset)
        return d

    def summary_lines(self) -> list[str]:
        lines = [f"{self.layout} layout in {self.dest} (from {self.data_dir})"]
        for name, rows in self.csvs.items():
            lines.append(f"  {name}: {rows:,} rows")
        for f in self.folders:
            done = f.linked + f.copied + f.unchanged
            how = [
                f"{n:,} {w}"
                for n, w in (
                    (f.linked, "hard-linked"),
                    (f.copied, "copied"),
                    (f.unchanged, "already there"),
                    (f.missing, "MISSING"),
                )
                if n
            ]
            lines.append(f"  {f.rel}/: {done:,}/{f.expected:,} ({', '.join(how)})")
        if self.copied:
            lines.append(
                f"copied {self.copied:,} files instead of linking them ("
                + "; ".join(self.copy_reasons)
                + "): they take disk space of their own"
            )
        lines.extend(self.notes)
        return lines


def check_dest(dest: Path, data_root: Path) -> None:
    """Refuse a DEST that could mix with or damage the data directory or a user's files."""
    check_outside_data(dest, data_root)
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise UsageError(
            f"DEST {dest} is not empty and is not a previous isic2020 export",
            "choose a new or empty folder (an earlier export is updated in place)",
        )


def _safe_dir(dest: Path, rel: str) -> Path:
    """``dest/rel``, created, refusing any component that is a symbolic link."""
    p = dest
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            raise UsageError(
                f"{p} is a symbolic link; refusing to write through it",
                "remove it, or export to a new folder",
            )
        try:
            p.mkdir(exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{p} exists and is not a folder", "remove it") from None
        except OSError as exc:
            raise DiskError(f"cannot create {p}: {exc.strerror or exc}") from None
    return p


class _Placer:
    """Hard-link (or copy) files into place, remembering why links were impossible."""

    def __init__(self) -> None:
        self.no_link: dict[tuple[int, int], str] = {}  # (src dev, dest dev) -> reason
        self.reasons: list[str] = []
        self._dev: dict[Path, int] = {}

    def place(self, src: Path, dst: Path, result: FolderResult) -> None:
        try:
            st_src = os.stat(src)
        except FileNotFoundError:
            result.missing += 1
            return
        try:
            st_dst = os.lstat(dst)
        except FileNotFoundError:
            st_dst = None
        if st_dst is not None and _same_content(st_src, st_dst):
            result.unchanged += 1
            return
        tmp = dst.with_name("." + dst.name + ".tmp")
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            if dst.parent not in self._dev:
                self._dev[dst.parent] = os.stat(dst.parent).st_dev
            key = (st_src.st_dev, self._dev[dst.parent])
            linked = False
            if key not in self.no_link:
                try:
                    os.link(src, tmp)
                    linked = True
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
                    reason = _NO_LINK[exc.errno]
                    self.no_link[key] = reason
                    if reason not in self.reasons:
                        self.reasons.append(reason)
            if not linked:
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        except OSError as exc:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise DiskError(f"cannot write {dst}: {exc.strerror or exc}") from None
        if linked:
            result.linked += 1
        else:
            result.copied += 1


def _same_content(src: os.stat_result, dst: os.stat_result) -> bool:
    """The same file (a link), or a copy we made earlier (copy2 keeps size and mtime)."""
    if not stat.S_ISREG(dst.st_mode):
        return False
    if (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino):
        return True
    return src.st_size == dst.st_size and src.st_mtime_ns == dst.st_mtime_ns


def _kaggle_frame(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Kaggle's columns, ages as floats (``45.0``), blanks as empty fields."""
    import pandas as pd

    out = df[columns].copy()
    out["age_approx"] = out["age_approx"].astype("float64")
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype("object")
    return out


def _write_marker(dest: Path, payload: dict[str, Any]) -> None:
    try:
        atomic_write(dest / MARKER, (json.dumps(payload, indent=2) + "\n").encode())
    except OSError as exc:
        raise DiskError(f"cannot write {dest / MARKER}: {exc.strerror or exc}") from None


def _dicom_source(layout: Layout, split: str, names: pd.Series, dicom: str) -> str | None:
    """Which DICOM folder to export: the corrected one when it has images, unless told."""
    options = {"corrected": ["dicom"], "original": ["dicom-original"]}.get(
        dicom, ["dicom", "dicom-original"]
    )
    for fmt in options:
        _, missing = image_paths(names, layout, fmt, split)
        if missing < len(names):
            return fmt
    return None


def _write_csvs(
    out: Path, train: pd.DataFrame, test: pd.DataFrame | None, report: ExportReport
) -> list[tuple[str, pd.DataFrame]]:
    """Kaggle's ``train.csv`` (and ``test.csv`` with ``sample_submission.csv`` when the test
    metadata is on disk); the splits whose images are exported."""
    import pandas as pd

    write_csv_atomic(_kaggle_frame(train, GROUND_TRUTH_COLUMNS), out / "train.csv")
    report.csvs["train.csv"] = len(train)
    splits: list[tuple[str, pd.DataFrame]] = [("train", train)]
    if test is not None:
        write_csv_atomic(_kaggle_frame(test, TEST_COLUMNS_KAGGLE), out / "test.csv")
        sub = pd.DataFrame({"image_name": test["image_name"], "target": 0})
        write_csv_atomic(sub, out / "sample_submission.csv")
        report.csvs["test.csv"] = len(test)
        report.csvs["sample_submission.csv"] = len(test)
        splits.append(("test", test))
    else:
        report.notes.append(
            "note: no test metadata on disk, so no test.csv, sample_submission.csv or test "
            "images (run `isic2020 fetch --split test --format none`)"
        )
    return splits


def _export_folder(
    lay: Layout, out: Path, split: str, names: pd.Series, rel: str, fmt: str | None,
    dicom: str, placer: _Placer, report: ExportReport,
) -> None:
    """One image folder of the export (``rel`` under ``out``) from ``fmt``'s folder; a note
    when that folder was never fetched, exit code 1 when it is only partly there."""
    src_dir = lay.images_dir(fmt, split) if fmt else None
    if src_dir is None or not src_dir.is_dir():
        wanted = (
            "jpeg"
            if rel.startswith("jpeg")
            else ("dicom-original" if dicom == "original" else "dicom")
        )
        left = (
            " (the one from an earlier export is left as it was)"
            if (out / rel).is_dir()
            else ""
        )
        report.notes.append(
            f"note: no {wanted} {split} images in the data directory, so {rel}/ is not "
            f"exported{left} (run `isic2020 fetch --split {split} --format {wanted}` "
            "to add them)"
        )
        return
    result = FolderResult(rel=rel, source=str(src_dir), expected=len(names))
    target_dir = _safe_dir(out, rel)
    suffix = SUFFIX[fmt] if fmt else ""
    for n in names:
        placer.place(src_dir / f"{n}{suffix}", target_dir / f"{n}{suffix}", result)
    report.folders.append(result)
    if result.missing:
        report.exit_code = EXIT_VERIFY
        report.notes.append(
            f"{result.missing:,} images missing in {src_dir}: {rel}/ is incomplete "
            f"(run `isic2020 fetch --split {split} --format {fmt}`, then export again)"
        )


def _present(lay: Layout, split: str, frame: pd.DataFrame, report: ExportReport) -> pd.DataFrame:
    """The rows of ``split`` whose images are present: a subset fetch's selection (and a note),
    else every row."""
    sel = recorded_subset(lay, split)
    if sel is None:
        return frame
    part = frame[frame["image_name"].astype(str).isin(set(sel.names))].reset_index(drop=True)
    report.subset_images[split] = {"selected": len(part), "in_metadata": len(frame)}
    report.notes.append(
        f"note: {split} is a subset ({len(part):,} of {len(frame):,} images, as fetched: "
        f"{sel.describe()}): its CSVs hold those rows only"
    )
    return part


def export(
    dest: str | os.PathLike[str],
    layout: str = "kaggle",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    dicom: str = "auto",
    shards: ShardOptions | None = None,
) -> ExportReport | ShardReport:
    """Write the ``layout`` view of the data directory into ``dest`` (see the module doc).

    Exit code 1 when a folder is only partly there (some images of a split/format missing: a
    notebook would crash on them); formats never fetched are simply left out, with a note.
    ``webdataset`` and ``parquet`` write training shards instead
    (:mod:`isic2020.commands.export_shards`; ``shards`` says which split, format and size).
    """
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
    if layout in SHARD_LAYOUTS:
        base = shards or ShardOptions()
        opts = ShardOptions(layout, base.split, base.image_format, base.shard_size,
                            data_dir if data_dir is not None else base.data_dir,
                            manifest if manifest is not None else base.manifest)
        return export_shards(dest, opts)
    if dest_scheme(dest) == "s3":
        raise UsageError(
            "--layout kaggle cannot export to s3:// (it is hard links into the data directory)",
            "export --layout webdataset or parquet shards to s3://, or kaggle to a folder",
        )
    if shards is not None and (
        shards.split, shards.image_format, parse_shard_size(shards.shard_size)
    ) != ("all", "jpeg", DEFAULT_SHARD_SIZE):
        raise UsageError(
            "--split, --format and --shard-size are for the webdataset and parquet layouts",
            "leave them out for --layout kaggle (it exports every split it finds)",
        )
    if dicom not in DICOM_CHOICES:
        raise UsageError(f"unknown DICOM choice {dicom!r}", f"use {', '.join(DICOM_CHOICES)}")
    lay = Layout.at(data_dir)
    man = load_manifest(manifest)
    out = Path(dest).expanduser().absolute()
    check_dest(out, lay.root)
    train, _, files = load_train_tables(lay, man)
    test = read_test(files.test_metadata) if files.test_metadata else None

    report = ExportReport(dest=str(out), layout=layout, data_dir=str(lay.root))
    train = _present(lay, "train", train, report)
    test = None if test is None else _present(lay, "test", test, report)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskError(f"cannot create {out}: {exc.strerror or exc}") from None
    marker = {"tool": "isic2020", "layout": layout, "data_dir": str(lay.root), "complete": False}
    _write_marker(out, marker)
    splits = _write_csvs(out, train, test, report)
    placer = _Placer()
    for split, frame in splits:
        names = frame["image_name"].astype(str)
        jobs: list[tuple[str, str | None]] = [
            (f"jpeg/{split}", "jpeg"),
            (split, _dicom_source(lay, split, names, dicom)),
        ]
        for rel, fmt in jobs:
            _export_folder(lay, out, split, names, rel, fmt, dicom, placer, report)
    report.copy_reasons = placer.reasons
    marker.update(
        complete=report.exit_code == EXIT_OK,
        linked=report.linked,
        copied=report.copied,
        missing=report.missing,
    )
    _write_marker(out, marker)
    return report
