"""The synthetic mirror's builder: CSVs, zips and a manifest describing exactly its files.

See the package docstring (:mod:`isic2020.synthetic`) for what "like the real thing" means.
Zips are written to a temporary name and renamed, so a mirror folder never holds half a zip.
"""

from __future__ import annotations

import random
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from isic2020.catalog.manifest import FORMATS, FileEntry, Manifest, load_manifest, manifest_to_toml
from isic2020.report import human_size
from isic2020.synthetic.images import (
    PHOTO_SIZES,
    base_jpegs,
    dicom_bytes,
    jpeg_bytes,
    photo_jpegs,
    pixels,
)
from isic2020.synthetic.rows import (
    Row,
    csv_bytes,
    invent_rows,
    make_duplicates,
    sample_real_rows,
)
from isic2020.transfer.digests import file_digests

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
MANIFEST_NAME = "isic2020-synthetic.toml"


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
    return load_manifest(Path(__file__).resolve().parents[3] / "manifests" / "isic2020.toml")

def write_zip(
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
    photo: bool = False,
    photo_sizes: Sequence[tuple[int, int]] = PHOTO_SIZES,
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
    ``photo``: the JPEGs are photo-like, of ``photo_sizes`` in turn (default
    :data:`PHOTO_SIZES`, the camera sizes of ISIC 2020; ``image_size`` then applies to DICOMs
    only), for resize tests and benchmarks (``compression="stored"`` saves deflating them).
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
        train, test, pairs = sample_real_rows(rng, Path(metadata_dir), n_train, n_test, n_dups)
    else:
        taken: set[str] = set()
        train = invent_rows(rng, n_train, taken, test=False, force_blanks=True)
        test = invent_rows(rng, n_test, taken, test=True, force_blanks=True)
        pairs = make_duplicates(rng, train, n_dups)
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
        "ground_truth": (csv_bytes(GROUND_TRUTH_COLUMNS, gt_rows, False), len(gt_rows)),
        "ground_truth_v2": (csv_bytes(GROUND_TRUTH_V2_COLUMNS, v2_rows, False), len(v2_rows)),
        "duplicates": (csv_bytes(DUPLICATES_COLUMNS, pairs, True), len(pairs)),
        "test_metadata": (csv_bytes(test_header, test_rows, True), len(test_rows)),
    }

    if "jpeg" not in formats:
        jpegs: list[bytes] = []
    elif photo:
        jpegs = photo_jpegs(distinct_images, seed, photo_sizes)
    else:
        jpegs = base_jpegs(distinct_images, image_size, seed)
    dicom_pixels = [pixels(image_size, seed * 1000 + i) for i in range(distinct_images)]
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
            rows: list[Row] = rows, folder: str = folder, entry: FileEntry = entry
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
                            pixels=dicom_pixels[i % len(dicom_pixels)],
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
        write_zip(path, members(), compression=compression, force_zip64=force_zip64)
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
