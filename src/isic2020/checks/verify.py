"""Prove that what is on disk is the complete, intact ISIC 2020 dataset (``isic2020 verify``).

Checks, each reported with a status (ok / failed / warning) and its figures:

* **Metadata**: every CSV of the selected splits exists, parses, has the documented columns
  (ISIC or Kaggle names for the test CSV), well-formed unique image names, well-formed values
  (``IP_`` patient ids, sex, age, target consistent with benign_malignant and
  diagnosis; not lesion ids: the official v2 has ``0`` for ISIC_3746471), the manifest's row
  count; v1 and v2 ground truth hold the same rows in the same order; every duplicates name
  is in the ground truth.
* **Files against records**: a CSV or archive in DATA whose stat still matches the record
  written when it was verified is trusted without hashing (that is what keeps verify fast on
  30 GB of zips); a changed stat, or ``--deep``, re-hashes it and compares with the record (or
  the manifest's size/sha256 when there is no record). Absent archives are fine: they may have
  been deleted with ``--no-keep-archives``; the images are what is checked.
* **Images against metadata**: the image files in ``DATA/<format>/<split>/`` are exactly the
  CSV's names; every missing and extra name is reported (first few in text, all in JSON).
  Extraction's hidden ``.ISIC_*.part`` temporary files are not images; leftovers are a warning.
* **Integrity** (fast): non-empty; JPEG starts with SOI ``FFD8`` and ends with EOI ``FFD9``
  (trailing zero bytes after EOI are tolerated: some encoders pad to a block, and zeros carry
  no image data; a truncated file ends in entropy-coded data, not ``FFD9``); DICOM has ``DICM``
  at offset 128 and its header parses (pydicom, ``stop_before_pixels``). One ``open`` and two
  ``pread`` per JPEG, names from one ``os.scandir``: measured on 2 cores, full-size synthetic
  set (44,108 JPEGs, warm cache) the whole ``verify`` takes 1.3-1.9 s (23,000-35,000
  images/s end to end, CSV parsing and hashing included; the image pass alone runs at
  100,000-170,000 files/s in one thread, so no thread pool: it has nothing left to win).
  DICOM headers go through pydicom (pure Python, ~1,500/s per core), in a process pool:
  ~3,000-3,500 files/s on 2 cores, ~15 s for the full-size set.
* **Deep** (``--deep``): JPEGs decode (Pillow ``draft`` reduced-size decode, in threads since
  Pillow releases the GIL); DICOM headers are cross-checked against the CSV: PatientID,
  PatientSex (M/F), PatientAge (``045Y``) and BodyPartExamined (0018,0015) against
  ``anatom_site_general_challenge`` (case and ``/ _`` insensitive). A value is compared only
  when both the file and the CSV carry one (a blank CSV cell proves nothing).
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isic2020.catalog.manifest import (
    EXTENSIONS,
    FORMAT_CHOICES,
    FileEntry,
    Manifest,
    expand_split,
    load_manifest,
)
from isic2020.catalog.metadata import (
    GROUND_TRUTH_COLUMNS,
    bad_image_names,
    read_metadata_csv,
    value_problems,
)
from isic2020.catalog.plausible import content_problem
from isic2020.checks.resized import check_resized, is_resized_format
from isic2020.errors import UsageError, VerificationError
from isic2020.store.fsutil import is_temp_name
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records
from isic2020.transfer.digests import file_digests

if TYPE_CHECKING:
    import pandas as pd

SHOW = 5  # names shown per problem list in the text summary
DEEP_WORKERS = 2
PROCESS_THRESHOLD = 2000  # below this, starting processes costs more than it saves
MAP_BATCH = 256  # paths per task of the deep-verify thread pool


@dataclass
class Check:
    """One verified property."""

    name: str
    status: str  # "ok", "failed", "warning"
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "figures": self.figures,
            "problems": self.problems,
        }


@dataclass
class VerifyReport:
    data_dir: str
    split: str
    format: str
    deep: bool
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "verify",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "deep": self.deep,
            "ok": self.ok,
            "status": "ok" if self.ok else "failed",
            "checks": [c.to_dict() for c in self.checks],
            "failed": [c.name for c in self.failed()],
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }

    def summary_lines(self) -> list[str]:
        mode = "deep" if self.deep else "fast"
        n_fail = len(self.failed())
        n_warn = sum(c.status == "warning" for c in self.checks)
        head = (
            f"verify {self.data_dir} (split {self.split}, format {self.format}, {mode}): "
            + ("OK" if self.ok else f"FAILED ({n_fail} of {len(self.checks)} checks)")
            + (f", {n_warn} warning(s)" if n_warn else "")
            + f" in {self.seconds:.1f} s"
        )
        lines = [head]
        for c in self.checks:
            lines.append(f"  {c.status:<7} {c.name}: {c.message}")
            if c.status != "ok" and c.problems:
                for p in c.problems[:SHOW]:
                    lines.append(f"            {p}")
                if len(c.problems) > SHOW:
                    lines.append(f"            ... and {len(c.problems) - SHOW} more (see --json)")
        return lines


# --------------------------------------------------------------------------------------------
# Metadata


def _check_csv(layout: Layout, entry: FileEntry) -> tuple[Check, pd.DataFrame | None]:
    import pandas as pd

    path = layout.final_path(entry)
    name = f"metadata/{entry.name}"
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


def _metadata_checks(
    layout: Layout, manifest: Manifest, splits: Sequence[str]
) -> tuple[list[Check], dict[str, pd.DataFrame]]:
    import pandas as pd

    checks: list[Check] = []
    frames: dict[str, pd.DataFrame] = {}
    for s in splits:
        for entry in manifest.metadata(s):
            c, df = _check_csv(layout, entry)
            checks.append(c)
            if df is not None and entry.role:
                frames[entry.role] = df
    v1, v2 = frames.get("ground_truth"), frames.get("ground_truth_v2")
    if v1 is not None and v2 is not None:
        shared = v2[GROUND_TRUTH_COLUMNS].reset_index(drop=True)
        a = v1.reset_index(drop=True)
        if len(a) != len(shared):
            checks.append(
                Check("metadata/v1 = v2", "failed", f"v1 has {len(a)} rows, v2 {len(shared)}")
            )
        else:
            diff = (a.fillna("\x00") != shared.fillna("\x00")).any(axis=1)
            rows = [
                f"row {i + 2}: v1 {','.join(a.iloc[i].fillna(''))} / "
                f"v2 {','.join(shared.iloc[i].fillna(''))}"
                for i in diff[diff].index[:50]
            ]
            checks.append(
                Check(
                    "metadata/v1 = v2",
                    "failed" if rows else "ok",
                    f"{int(diff.sum())} row(s) differ" if rows else "same rows in the same order",
                    {"differing_rows": int(diff.sum())},
                    rows,
                )
            )
    dups = frames.get("duplicates")
    gt = v1 if v1 is not None else v2
    if dups is not None and gt is not None:
        known = set(gt["image_name"])
        names = pd.concat([dups["image_name_1"], dups["image_name_2"]]).dropna().unique()
        missing = [n for n in names if n not in known]
        checks.append(
            Check(
                "metadata/duplicates in ground truth",
                "failed" if missing else "ok",
                f"{len(missing)} name(s) not in the ground truth"
                if missing
                else f"all {len(names)} names are in the ground truth",
                {"names": len(names), "not_in_ground_truth": len(missing)},
                [f"{n} is not in the ground truth" for n in missing],
            )
        )
    return checks, frames


# --------------------------------------------------------------------------------------------
# Files against their records


def _check_recorded(
    layout: Layout, entry: FileEntry, records: Records, deep: bool
) -> Check | None:
    path = layout.final_path(entry)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    kind = "archive" if entry.is_archive else "file"
    name = f"{kind}/{entry.name}"
    rec = records.file(entry.name)
    problem = content_problem(entry, path)
    if problem is not None:  # a login page an older run recorded, a gzipped body
        return Check(
            name, "failed", f"not the file the manifest describes: it {problem}",
            {"size": size, "hashed": False},
            [f"{entry.name} {problem}; `isic2020 fetch` downloads it again"],
        )
    if rec is not None and not deep and rec.matches_stat(path):
        return Check(
            name, "ok", "unchanged since verified (stat matches the record; not re-hashed)",
            {"size": size, "hashed": False},
        )
    want_sha = rec.sha256 if rec else entry.sha256
    want_size = rec.size if rec else entry.size
    source = "the record" if rec else "the manifest"
    if want_sha is None and want_size is None:
        return Check(
            name, "warning", "no record and no checksum in the manifest: content not proven",
            {"size": size, "hashed": False},
        )
    if want_size is not None and size != want_size:
        return Check(
            name, "failed", f"{size} bytes, {source} says {want_size}",
            {"size": size, "expected_size": want_size, "hashed": False},
            [f"{entry.name}: size {size} != {want_size}"],
        )
    if want_sha is None:
        return Check(name, "ok", f"size matches {source} (no checksum known)", {"size": size})
    sha = file_digests(path)["sha256"]
    if sha != want_sha:
        return Check(
            name, "failed", f"SHA-256 differs from {source}: the file is damaged",
            {"size": size, "sha256": sha, "expected_sha256": want_sha, "hashed": True},
            [f"{entry.name}: sha256 {sha} != {want_sha}; delete it and run `isic2020 fetch`"],
        )
    return Check(name, "ok", f"SHA-256 matches {source}", {"size": size, "hashed": True})


# --------------------------------------------------------------------------------------------
# Images


def _scan(folder: Path, ext: str) -> tuple[set[str], list[str], list[str]]:
    """(image stems, other entries, leftover temp files) from one scandir."""
    images: set[str] = set()
    other: list[str] = []
    temps: list[str] = []
    pat = re.compile(r"^(ISIC_[0-9]{7})\." + ext + "$")
    try:
        with os.scandir(folder) as it:
            for e in it:
                m = pat.match(e.name)
                if m and e.is_file():
                    images.add(m.group(1))
                elif is_temp_name(e.name):
                    temps.append(e.name)
                else:
                    other.append(e.name)
    except FileNotFoundError:
        pass
    return images, sorted(other), sorted(temps)


def _jpeg_fast(path: str) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return "empty file"
        if size < 4 or os.pread(fd, 2, 0) != b"\xff\xd8":
            return "not a JPEG (no SOI marker FFD8 at the start)"
        tail = os.pread(fd, 2, size - 2)
        if tail == b"\xff\xd9":
            return None
        if tail.endswith(b"\x00"):
            block = os.pread(fd, min(size, 65536), max(0, size - 65536)).rstrip(b"\x00")
            if block.endswith(b"\xff\xd9"):
                return None
        return "truncated JPEG (no EOI marker FFD9 at the end)"
    finally:
        os.close(fd)


def _dicom_header(path: str, deep: bool) -> tuple[str | None, dict[str, str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size == 0:
            return "empty file", {}
        if os.pread(fd, 4, 128) != b"DICM":
            return "not a DICOM Part-10 file (no DICM at offset 128)", {}
    finally:
        os.close(fd)
    try:
        # Fast: header only. Deep: the whole file, so truncated pixel data is caught too.
        ds = pydicom.dcmread(path, stop_before_pixels=not deep)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return f"DICOM does not parse: {exc}", {}
    if deep:
        why = _pixel_problem(ds)
        if why:
            return why, {}
    fields: dict[str, str] = {}
    if deep:
        for kw in ("PatientID", "PatientSex", "PatientAge", "BodyPartExamined"):
            v = ds.get(kw)
            if v is not None and str(v).strip():
                fields[kw] = str(v).strip()
    return None, fields


def _pixel_problem(ds: Any) -> str | None:
    """Pixel data present and, when uncompressed, as long as the header says."""
    if "PixelData" not in ds:
        return "DICOM has no pixel data"
    data = ds.PixelData
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_compressed", False):
        return None if data else "DICOM pixel data is empty"
    try:
        want = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
            * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8
        )
    except (AttributeError, TypeError, ValueError):
        return None
    if len(data) < want:
        return f"DICOM pixel data truncated ({len(data)} of {want} bytes)"
    return None


def _norm_site(v: str) -> str:
    return re.sub(r"[\s/_]+", " ", v).strip().upper()


def _dicom_vs_csv(name: str, fields: dict[str, str], row: dict[str, Any] | None) -> list[str]:
    import pandas as pd

    if row is None:
        return []
    out = []

    def val(col: str) -> str | None:
        v = row.get(col)
        return None if v is None or pd.isna(v) or v == "" else str(v)

    pid, sex, age, site = (
        val("patient_id"), val("sex"), val("age_approx"), val("anatom_site_general_challenge")
    )
    if "PatientID" in fields and pid and fields["PatientID"] != pid:
        out.append(f"{name}: PatientID {fields['PatientID']} but CSV patient_id {pid}")
    if "PatientSex" in fields and sex:
        want = {"male": "M", "female": "F"}.get(sex, sex)
        if fields["PatientSex"].upper() != want:
            out.append(f"{name}: PatientSex {fields['PatientSex']} but CSV sex {sex}")
    if "PatientAge" in fields and age:
        m = re.fullmatch(r"([0-9]{1,3})Y?", fields["PatientAge"].upper())
        try:
            same = m is not None and int(m.group(1)) == int(float(age))
        except ValueError:
            same = False
        if not same:
            out.append(f"{name}: PatientAge {fields['PatientAge']} but CSV age_approx {age}")
    if "BodyPartExamined" in fields and site and (
        _norm_site(fields["BodyPartExamined"]) != _norm_site(site)
    ):
            out.append(
                f"{name}: BodyPartExamined {fields['BodyPartExamined']} but CSV "
                f"anatom_site_general_challenge {site}"
            )
    return out


def _jpeg_decode(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
        return f"JPEG does not decode: {exc}"
    return None


def _dicom_fast(path: str) -> tuple[str | None, dict[str, str]]:
    return _dicom_header(path, False)


def _dicom_deep(path: str) -> tuple[str | None, dict[str, str]]:
    return _dicom_header(path, True)


def _map_procs(fn: Callable[[str], Any], items: Sequence[str]) -> list[Any]:
    """pydicom parsing is pure Python (GIL-bound, ~1,500 headers/s per core): use processes."""
    n = min(os.cpu_count() or 1, 8)
    if n <= 1 or len(items) < PROCESS_THRESHOLD:
        return [fn(i) for i in items]
    with ProcessPoolExecutor(n) as pool:
        return list(pool.map(fn, items, chunksize=max(64, len(items) // (n * 8))))


def _map(fn: Callable[[str], Any], items: Sequence[str], workers: int) -> list[Any]:
    """``fn`` over ``items`` in ``workers`` threads, in batches of ``MAP_BATCH`` with at most
    two batches per worker in flight: ``ThreadPoolExecutor.map`` ignores ``chunksize`` and
    would create one future per item up front (44,108 of them for a full ``--deep``)."""
    if workers <= 1 or len(items) < 64:
        return [fn(i) for i in items]

    def batch(lo: int) -> list[Any]:
        return [fn(i) for i in items[lo : lo + MAP_BATCH]]

    out: list[Any] = []
    starts = iter(range(0, len(items), MAP_BATCH))
    with ThreadPoolExecutor(workers, thread_name_prefix="isic2020-verify") as pool:
        window = deque(pool.submit(batch, lo) for lo in itertools.islice(starts, 2 * workers))
        try:
            while window:
                out.extend(window.popleft().result())
                lo = next(starts, None)
                if lo is not None:
                    window.append(pool.submit(batch, lo))
        except BaseException:
            for f in window:
                f.cancel()
            raise
    return out


def _image_checks(
    layout: Layout,
    fmt: str,
    split: str,
    expected: pd.DataFrame | None,
    deep: bool,
    progress: bool,
) -> list[Check]:
    folder = layout.images_dir(fmt, split)
    ext = EXTENSIONS[fmt]
    prefix = f"images/{fmt}/{split}"
    present, other, temps = _scan(folder, ext)
    checks: list[Check] = []
    if expected is not None:
        names = set(expected["image_name"].dropna())
        missing = sorted(names - present)
        extra = sorted(present - names)
        extra_files = [f"{n}.{ext}" for n in extra] + other
        problems = [f"missing {n}.{ext}" for n in missing] + [f"extra {n}" for n in extra_files]
        figures = {
            "expected": len(names),
            "present": len(present),
            "missing": len(missing),
            "extra": len(extra_files),
            "missing_names": missing,
            "extra_names": extra_files,
        }
        if not folder.is_dir():
            msg = (
                f"{folder} does not exist ({len(names):,} images expected); run "
                f"`isic2020 fetch --split {split} --format {fmt}`"
            )
        elif problems:
            msg = f"{len(present):,} of {len(names):,} images; {len(missing)} missing, " + (
                f"{len(extra_files)} extra"
            )
        else:
            msg = f"all {len(names):,} images present, nothing extra"
        checks.append(Check(f"{prefix}/names", "failed" if problems else "ok", msg, figures,
                            problems))
    if temps:
        checks.append(
            Check(
                f"{prefix}/temporary files",
                "warning",
                f"{len(temps)} leftover temporary file(s) from an interrupted extraction; "
                "`isic2020 extract` resumes and removes them",
                {"count": len(temps)},
                temps,
            )
        )
    if not present:
        return checks
    files = [str(folder / f"{n}.{ext}") for n in sorted(present)]
    rows: dict[str, dict[str, Any]] = {}
    if deep and fmt != "jpeg" and expected is not None:
        rows = {r["image_name"]: r for r in expected.to_dict("records")}
    problems: list[str] = []
    mismatches: list[str] = []
    t0 = time.monotonic()
    if fmt == "jpeg":
        results = _map(_jpeg_fast, files, 1)
        problems = [f"{Path(f).name}: {r}" for f, r in zip(files, results) if r]
    else:
        results = _map_procs(_dicom_deep if deep else _dicom_fast, files)
        for f, (err, fields) in zip(files, results):
            stem = Path(f).stem
            if err:
                problems.append(f"{Path(f).name}: {err}")
            elif deep:
                mismatches += _dicom_vs_csv(Path(f).name, fields, rows.get(stem))
    el = time.monotonic() - t0
    checks.append(
        Check(
            f"{prefix}/integrity",
            "failed" if problems else "ok",
            f"{len(problems)} of {len(files):,} damaged" if problems
            else f"{len(files):,} {ext.upper()} files intact ({len(files) / max(el, 1e-9):,.0f}/s)",
            {"checked": len(files), "damaged": len(problems), "seconds": round(el, 3)},
            problems,
        )
    )
    if deep and fmt == "jpeg":
        t0 = time.monotonic()
        results = _map(_jpeg_decode, files, DEEP_WORKERS)
        bad = [f"{Path(f).name}: {r}" for f, r in zip(files, results) if r]
        checks.append(
            Check(
                f"{prefix}/decode",
                "failed" if bad else "ok",
                f"{len(bad)} of {len(files):,} do not decode" if bad
                else f"{len(files):,} JPEGs decode",
                {"checked": len(files), "failed": len(bad),
                 "seconds": round(time.monotonic() - t0, 3)},
                bad,
            )
        )
    if deep and fmt != "jpeg":
        checks.append(
            Check(
                f"{prefix}/dicom vs csv",
                "failed" if mismatches else "ok",
                f"{len(mismatches)} disagreement(s) between DICOM headers and the CSV"
                if mismatches
                else "patient ID, sex, age and site agree with the CSV",
                {"checked": len(files), "disagreements": len(mismatches)},
                mismatches,
            )
        )
    return checks


# --------------------------------------------------------------------------------------------
# Entry points


def release_free_memory() -> None:
    """Hand the heap that earlier work freed (a download's buffers, an extraction's central
    directory) back to the system before pandas and the image lists take theirs: glibc keeps
    freed memory in its arenas, which a ``fetch`` would otherwise carry into this last step.
    Measured at the start of a complete ``fetch``'s verify: 83 -> 77 MB; verify itself then
    adds ~70 MB (pandas ~50 MB, the frames and the 44,108 names), which is the peak."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return
    gc.collect()
    trim(0)


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
    layout: Layout, fmt: str, split: str, expected: pd.DataFrame | None, report: VerifyReport
) -> pd.DataFrame | None:
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
    return expected[expected["image_name"].isin(chosen)]


