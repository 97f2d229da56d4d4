"""A synthetic ISIC 2020 mirror: the official file names, layouts and CSV formats, tiny images.

Why this exists: the real dataset is ~120 GB and no test or benchmark may touch the network.
Every test and benchmark of this project (and any user who wants to test a pipeline offline)
builds its data here, so there is one definition of "looks like the real thing":

* CSVs exactly like the official ones: same headers and column order, CRLF line endings, blanks
  where the real files have them, consistent ``diagnosis``/``benign_malignant``/``target``
  (~2 % malignant), ``IP_`` patients with several images each, ``IL_`` lesions in v2, a
  duplicates list whose pairs share patient and lesion. With ``metadata_dir`` (a folder holding
  the real CSVs) real rows are sampled instead of invented ones.
* Zips laid out like the official ones: ``train/ISIC_xxxxxxx.jpg`` in the training JPEG zip,
  ``ISIC_2020_Test_Input/ISIC_xxxxxxx.jpg`` plus a non-image entry in the test JPEG zip,
  ``train/`` / ``test/`` ``ISIC_xxxxxxx.dcm`` in the DICOM zips.
* Real image files: JPEGs encoded by Pillow, DICOMs that are valid Part-10 files (128-byte
  preamble, ``DICM``, explicit VR little endian) readable by pydicom, carrying the CSV's patient
  ID, sex, age (``045Y``) and anatomic site.

Anatomic site in DICOM: the site is written to BodyPartExamined (0018,0015), upper case
(``LOWER EXTREMITY``, ``HEAD/NECK``): it is the standard attribute for it and what public
descriptions of the ISIC DICOMs show. Blank CSV values are simply absent from the file.

Speed: a handful of distinct images is encoded once; each file reuses those bytes with the image
name embedded (a JPEG COM segment; the DICOM's own UIDs and patient tags), so every file is
distinct and valid while the full-size set (33,126 + 10,982 JPEGs) builds in seconds.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from isic2020.catalog.manifest import FORMATS, FileEntry, Manifest, load_manifest, manifest_to_toml
from isic2020.report import human_size
from isic2020.transfer.digests import file_digests

__all__ = [
    "SyntheticDataset",
    "build_dataset",
    "official_manifest",
    "jpeg_bytes",
    "dicom_bytes",
    "ARCHIVE_FOLDERS",
]

#: Folder of the image members inside each official zip (as far as is known; readers must not
#: depend on it, which is exactly what the synthetic zips let tests prove).
ARCHIVE_FOLDERS: dict[tuple[str, str], str] = {
    ("train", "jpeg"): "train",
    ("test", "jpeg"): "ISIC_2020_Test_Input",
    ("train", "dicom"): "train",
    ("test", "dicom"): "test",
    ("train", "dicom-original"): "train",
    ("test", "dicom-original"): "test",
}
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
MANIFEST_NAME = "isic2020-synthetic.toml"
CRLF = "\r\n"


@dataclass
class SyntheticDataset:
    """What :func:`build_dataset` made.

    ``root`` is a mirror folder: every file under its official name, so it can be served as
    ``--mirror file://root`` or copied into ``DATA/archives`` and ``DATA/metadata``.
    """

    root: Path
    manifest_path: Path
    train_names: list[str]
    test_names: list[str]
    formats: tuple[str, ...] = ()
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def manifest(self) -> Manifest:
        return load_manifest(self.manifest_path)

    def path(self, name: str) -> Path:
        """The file with official name ``name``."""
        return self.root / name

    def archive(self, split: str, fmt: str) -> Path:
        entry = self.manifest.archive(split, fmt)
        if entry is None:
            raise KeyError(f"no {split}/{fmt} archive was built (formats: {self.formats})")
        return self.root / entry.name

    def metadata_files(self) -> list[Path]:
        return [self.root / f.name for f in self.manifest.files if f.kind == "metadata"]

    def archive_files(self) -> list[Path]:
        return [self.root / f.name for f in self.manifest.files if f.kind == "archive"]


def official_manifest() -> Manifest:
    """The manifest shipped with the package (never ``$ISIC2020_MANIFEST``: that may be ours)."""
    try:
        shipped = resources.files("isic2020").joinpath("manifests/isic2020.toml")
        if shipped.is_file():
            return load_manifest(Path(str(shipped)))
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
        pass
    return load_manifest(Path(__file__).resolve().parents[2] / "manifests" / "isic2020.toml")


# --------------------------------------------------------------------------------------------
# Images


def _base_jpegs(count: int, size: int, seed: int) -> list[bytes]:
    """A few distinct real JPEGs (gradients + a blob: they differ and decode)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        bg = tuple(rng.randrange(120, 256) for _ in range(3))
        fg = tuple(rng.randrange(0, 120) for _ in range(3))
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        r = rng.randrange(size // 4, size // 2 + 1)
        cx, cy = rng.randrange(r, size - r + 1), rng.randrange(r, size - r + 1)
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=fg)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def jpeg_bytes(base: bytes, name: str) -> bytes:
    """``base`` with a COM segment carrying ``name`` right after SOI: same picture, new bytes."""
    comment = name.encode("ascii")
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


