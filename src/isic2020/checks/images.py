"""Image checks: the files in ``DATA/<format>/<split>/`` against the metadata, and each intact.

* **Names**: the image files are exactly the expected names (the CSV's, or a recorded
  selection's); every missing and extra name is reported. Extraction's hidden ``.ISIC_*.part``
  temporary files are not images; leftovers are a warning.
* **Integrity** (fast): non-empty; a JPEG starts with SOI ``FFD8`` and ends with EOI ``FFD9``
  (trailing zero bytes after EOI are tolerated: some encoders pad to a block and zeros carry no
  image data, while a truncated file ends in entropy-coded data, not ``FFD9``); a DICOM has
  ``DICM`` at offset 128 and its header parses (pydicom, ``stop_before_pixels``). One ``open``
  and two ``pread`` per JPEG, names from one ``os.scandir``: the JPEG pass runs in one thread
  because it is bound by system calls a pool would not make cheaper. pydicom is pure Python
  (GIL-bound), so DICOM headers are parsed in a process pool once there are enough of them.
* **Deep** (``--deep``): JPEGs decode (Pillow ``draft`` reduced-size decode, in threads since
  Pillow releases the GIL); DICOM files are read whole (truncated pixel data is caught) and their
  headers cross-checked against the CSV: PatientID, PatientSex (M/F), PatientAge (``045Y``) and
  BodyPartExamined (0018,0015) against ``anatom_site_general_challenge`` (case and ``/ _``
  insensitive). A value is compared only when both the file and the CSV carry one (a blank CSV
  cell proves nothing).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from isic2020.catalog.jpeg import jpeg_file_problem
from isic2020.catalog.manifest import EXTENSIONS
from isic2020.catalog.table import Table
from isic2020.checks.findings import Check
from isic2020.report import plural
from isic2020.store.fsutil import is_temp_name
from isic2020.store.layout import Layout

DEEP_WORKERS = 2
PROCESS_THRESHOLD = 2000  # below this, starting processes costs more than it saves
MAP_BATCH = 256  # paths per task of the deep-verify thread pool


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
        return jpeg_file_problem(fd)
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
    if row is None:
        return []
    out = []

    def val(col: str) -> str | None:
        v = row.get(col)
        return None if v is None or v == "" else str(v)

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
    """``fn`` over ``items`` in processes, once there are enough of them: pydicom parsing is
    pure Python, and the fast JPEG check is five short system calls per file between which
    threads would only take turns at the GIL (2 processes check 33k JPEGs in about half the
    time of 1 thread; threads are no faster than 1)."""
    n = min(os.cpu_count() or 1, 8)
    if n <= 1 or len(items) < PROCESS_THRESHOLD:
        return [fn(i) for i in items]
    # imported here: concurrent.futures.process brings multiprocessing (~20 ms of every
    # fetch and verify start-up), and only folders of thousands of images come this far
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n) as pool:
        return list(pool.map(fn, items, chunksize=max(64, len(items) // (n * 8))))


def map_threads(fn: Callable[[str], Any], items: Sequence[str], workers: int) -> list[Any]:
    """``fn`` over ``items`` in ``workers`` threads, in batches of ``MAP_BATCH`` with at most
    two batches per worker in flight: ``ThreadPoolExecutor.map`` ignores ``chunksize`` and
    would create one future per item up front (one per image of a full ``--deep``)."""
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




def _names_check(
    folder: Path, ext: str, prefix: str, split: str, fmt: str, present: set[str],
    other: list[str], expected: Table,
) -> Check:
    """The image files are exactly the expected names: every missing and extra one listed."""
    names = set(expected["image_name"]) - {None}
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
            f"{folder} does not exist ({plural(len(names), 'image')} expected); run "
            f"`isic2020 fetch --split {split} --format {fmt}`"
        )
    elif problems:
        msg = f"{len(present):,} of {plural(len(names), 'image')}; {len(missing)} missing, " + (
            f"{len(extra_files)} extra"
        )
    else:
        msg = (f"all {plural(len(names), 'image')} present, nothing extra" if len(names) != 1
               else "the 1 image present, nothing extra")
    return Check(f"{prefix}/names", "failed" if problems else "ok", msg, figures, problems)


def _temporary_check(prefix: str, temps: list[str]) -> Check:
    return Check(
        f"{prefix}/temporary files",
        "warning",
        f"{len(temps)} leftover temporary file(s) from an interrupted extraction; "
        "`isic2020 extract` resumes and removes them",
        {"count": len(temps)},
        temps,
    )


def _integrity_checks(
    total: int, to_read: list[str], fmt: str, ext: str, prefix: str,
    expected: Table | None, deep: bool,
) -> list[Check]:
    """The fast integrity check of ``total`` files, reading ``to_read`` (the others were
    checked as they were written); with ``deep`` for DICOM also the header fields against the
    CSV (they come out of the same read)."""
    rows: dict[str, dict[str, Any]] = {}
    if deep and fmt != "jpeg" and expected is not None:
        rows = {str(r["image_name"]): r for r in expected.records()}
    problems: list[str] = []
    mismatches: list[str] = []
    t0 = time.monotonic()
    if fmt == "jpeg":
        results = _map_procs(_jpeg_fast, to_read)
        problems = [f"{Path(f).name}: {r}" for f, r in zip(to_read, results) if r]
    else:
        results = _map_procs(_dicom_deep if deep else _dicom_fast, to_read)
        for f, (err, fields) in zip(to_read, results):
            if err:
                problems.append(f"{Path(f).name}: {err}")
            elif deep:
                mismatches += _dicom_vs_csv(Path(f).name, fields, rows.get(Path(f).stem))
    el = time.monotonic() - t0
    when_written = total - len(to_read)
    how = (f"{when_written:,} checked as this fetch wrote them" if when_written == total
           else f"{len(to_read) / max(el, 1e-9):,.0f}/s" + (
               f"; {when_written:,} checked as this fetch wrote them" if when_written else ""))
    checks = [
        Check(
            f"{prefix}/integrity",
            "failed" if problems else "ok",
            f"{len(problems)} of {total:,} damaged" if problems
            else f"{plural(total, ext.upper() + ' file')} intact ({how})",
            {"checked": total, "damaged": len(problems), "seconds": round(el, 3),
             "checked_when_written": when_written},
            problems,
        )
    ]
    if deep and fmt != "jpeg":
        checks.append(
            Check(
                f"{prefix}/dicom vs csv",
                "failed" if mismatches else "ok",
                f"{len(mismatches)} disagreement(s) between DICOM headers and the CSV"
                if mismatches
                else "patient ID, sex, age and site agree with the CSV",
                {"checked": total, "disagreements": len(mismatches)},
                mismatches,
            )
        )
    return checks


def _decode_check(files: list[str], prefix: str) -> Check:
    """``--deep`` for JPEG: every file decodes (reduced size, in threads)."""
    t0 = time.monotonic()
    results = map_threads(_jpeg_decode, files, DEEP_WORKERS)
    bad = [f"{Path(f).name}: {r}" for f, r in zip(files, results) if r]
    return Check(
        f"{prefix}/decode",
        "failed" if bad else "ok",
        f"{len(bad)} of {len(files):,} do not decode" if bad
        else f"{len(files):,} JPEGs decode",
        {"checked": len(files), "failed": len(bad),
         "seconds": round(time.monotonic() - t0, 3)},
        bad,
    )


def image_checks(
    layout: Layout,
    fmt: str,
    split: str,
    expected: Table | None,
    deep: bool,
    progress: bool,
    checked: Collection[str] = (),
) -> list[Check]:
    """The checks of one image folder, in report order: names (when the expected images are
    known), leftover temporary files, integrity, then (``deep``) decode or DICOM vs CSV.

    ``checked``: file names whose integrity was checked, by the same rule, on the bytes the
    calling fetch wrote (see ``verify_data``): not read again (but with ``deep``)."""
    folder = layout.images_dir(fmt, split)
    ext = EXTENSIONS[fmt]
    prefix = f"images/{fmt}/{split}"
    present, other, temps = _scan(folder, ext)
    checks: list[Check] = []
    if expected is not None:
        checks.append(_names_check(folder, ext, prefix, split, fmt, present, other, expected))
    if temps:
        checks.append(_temporary_check(prefix, temps))
    if not present:
        return checks
    base = os.fspath(folder) + os.sep  # one string per image, no Path objects (33k of them)
    suffix = "." + ext
    stems = sorted(present)
    if deep or not checked:
        to_read = [f"{base}{n}{suffix}" for n in stems]
    else:
        to_read = [f"{base}{n}{suffix}" for n in stems if n + suffix not in checked]
    integrity = _integrity_checks(len(stems), to_read, fmt, ext, prefix, expected, deep)
    checks.append(integrity[0])
    if deep and fmt == "jpeg":
        checks.append(_decode_check(to_read, prefix))  # (every file: ``deep``)
    checks += integrity[1:]
    return checks