class MetadataPrecheck:
    """The metadata checks of a fetch's closing verify, run while its archives download.

    Why: importing pandas and checking the three training CSVs takes ~0.9 s that the machine
    otherwise spends waiting for the network; at the end of the fetch they would add to its
    time. The result is used only if every CSV still has the size and mtime it had when the
    checks read it (else the verify does them again); any error here just means the same.
    """

    def __init__(self, layout: Layout, manifest: Manifest, split: str) -> None:
        self.layout = layout
        self.manifest = manifest
        self.splits = expand_split(split)
        self._thread: threading.Thread | None = None
        self._result: tuple[list[Check], dict[str, pd.DataFrame]] | None = None
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
            checks, frames = _metadata_checks(self.layout, self.manifest, self.splits)
            # The fast verify needs only the names of the expected images: the full frames
            # (~20 MB each for the training CSVs) would sit in memory for the whole download.
            names = {
                role: df[["image_name"]].copy()
                for role, df in frames.items()
                if role in ("ground_truth", "ground_truth_v2", "test_metadata")
            }
            del frames
            self._stats, self._result = stats, (checks, names)
            release_free_memory()
        except Exception:  # noqa: BLE001 - the closing verify does the checks itself
            self._result = None

    def result(self) -> tuple[list[Check], dict[str, pd.DataFrame]] | None:
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
    metadata: tuple[list[Check], dict[str, pd.DataFrame]] | None = None,
) -> VerifyReport:
    """Check the selection on disk; never raises for findings (they are in the report).

    ``metadata``: the metadata checks already made (:class:`MetadataPrecheck`).
    Raises VerificationError only when nothing of the selection is on disk at all.
    """
    start = time.monotonic()
    release_free_memory()
    splits = expand_split(split)
    if fmt not in FORMAT_CHOICES and not is_resized_format(fmt):
        raise UsageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMAT_CHOICES)}")
    if not _anything_on_disk(layout, manifest, splits, fmt):
        raise VerificationError(
            f"nothing to verify: no metadata{'' if fmt == 'none' else ', archives or images'} "
            f"for --split {split} --format {fmt} in {layout.root}",
            f"run `isic2020 fetch --split {split} --format {fmt}` first",
        )
    report = VerifyReport(str(layout.root), split, fmt, deep)
    checks, frames = metadata or _metadata_checks(layout, manifest, splits)
    report.checks += checks
    records = Records(layout.records_path)
    for s in splits:
        entries = list(manifest.metadata(s))
        if fmt != "none":
            a = manifest.archive(s, fmt)
            if a is not None:
                entries.append(a)
        for e in entries:
            c = _check_recorded(layout, e, records, deep)
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
                names = None if expected is None else set(expected["image_name"].dropna())
                report.checks += [Check(**vars(f)) for f in
                                  check_resized(layout.root, fmt, s, names, deep)]
                continue
            expected = _apply_selection(layout, fmt, s, expected, report)
            report.checks += _image_checks(layout, fmt, s, expected, deep, progress)
    report.seconds = time.monotonic() - start
    return report


def verify(
    split: str = "all",
    fmt: str = "jpeg",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    deep: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """``isic2020 verify``: shared lock (a concurrent fetch must not change files mid-check)."""
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    if not layout.root.is_dir():
        raise VerificationError(
            f"nothing to verify: {layout.root} does not exist",
            f"run `isic2020 fetch --split {split} --format {fmt}` first",
        )
    with data_dir_lock(layout.lock_path, shared=True):
        return verify_data(layout, man, split=split, fmt=fmt, deep=deep, progress=progress)
