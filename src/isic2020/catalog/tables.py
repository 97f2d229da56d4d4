"""The metadata as one typed pandas DataFrame: what every user builds first, done once.

``load_metadata`` reads the official CSVs from the fixed layout (``DATA/metadata/``), gives both
splits Kaggle's column names (every public notebook uses them), proper dtypes (nullable integer
ages, categorical sex/site/diagnosis) and a ``path`` column to each image in the chosen format.
The training split prefers the v2 ground truth (it adds ``lesion_id``) and falls back to v1.

``path`` is ``<NA>`` for images that are not on disk, and an :class:`ImagesMissingWarning`
says how many are missing and how to fetch them: a silently half-filled ``path`` column is the
kind of thing that only shows up as a crash an hour into training.

One reader: the CSVs are read and refused by ``catalog.metadata`` (pandas-free tables, the
stdlib ``csv`` module); pandas only turns a checked table into a frame here
(:func:`metadata_frame`, then the dtypes), so a caller that needs no frame
(:func:`load_metadata_table`: ``fetch --sample``/``--images``) never imports it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from isic2020.catalog.manifest import FORMATS, SPLITS, Manifest, load_manifest
from isic2020.catalog.metadata import (
    GROUND_TRUTH_COLUMNS,
    TEST_COLUMNS_KAGGLE,
    read_duplicates_table,
    read_metadata_table,
    read_test_table,
    read_train_table,
)
from isic2020.catalog.table import Table
from isic2020.errors import NothingThere, UsageError, VerificationError
from isic2020.store.fsutil import atomic_file, output_error
from isic2020.store.layout import Layout

if TYPE_CHECKING:
    import pandas as pd

#: Image file suffix per format in the fixed layout.
SUFFIX = {"jpeg": ".jpg", "dicom": ".dcm", "dicom-original": ".dcm"}

#: Known categories, so train and test share one category order (stable codes for models).
#: Values not listed here are kept (appended), never turned into NaN.
SEX_CATEGORIES = ["female", "male"]
SITE_CATEGORIES = [
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
]
BENIGN_MALIGNANT_CATEGORIES = ["benign", "malignant"]

#: Column order of the returned frames (Kaggle's order; ``lesion_id`` last as in the issue).
TRAIN_COLUMNS = [*GROUND_TRUTH_COLUMNS, "lesion_id"]
TEST_COLUMNS = list(TEST_COLUMNS_KAGGLE)


class ImagesMissingWarning(UserWarning):
    """Some images of the chosen format are not on disk, so their ``path`` is ``<NA>``."""


@dataclass(frozen=True)
class MetadataFiles:
    """The metadata CSVs found for a data directory (``None`` = not on disk)."""

    ground_truth: Path | None
    ground_truth_v2: Path | None
    duplicates: Path | None
    test_metadata: Path | None

    @property
    def train(self) -> Path | None:
        """v2 when present (it has ``lesion_id``), else v1."""
        return self.ground_truth_v2 or self.ground_truth


def fetch_hint(layout: Layout) -> str:
    return (
        f"run `isic2020 fetch --format none --data-dir {layout.root}` first "
        "(it downloads only the metadata CSVs, a few MB)"
    )


def find_metadata_files(layout: Layout, manifest: Manifest) -> MetadataFiles:
    """Locate the CSVs by their manifest names (never hard-coded: the manifest is the truth)."""

    def at(role: str) -> Path | None:
        entry = manifest.role(role)
        if entry is None:
            return None
        p = layout.final_path(entry)
        return p if p.is_file() else None

    return MetadataFiles(
        ground_truth=at("ground_truth"),
        ground_truth_v2=at("ground_truth_v2"),
        duplicates=at("duplicates"),
        test_metadata=at("test_metadata"),
    )


def metadata_frame(table: Table) -> pd.DataFrame:
    """A table as a frame of pandas strings (blanks ``<NA>``, a ``RangeIndex``): what
    ``pd.read_csv(dtype="string", keep_default_na=False, na_values=[""])`` then ``str.strip``
    gave when ``load_metadata`` read the CSVs with pandas."""
    import pandas as pd

    return pd.DataFrame({c: pd.array(list(cells), dtype="string")
                         for c, cells in zip(table.columns, table.cells)})


def read_metadata_frame(path: Path, role: str) -> pd.DataFrame:
    """One official CSV as a frame of strings (:func:`metadata_frame` of
    :func:`~isic2020.catalog.metadata.read_metadata_table`: the same names and errors)."""
    return metadata_frame(read_metadata_table(path, role))


def _category(values: pd.Series, known: list[str]) -> pd.Series:
    import pandas as pd

    extra = sorted(set(values.dropna().unique()) - set(known))
    return values.astype(pd.CategoricalDtype([*known, *extra]))


def _ages(values: pd.Series) -> pd.Series:
    """Ages as nullable integers (checked whole numbers: the official files write ``45``,
    Kaggle's ``45.0``)."""
    import pandas as pd

    return pd.to_numeric(values, errors="coerce").round().astype("Int64")


def typed_train(table: Table) -> pd.DataFrame:
    """A checked training table (:func:`~isic2020.catalog.metadata.read_train_table`) as a typed
    frame in :data:`TRAIN_COLUMNS` order."""
    import pandas as pd

    df = metadata_frame(table)
    if "lesion_id" not in df.columns:
        df["lesion_id"] = pd.Series(pd.NA, index=df.index, dtype="string")
    return pd.DataFrame(
        {
            "image_name": df["image_name"].astype("string"),
            "patient_id": df["patient_id"].astype("string"),
            "sex": _category(df["sex"], SEX_CATEGORIES),
            "age_approx": _ages(df["age_approx"]),
            "anatom_site_general_challenge": _category(
                df["anatom_site_general_challenge"], SITE_CATEGORIES
            ),
            "diagnosis": df["diagnosis"].astype("category"),
            "benign_malignant": _category(df["benign_malignant"], BENIGN_MALIGNANT_CATEGORIES),
            "target": pd.to_numeric(df["target"], errors="coerce").astype("int64"),
            "lesion_id": df["lesion_id"].astype("string"),
        }
    ).reset_index(drop=True)


def typed_test(table: Table) -> pd.DataFrame:
    """A checked test table (:func:`~isic2020.catalog.metadata.read_test_table`) as a typed
    frame in :data:`TEST_COLUMNS` order."""
    import pandas as pd

    df = metadata_frame(table)
    return pd.DataFrame(
        {
            "image_name": df["image_name"].astype("string"),
            "patient_id": df["patient_id"].astype("string"),
            "sex": _category(df["sex"], SEX_CATEGORIES),
            "age_approx": _ages(df["age_approx"]),
            "anatom_site_general_challenge": _category(
                df["anatom_site_general_challenge"], SITE_CATEGORIES
            ),
        }
    ).reset_index(drop=True)


def read_train(path: Path, role: str) -> pd.DataFrame:
    """One training ground truth (v1 or v2) as a typed frame in :data:`TRAIN_COLUMNS` order."""
    return typed_train(read_train_table(path, role))


def read_test(path: Path) -> pd.DataFrame:
    """The test metadata (official ISIC or Kaggle column names) in Kaggle's names and dtypes."""
    return typed_test(read_test_table(path))


def read_duplicates(path: Path, known: Iterable[object] | None = None) -> pd.DataFrame:
    """The duplicate pairs; with ``known`` (the training image names) every name must be in it."""
    return metadata_frame(read_duplicates_table(path, None if known is None else set(known)))


def _train_source(layout: Layout, manifest: Manifest) -> tuple[MetadataFiles, Path, str]:
    """The metadata files, the training CSV to read (v2 when present) and its role."""
    files = find_metadata_files(layout, manifest)
    if files.train is None:
        names = [e.name for r in ("ground_truth_v2", "ground_truth") if (e := manifest.role(r))]
        raise NothingThere(
            f"no training metadata in {layout.metadata_dir} (looked for {' or '.join(names)})",
            fetch_hint(layout),
        )
    return files, files.train, "ground_truth_v2" if files.ground_truth_v2 else "ground_truth"


def _test_source(layout: Layout, manifest: Manifest) -> Path:
    files = find_metadata_files(layout, manifest)
    if files.test_metadata is None:
        entry = manifest.role("test_metadata")
        raise NothingThere(
            f"no test metadata in {layout.metadata_dir}"
            + (f" (looked for {entry.name})" if entry else ""),
            fetch_hint(layout),
        )
    return files.test_metadata


def load_metadata_table(
    split: str, data_dir: str | os.PathLike[str] | None, manifest: Manifest
) -> Table:
    """The checked metadata of one split as a pandas-free :class:`Table` (the CSV's columns,
    no ``path``): what ``--sample`` and ``--images`` choose from. The same files and the same
    refusals as :func:`load_metadata` (the training split's duplicates list included)."""
    layout = Layout.at(data_dir)
    if split != "train":
        return read_test_table(_test_source(layout, manifest))
    files, path, role = _train_source(layout, manifest)
    table = read_train_table(path, role)
    if files.duplicates:
        read_duplicates_table(files.duplicates, set(table["image_name"]))
    return table


def selection_metadata(
    split: str, data_dir: str | os.PathLike[str] | None, manifest: Manifest,
    where: str | None = None,
) -> Table | pd.DataFrame:
    """What a selection of ``split`` is chosen from: for a ``--where`` query (pandas) the
    typed frame of :func:`load_metadata`, else the pandas-free :class:`Table` (``--sample``
    and ``--images`` need only names and targets; ~96 MB of RSS less). The same checks and
    refusals either way."""
    if where and where.strip():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no ``path`` column: no missing-images warning
            return load_metadata(split, data_dir, image_format=None, manifest=manifest.path)
    return load_metadata_table(split, data_dir, manifest)


def load_train_tables(
    layout: Layout, manifest: Manifest
) -> tuple[pd.DataFrame, pd.DataFrame | None, MetadataFiles]:
    """Training frame and duplicate pairs (``None`` if that CSV is absent), or one clear error."""
    files, path, role = _train_source(layout, manifest)
    train = read_train(path, role)
    pairs = read_duplicates(files.duplicates, train["image_name"]) if files.duplicates else None
    return train, pairs, files


def load_test_table(layout: Layout, manifest: Manifest) -> pd.DataFrame:
    return read_test(_test_source(layout, manifest))


def image_paths(
    names: pd.Series, layout: Layout, image_format: str, split: str
) -> tuple[pd.Series, int]:
    """``path`` for each name whose file exists (else ``<NA>``) and the number missing.

    One directory listing instead of one ``stat`` per image: 33k stats on a network file system
    take seconds, a listing milliseconds.
    """
    import pandas as pd

    folder = layout.images_dir(image_format, split)
    suffix = SUFFIX[image_format]
    try:
        present = {e.name for e in os.scandir(folder) if e.name.endswith(suffix)}
    except (FileNotFoundError, NotADirectoryError):
        present = set()
    files = names.astype(str) + suffix
    has = files.isin(present)
    prefix = str(folder) + os.sep
    paths = (prefix + files).where(has, pd.NA).astype("string")
    return paths, int((~has).sum())


def load_metadata(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    image_format: str | None = "jpeg",
    drop_duplicates: bool = False,
    manifest: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """The metadata of one split as a typed DataFrame with Kaggle's column names.

    Columns: ``image_name, patient_id, sex, age_approx, anatom_site_general_challenge`` (both
    splits), then ``diagnosis, benign_malignant, target, lesion_id`` (train; ``lesion_id`` is
    ``<NA>`` if only the v1 ground truth is on disk), then ``path`` (absolute path of the image
    in ``image_format``; ``<NA>`` where the image is not on disk, with an
    :class:`ImagesMissingWarning`). ``image_format=None`` or ``"none"`` leaves out ``path``.

    Dtypes: strings for ids, ``Int64`` (nullable) ages, categorical sex, site, diagnosis and
    benign_malignant (fixed category order, shared by both splits), ``int64`` target.

    ``drop_duplicates=True`` drops ``image_name_2`` of each of the official duplicate pairs
    (keeping ``image_name_1``): 33,126 -> 32,701 training images. The duplicates list covers
    the training split only, so for ``split="test"`` it changes nothing.

    Raises :class:`~isic2020.errors.VerificationError` if the CSVs are missing (run
    ``isic2020 fetch --format none``) or malformed.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    fmt = None if image_format in (None, "none") else image_format
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(
            f"unknown image format {image_format!r}", f"use one of {', '.join(FORMATS)} or None"
        )
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    if split == "train":
        df, pairs, files = load_train_tables(layout, man)
        if drop_duplicates:
            if pairs is None:
                entry = man.role("duplicates")
                raise VerificationError(
                    f"drop_duplicates needs {entry.name if entry else 'the duplicates list'} "
                    f"in {layout.metadata_dir}",
                    fetch_hint(layout),
                )
            df = df[~df["image_name"].isin(set(pairs["image_name_2"]))].reset_index(drop=True)
    else:
        df = load_test_table(layout, man)
    if fmt is not None:
        df["path"], missing = image_paths(df["image_name"], layout, fmt, split)
        if missing:
            warnings.warn(
                f"{missing} of {len(df)} {split} images are not in "
                f"{layout.images_dir(fmt, split)}: their `path` is <NA>; run "
                f"`isic2020 fetch --split {split} --format {fmt}` to get them",
                ImagesMissingWarning,
                stacklevel=2,
            )
    return df


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``path`` atomically (:func:`isic2020.store.fsutil.atomic_file`): a reader never sees
    half a file, and the file gets the umask's mode like any other."""
    try:
        with atomic_file(path) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            df.to_csv(text, index=False, lineterminator="\n")
            text.flush()
            text.detach()  # ``atomic_file`` fsyncs and closes ``fh`` itself
    except OSError as exc:
        raise output_error(exc, path) from None
