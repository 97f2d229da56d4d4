"""What one training sample is: a key, the verified image bytes, a metadata row, a target.

Every training output (WebDataset tars, Parquet files, the map-style dataset) is built from the
same :class:`Sample` list, so they agree on which images are in, in which order, and what their
metadata says:

* the key is the image name (``ISIC_xxxxxxx``); samples are sorted by it, so the order never
  depends on a directory listing or a CSV's row order;
* the metadata row uses Kaggle's column names (every public notebook uses them), then
  ``lesion_id`` (train; ``None`` with the v1 ground truth only) and ``fold`` when the data
  directory has ``folds.csv`` (``isic2020 folds``); missing values are ``None``, ages are
  whole numbers, so the row is plain JSON;
* the target is ``0``/``1`` for train and ``None`` for test (no labels);
* only images on disk are samples; how many metadata rows had no image is counted, never
  silently dropped;
* the image format is ``jpeg`` (the verified originals) or a resized copy ``jpeg-N...``
  (``DATA/jpeg-N/<split>/``); the bytes are used as they are, never re-encoded.

The image bytes are read only when a sample is written (:func:`read_image`), which checks the
JPEG's start and end markers: a truncated or foreign file is refused by name, not shipped.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from isic2020.catalog.jpeg import (
    EMPTY,
    EOI,
    NO_EOI,
    NO_SOI,
    PADDING_WINDOW,
    SOI,
    jpeg_problem,
    padded_end,
)
from isic2020.catalog.manifest import load_manifest
from isic2020.catalog.metadata import GROUND_TRUTH_COLUMNS, TEST_COLUMNS_KAGGLE
from isic2020.catalog.selection import recorded_subset
from isic2020.catalog.tables import load_test_table, load_train_tables
from isic2020.errors import UsageError, VerificationError
from isic2020.store.layout import Layout

if TYPE_CHECKING:
    import pandas as pd

#: Written by ``isic2020 folds`` at the top of the data directory (commands.folds).
FOLDS_FILENAME = "folds.csv"
#: ``jpeg`` or a resized folder such as ``jpeg-512`` or ``jpeg-512-fit``.
FORMAT_RE = re.compile(r"^jpeg(-[0-9]+(-[a-z0-9]+)*)?$")
TRAIN_ROW = [*GROUND_TRUTH_COLUMNS, "lesion_id"]
TEST_ROW = list(TEST_COLUMNS_KAGGLE)


@dataclass(frozen=True)
class Sample:
    """One image and what is known about it (``size`` from the listing, before reading)."""

    key: str
    path: str
    size: int
    meta: dict[str, Any]
    target: int | None


@dataclass(frozen=True)
class SampleQuery:
    """Which samples: one split of one data directory, optionally a fold or all but one."""

    split: str = "train"
    image_format: str = "jpeg"
    data_dir: str | os.PathLike[str] | None = None
    manifest: str | os.PathLike[str] | None = None
    drop_duplicates: bool = False
    fold: int | None = None
    exclude_fold: int | None = None


@dataclass
class SampleSet:
    """The samples of a query, with what was left out and why."""

    split: str
    folder: Path
    samples: list[Sample]
    rows: int
    missing: int
    has_folds: bool
    columns: list[str] = field(default_factory=list)
    #: The split's rows in the metadata when the data is a subset (``rows`` is the subset's).
    in_metadata: int | None = None


def check_format(image_format: str) -> str:
    if not FORMAT_RE.match(image_format):
        raise UsageError(
            f"unknown image format {image_format!r}",
            "use jpeg (the originals) or a resized folder such as jpeg-512 (`isic2020 resize`)",
        )
    return image_format


def _present(v: Any) -> Any:
    """A cell that is not missing as a JSON value (ints for whole numbers)."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def plain_column(series: pd.Series) -> list[Any]:
    """A pandas column as JSON values: ``None`` for missing, ints for whole numbers (missing
    values found for the whole column at once: ``pd.isna`` per cell was most of the cost)."""
    missing = series.isna().tolist()
    return [None if m else _present(v) for v, m in zip(series.tolist(), missing)]


def read_folds(layout: Layout) -> pd.Series | None:
    """``image_name -> fold`` from ``DATA/folds.csv``, or ``None`` when there is none."""
    import pandas as pd

    path = layout.root / FOLDS_FILENAME
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, dtype={"image_name": "string"})
        folds = pd.to_numeric(df["fold"], errors="raise").astype("int64")
    except (KeyError, ValueError, OSError, pd.errors.ParserError) as exc:
        raise VerificationError(
            f"{path} is not a folds file ({exc})", "delete it and run `isic2020 folds` again"
        ) from None
    return pd.Series(folds.values, index=df["image_name"].values)


def _frame(layout: Layout, q: SampleQuery) -> tuple[pd.DataFrame, list[str]]:
    man = load_manifest(q.manifest)
    if q.split == "train":
        df, pairs, _ = load_train_tables(layout, man)
        if q.drop_duplicates:
            if pairs is None:
                raise VerificationError(
                    f"dropping duplicates needs the duplicates list in {layout.metadata_dir}",
                    f"run `isic2020 fetch --format none --data-dir {layout.root}`",
                )
            df = df[~df["image_name"].isin(set(pairs["image_name_2"]))]
        return df, list(TRAIN_ROW)
    if q.split == "test":
        return load_test_table(layout, man), list(TEST_ROW)
    raise UsageError(f"unknown split {q.split!r}", "use train or test")