def _pixels(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(size * size * 3))


def _el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element (value padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


_SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic Image Storage
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"
_UID_ROOT = "1.2.826.0.1.3680043.10.1020"  # a private-looking root for synthetic UIDs


def dicom_bytes(
    name: str,
    *,
    patient_id: str | None,
    sex: str | None,
    age: str | None,
    site: str | None,
    pixels: bytes,
    size: int,
    variant: str = "dicom",
) -> bytes:
    """A valid DICOM Part-10 file (VL Photographic Image, RGB, uncompressed).

    Hand-encoded rather than written through pydicom because it is ~50x faster, which the
    full-size benchmark sets need; tests read the result back with pydicom to prove it valid.
    ``variant`` ("dicom" or "dicom-original") only changes the implementation version name, so
    the two DICOM releases hold different bytes as they do in reality.
    """
    digits = name.split("_", 1)[1]
    sop_uid = f"{_UID_ROOT}.1.{int(digits)}".encode()
    study_uid = f"{_UID_ROOT}.2.{int(digits)}".encode()
    series_uid = f"{_UID_ROOT}.3.{int(digits)}".encode()
    version = b"ISIC2020_SYN_ORIG" if variant == "dicom-original" else b"ISIC2020_SYN_CORR"
    meta_body = b"".join(
        [
            _el(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _el(0x0002, 0x0002, b"UI", _SOP_CLASS),
            _el(0x0002, 0x0003, b"UI", sop_uid),
            _el(0x0002, 0x0010, b"UI", _EXPLICIT_LE),
            _el(0x0002, 0x0012, b"UI", f"{_UID_ROOT}.0".encode()),
            _el(0x0002, 0x0013, b"SH", version[:16]),
        ]
    )
    meta = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta_body)) + meta_body
    els = [
        _el(0x0008, 0x0016, b"UI", _SOP_CLASS),
        _el(0x0008, 0x0018, b"UI", sop_uid),
        _el(0x0008, 0x0060, b"CS", b"XC"),
        _el(0x0010, 0x0010, b"PN", name.encode()),
        _el(0x0010, 0x0020, b"LO", (patient_id or "").encode()),
    ]
    if sex:
        els.append(_el(0x0010, 0x0040, b"CS", {"male": b"M", "female": b"F"}.get(sex, b"O")))
    if age:
        els.append(_el(0x0010, 0x1010, b"AS", f"{int(float(age)):03d}Y".encode()))
    if site:
        els.append(_el(0x0018, 0x0015, b"CS", site.upper().encode()[:16]))
    els += [
        _el(0x0020, 0x000D, b"UI", study_uid),
        _el(0x0020, 0x000E, b"UI", series_uid),
        _el(0x0028, 0x0002, b"US", struct.pack("<H", 3)),
        _el(0x0028, 0x0004, b"CS", b"RGB"),
        _el(0x0028, 0x0006, b"US", struct.pack("<H", 0)),
        _el(0x0028, 0x0010, b"US", struct.pack("<H", size)),
        _el(0x0028, 0x0011, b"US", struct.pack("<H", size)),
        _el(0x0028, 0x0100, b"US", struct.pack("<H", 8)),
        _el(0x0028, 0x0101, b"US", struct.pack("<H", 8)),
        _el(0x0028, 0x0102, b"US", struct.pack("<H", 7)),
        _el(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        _el(0x7FE0, 0x0010, b"OB", pixels),
    ]
    return b"\x00" * 128 + b"DICM" + meta + b"".join(els)


# --------------------------------------------------------------------------------------------
# Metadata rows


@dataclass
class _Row:
    image_name: str
    patient_id: str
    lesion_id: str
    sex: str
    age_approx: str
    site: str
    diagnosis: str
    benign_malignant: str
    target: str


def _unique_ids(rng: random.Random, prefix: str, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        v = f"{prefix}{rng.randrange(10**7):07d}"
        if v not in taken:
            taken.add(v)
            out.append(v)
    return out


def _invent_rows(
    rng: random.Random, n: int, taken: set[str], *, test: bool, force_blanks: bool
) -> list[_Row]:
    names = _unique_ids(rng, "ISIC_", n, taken)
    rows: list[_Row] = []
    patients: list[tuple[str, str, str]] = []
    i = 0
    while i < n:
        # Real patients have 1 to ~100 images, 16 on average; small sets keep groups small.
        k = min(n - i, rng.randint(1, max(2, min(16, n // 3 or 1))))
        pid = _unique_ids(rng, "IP_", 1, taken)[0]
        sex = "" if rng.random() < 0.01 else rng.choice(["male", "female"])
        age = "" if rng.random() < 0.01 else str(5 * rng.randint(4, 17))
        patients.append((pid, sex, age))
        for _ in range(k):
            site = "" if rng.random() < 0.02 else rng.choices(SITES, SITE_WEIGHTS)[0]
            malignant = (not test) and rng.random() < 0.02
            diag = "melanoma" if malignant else rng.choices(BENIGN_DIAGNOSES, BENIGN_WEIGHTS)[0]
            rows.append(
                _Row(
                    names[i],
                    pid,
                    _unique_ids(rng, "IL_", 1, taken)[0],
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


def _make_duplicates(rng: random.Random, rows: list[_Row], count: int) -> list[tuple[str, str]]:
    """Pairs within one patient; the second image takes the first's lesion and labels."""
    by_patient: dict[str, list[_Row]] = {}
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


def _sample_real_rows(
    rng: random.Random, metadata_dir: Path, n_train: int, n_test: int, n_dups: int
) -> tuple[list[_Row], list[_Row], list[tuple[str, str]]]:
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
        _Row(
            r.image_name, r.patient_id, r.lesion_id, r.sex, r.age_approx,
            r.anatom_site_general_challenge, r.diagnosis, r.benign_malignant, r.target,
        )
        for i, r in enumerate(v2.itertuples(index=False))
        if i in keep
    ]
    test_idx = sorted(rng.sample(range(len(test)), n_test))
    test_rows = [
        _Row(r.image_name, r.patient_id, "", r.sex, r.age_approx,
             r.anatom_site_general_challenge, "", "", "")
        for r in test.iloc[test_idx].itertuples(index=False)
    ]
    for r in test_rows:  # normalise to integers; the writer re-adds ".0" for Kaggle columns
        if r.age_approx:
            r.age_approx = str(int(float(r.age_approx)))
    return train, test_rows, [(str(a), str(b)) for a, b in pairs]


def _csv(header: Sequence[str], rows: Iterable[Sequence[str]], final_newline: bool) -> bytes:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    text = CRLF.join(lines) + (CRLF if final_newline else "")
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# Zips


def _write_zip(
    path: Path,
    members: Iterable[tuple[str, bytes]],
    *,
    compression: str,
    force_zip64: bool,
) -> None:
    method = zipfile.ZIP_STORED if compression == "stored" else zipfile.ZIP_DEFLATED
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=method, compresslevel=1, allowZip64=True) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 5, 26, 12, 0, 0))
            info.compress_type = method
            if method == zipfile.ZIP_DEFLATED:
                # Level 1: fast to build; the attribute's name changed in Python 3.13.
                attr = "compress_level" if hasattr(info, "compress_level") else "_compresslevel"
                setattr(info, attr, 1)
            info.external_attr = (0o100644 << 16) if not name.endswith("/") else (0o40755 << 16)
            if force_zip64:
                with zf.open(info, "w", force_zip64=True) as fh:
                    fh.write(data)
            else:
                zf.writestr(info, data)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# The builder


def build_dataset(
    root: Path,
    *,
    n_train: int = 24,
    n_test: int = 12,
    formats: Sequence[str] = ("jpeg",),
    seed: int = 0,
    metadata_dir: Path | None = None,
    test_columns: str = "isic",
    compression: str = "deflate",
    force_zip64: bool = False,
    extra_entries: bool = True,
    directory_entries: bool = False,
    n_duplicates: int | None = None,
    image_size: int = 16,
    distinct_images: int = 8,
) -> SyntheticDataset:
    """Build a synthetic mirror in ``root`` and a manifest describing exactly its files.

    ``formats``: any of "jpeg", "dicom" (corrected), "dicom-original"; the CSVs are always made.
    ``test_columns``: "isic" (``image,patient,...``, integer ages, the official file) or
    "kaggle" (``image_name,patient_id,...``, ages like ``45.0``, Kaggle's test.csv).
    ``compression``: "deflate" (default: cheap to build, exercises the decompressor) or
    "stored". ``force_zip64``: write every member with ZIP64 extra records, as the real >4 GB
    zips need. ``extra_entries``: put a non-image entry in the test JPEG zip (the real one is
    believed to have some) and a ``__MACOSX`` resource fork in the training JPEG zip.
    ``directory_entries``: add explicit folder entries (``train/``) as many zip tools do.
    """
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown format {f!r}; use {', '.join(FORMATS)}")
    if test_columns not in ("isic", "kaggle"):
        raise ValueError("test_columns must be 'isic' or 'kaggle'")
    if compression not in ("deflate", "stored"):
        raise ValueError("compression must be 'deflate' or 'stored'")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_dups = n_duplicates if n_duplicates is not None else max(1, min(425, n_train // 8))
    if metadata_dir is not None:
        train, test, pairs = _sample_real_rows(rng, Path(metadata_dir), n_train, n_test, n_dups)
    else:
        taken: set[str] = set()
        train = _invent_rows(rng, n_train, taken, test=False, force_blanks=True)
        test = _invent_rows(rng, n_test, taken, test=True, force_blanks=True)
        pairs = _make_duplicates(rng, train, n_dups)
        paired = {n for p in pairs for n in p}
        for r in train[1:]:
            if n_train >= 8 and r.image_name not in paired:
                r.site = ""
                break

    template = official_manifest()
    files: dict[str, Path] = {}

    def write(entry: FileEntry, data: bytes) -> None:
        (root / entry.name).write_bytes(data)
        files[entry.name] = root / entry.name

    gt_rows = [
        [r.image_name, r.patient_id, r.sex, r.age_approx, r.site, r.diagnosis,
         r.benign_malignant, r.target]
        for r in train
    ]
    v2_rows = [
        [r.image_name, r.patient_id, r.lesion_id, r.sex, r.age_approx, r.site, r.diagnosis,
         r.benign_malignant, r.target]
        for r in train
    ]
    if test_columns == "isic":
        test_header = ["image", "patient", "sex", "age_approx", "anatom_site_general"]
        test_rows = [[r.image_name, r.patient_id, r.sex, r.age_approx, r.site] for r in test]
    else:
        test_header = ["image_name", "patient_id", "sex", "age_approx",
                       "anatom_site_general_challenge"]
        test_rows = [
            [r.image_name, r.patient_id, r.sex, f"{r.age_approx}.0" if r.age_approx else "",
             r.site]
            for r in test
        ]
    from isic2020.catalog.metadata import (
        DUPLICATES_COLUMNS,
        GROUND_TRUTH_COLUMNS,
        GROUND_TRUTH_V2_COLUMNS,
    )

    # The reference copy of the ground truth has no final CRLF, other copies do: make both
    # variants so readers are tested against both.
    csv_data = {
        "ground_truth": (_csv(GROUND_TRUTH_COLUMNS, gt_rows, False), len(gt_rows)),
        "ground_truth_v2": (_csv(GROUND_TRUTH_V2_COLUMNS, v2_rows, False), len(v2_rows)),
        "duplicates": (_csv(DUPLICATES_COLUMNS, pairs, True), len(pairs)),
        "test_metadata": (_csv(test_header, test_rows, True), len(test_rows)),
    }

    jpegs = _base_jpegs(distinct_images, image_size, seed) if "jpeg" in formats else []
    pixels = [_pixels(image_size, seed * 1000 + i) for i in range(distinct_images)]
    rows_by_split = {"train": train, "test": test}

    entries: list[FileEntry] = []
    for entry in template.files:
        if entry.kind == "metadata":
            data, count = csv_data[entry.role or ""]
            write(entry, data)
            entries.append(replace(entry, rows=count))
            continue
        if entry.format not in formats:
            continue
        rows = rows_by_split[entry.split]
        folder = ARCHIVE_FOLDERS[(entry.split, entry.format)]

        def members(
            rows: list[_Row] = rows, folder: str = folder, entry: FileEntry = entry
        ) -> Iterable[tuple[str, bytes]]:
            if directory_entries:
                yield folder + "/", b""
            for i, r in enumerate(rows):
                if entry.format == "jpeg":
                    yield (f"{folder}/{r.image_name}.jpg",
                           jpeg_bytes(jpegs[i % len(jpegs)], r.image_name))
                else:
                    yield (
                        f"{folder}/{r.image_name}.dcm",
                        dicom_bytes(
                            r.image_name,
                            patient_id=r.patient_id,
                            sex=r.sex or None,
                            age=r.age_approx or None,
                            site=r.site or None,
                            pixels=pixels[i % len(pixels)],
                            size=image_size,
                            variant=entry.format,
                        ),
                    )
            if extra_entries and entry.format == "jpeg":
                if entry.split == "test":
                    yield f"{folder}/readme.txt", b"ISIC 2020 test images (synthetic)\r\n"
                else:
                    yield f"__MACOSX/{folder}/._{rows[0].image_name}.jpg", b"\x00\x05\x16\x07"

        path = root / entry.name
        _write_zip(path, members(), compression=compression, force_zip64=force_zip64)
        files[entry.name] = path
        entries.append(replace(entry, images=len(rows)))

    final: list[FileEntry] = []
    for entry in entries:
        path = root / entry.name
        size = path.stat().st_size
        final.append(
            replace(
                entry,
                size=size,
                sha256=file_digests(path)["sha256"],
                etag=None,
                published_size=human_size(size),
            )
        )
    manifest_path = root / MANIFEST_NAME
    header = (
        f"# Synthetic ISIC 2020 mirror made by isic2020.synthetic.build_dataset(seed={seed}).\n"
        "# Same names, hosts and fields as the real manifest; sizes and checksums are exact.\n"
    )
    manifest_path.write_text(
        header + manifest_to_toml(Manifest(str(manifest_path), tuple(final))), "utf-8"
    )
    return SyntheticDataset(
        root=root,
        manifest_path=manifest_path,
        train_names=[r.image_name for r in train],
        test_names=[r.image_name for r in test],
        formats=tuple(formats),
        files=files,
    )