def _apply_folds(df: pd.DataFrame, layout: Layout, q: SampleQuery) -> tuple[pd.DataFrame, bool]:
    folds = read_folds(layout) if q.split == "train" else None
    if folds is None:
        if q.fold is not None or q.exclude_fold is not None:
            raise UsageError(
                f"fold= needs {layout.root / FOLDS_FILENAME} (train split only)",
                f"run `isic2020 folds --data-dir {layout.root}` first",
            )
        return df, False
    df = df.assign(fold=df["image_name"].astype(str).map(folds))
    if df["fold"].isna().any():
        raise VerificationError(
            f"{layout.root / FOLDS_FILENAME} has no fold for "
            f"{int(df['fold'].isna().sum())} training images",
            "it belongs to other metadata; run `isic2020 folds` again",
        )
    df["fold"] = df["fold"].astype("int64")
    if q.fold is not None:
        df = df[df["fold"] == q.fold]
    if q.exclude_fold is not None:
        df = df[df["fold"] != q.exclude_fold]
    return df, True


def load_samples(q: SampleQuery) -> SampleSet:
    """The samples of ``q``, sorted by key; images not on disk are counted in ``missing``."""
    check_format(q.image_format)
    layout = Layout.at(q.data_dir)
    df, columns = _frame(layout, q)
    # A subset fetch (--sample/--images/--where): the samples are its images, not the CSV's.
    sel = recorded_subset(layout, q.split, ("jpeg",))
    in_metadata = None
    if sel is not None:
        in_metadata = len(df)
        df = df[df["image_name"].astype(str).isin(set(sel.names))]
    df, has_folds = _apply_folds(df, layout, q)
    if has_folds:
        columns.append("fold")
    folder = layout.images_dir(q.image_format, q.split)
    sizes: dict[str, int] = {}
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(".jpg") and e.is_file():
                    sizes[e.name[:-4]] = e.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        pass
    samples: list[Sample] = []
    missing = 0
    values = [plain_column(df[c]) for c in columns]  # column-wise: a cell-wise isna is slow
    where = str(folder)
    for cells in zip(*values):
        meta = dict(zip(columns, cells))
        key = str(meta["image_name"])
        size = sizes.get(key)
        if size is None:
            missing += 1
            continue
        target = meta.get("target") if q.split == "train" else None
        samples.append(Sample(key, os.path.join(where, f"{key}.jpg"), size, meta, target))
    samples.sort(key=lambda s: s.key)
    return SampleSet(q.split, folder, samples, len(df), missing, has_folds, columns,
                     in_metadata)


def _refuse(sample: Sample, problem: str) -> VerificationError:
    return VerificationError(
        f"{sample.path}: {problem}",
        "delete it and run `isic2020 fetch` (or `isic2020 resize`) again, then run the same "
        "command again (finished shards are kept)",
    )


def _unreadable(sample: Sample, exc: OSError) -> VerificationError:
    return VerificationError(
        f"cannot read {sample.path}: {exc.strerror or exc}",
        "check the data directory (`isic2020 verify`), then run the same command again",
    )


class ChunkSink(Protocol):
    """Where :func:`stream_image` puts an image: a buffer to fill, then hand back."""

    def buffer(self) -> bytearray | memoryview: ...

    def write_buffer(self, buf: bytearray | memoryview, n: int) -> None: ...


def stream_image(sample: Sample, out: ChunkSink) -> None:
    """Pass the image's bytes to ``out`` a buffer at a time, checking them as
    :func:`read_image` does (``out`` may have been given some before a refusal: the caller
    writes into a temporary it then drops).

    A reused buffer keeps the copy in the CPU's cache (a fresh ``bytes`` per image costs a page
    fault per 4 KiB), which is most of the difference to ``tar``'s speed.
    """
    try:
        fd = os.open(sample.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _unreadable(sample, exc) from None
    try:
        size = os.fstat(fd).st_size
        if size != sample.size:
            raise _refuse(sample, f"changed since it was listed ({sample.size} bytes then, "
                          f"{size} now)")
        if size == 0:
            raise _refuse(sample, EMPTY)
        done, last = 0, b""
        while done < size:
            buf = out.buffer()
            view = memoryview(buf)
            k = os.readv(fd, [view[: min(len(buf), size - done)]])
            if k == 0:
                raise _refuse(sample, f"shrank while being read ({done} of {size} bytes)")
            if done == 0 and (size < 4 or bytes(view[:2]) != SOI):
                raise _refuse(sample, NO_SOI)
            last = bytes(view[max(0, k - 2) : k])
            del view
            out.write_buffer(buf, k)
            done += k
        if last != EOI and not padded_end(
                os.pread(fd, min(size, PADDING_WINDOW), max(0, size - PADDING_WINDOW))):
            raise _refuse(sample, NO_EOI)
    except OSError as exc:
        raise _unreadable(sample, exc) from None
    finally:
        os.close(fd)


def read_image(sample: Sample) -> bytes:
    """The image's bytes, refused (exit 1, by name) if damaged or changed since listed."""
    try:
        with open(sample.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _unreadable(sample, exc) from None
    problem = jpeg_problem(data)
    if problem is None and len(data) != sample.size:
        problem = f"changed since it was listed ({sample.size} bytes then, {len(data)} now)"
    if problem is not None:
        raise _refuse(sample, problem)
    return data
