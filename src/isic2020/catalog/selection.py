"""Choosing a subset of images from the metadata: ``--images FILE``, ``--where``, ``--sample``.

Why it is built this way:

* **Over the metadata, not the archive.** Users think in labels ("malignant, female, torso"),
  which only the CSVs hold; the frame is
  :func:`isic2020.catalog.tables.load_metadata`'s (Kaggle column names,
  typed), so a ``--where`` that works in a notebook works here. Without ``--where`` only the
  names and ``target`` are used, so ``--sample`` and ``--images`` choose from the pandas-free
  :func:`~isic2020.catalog.tables.load_metadata_table` (the same names, ~96 MB of RSS less).
* **One order of operations.** ``where`` filters the metadata, the images file intersects that,
  ``sample`` draws from what is left. So ``--where "target == 1" --sample 50`` means "50 of the
  malignant ones", the only reading that is not a surprise.
* **Deterministic everywhere.** The sample is stratified by ``target`` (the test split has no
  target: a plain sample) and ordered by a hash of the seed and the image name, not by a
  library's random generator: the same seed gives the same images on every machine, pandas and
  numpy version, and whatever the CSV's row order. Each stratum gets its proportional share
  (largest remainder), and at least one image when ``N`` allows, so a 20-image sample of a
  2%-malignant split still holds a melanoma.
* **Errors a user can act on.** Unknown or malformed names in an images file are listed (the
  first few, with their line numbers); a bad ``--where`` gives pandas' message on one line.
* **Recorded.** A :class:`Selection` (names plus how they were chosen) is saved by the caller in
  the state folder, so ``verify`` can check a subset against what was asked for and say so.
* **Selections only grow, until the whole split supersedes them.** A later subset adds its
  images to the recorded one; a fetch (or ``extract``) of the whole split removes the record
  (:func:`supersede_selection`), so the CSV is what the folder is checked against again; a
  subset fetched into a folder that already holds the whole split records nothing
  (:func:`subset_grows`). ``fetch --reset-selection`` replaces the record instead.
* **Downstream sees what is present.** ``export`` and ``folds`` of a subset work on the
  recorded selection (:func:`recorded_subset`), not on every row of the CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `fetch --direct` imports this module, not pandas
    import pandas as pd

from isic2020.catalog.table import Table
from isic2020.errors import UsageError
from isic2020.report import plural
from isic2020.store.fsutil import remove_file
from isic2020.store.layout import Layout
from isic2020.store.records import atomic_write_json, read_json

_NAME_RE = re.compile(r"^ISIC_[0-9]{7}$")
_SUFFIX_RE = re.compile(r"\.(jpe?g|dcm)$", re.IGNORECASE)
SELECTION_VERSION = 1
SHOW = 5
#: The image folders a selection can be recorded for (``DATA/<format>/<split>/``).
IMAGE_FORMATS = ("jpeg", "dicom", "dicom-original")


@dataclass
class Selection:
    """Which images a subset fetch chose, and how (enough to repeat and to check it)."""

    split: str
    names: list[str]
    images_file: str | None = None
    sample: int | None = None
    seed: int = 0
    where: str | None = None
    format: str | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def fingerprint(self) -> str:
        """sha256 of the sorted names: two selections with the same images compare equal."""
        return hashlib.sha256("\n".join(sorted(self.names)).encode()).hexdigest()

    def describe(self) -> str:
        """``--where "..." --sample 500 --seed 1``: how this subset was made, for messages."""
        parts = []
        if self.where:
            parts.append(f"--where {json.dumps(self.where)}")
        if self.images_file:
            parts.append(f"--images {self.images_file}")
        if self.sample is not None:
            parts.append(f"--sample {self.sample} --seed {self.seed}")
        return " ".join(parts) or "all images"

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SELECTION_VERSION,
            "split": self.split,
            "format": self.format,
            "images_file": self.images_file,
            "sample": self.sample,
            "seed": self.seed,
            "where": self.where,
            "created_at": self.created_at,
            "count": len(self.names),
            "fingerprint": self.fingerprint,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Selection:
        if not isinstance(doc, dict) or doc.get("version") != SELECTION_VERSION:
            raise ValueError("not a selection record of this version")
        names = [str(n) for n in doc["names"]]
        sel = cls(
            split=str(doc["split"]),
            names=names,
            images_file=doc.get("images_file"),
            sample=None if doc.get("sample") is None else int(doc["sample"]),
            seed=int(doc.get("seed", 0)),
            where=doc.get("where"),
            format=doc.get("format"),
            created_at=float(doc.get("created_at", 0.0)),
        )
        if doc.get("fingerprint") not in (None, sel.fingerprint):
            raise ValueError("selection record does not match its fingerprint")
        return sel


def selection_path(state_dir: Path, split: str, fmt: str) -> Path:
    """``DATA/.isic2020/selections/<split>-<format>.json``: the subset of one image folder."""
    return Path(state_dir) / "selections" / f"{split}-{fmt}.json"


def save_selection(path: Path, selection: Selection) -> None:
    atomic_write_json(path, selection.to_dict())


def load_selection(path: Path) -> Selection | None:
    """The recorded selection, or None when there is none (or it is unreadable)."""
    doc = read_json(path)
    if doc is None:
        return None
    try:
        return Selection.from_dict(doc)
    except (ValueError, KeyError, TypeError):
        return None


def _has_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.startswith("ISIC_") for e in it)
    except OSError:
        return False


def supersede_selection(layout: Layout, split: str, fmt: str) -> bool:
    """The whole split of ``fmt`` is being put in place: forget the subset recorded for it
    (``verify`` checks the folder against the CSV again). True when there was one."""
    path = selection_path(layout.state_dir, split, fmt)
    if not os.path.lexists(path):
        return False
    remove_file(path)
    return True


def subset_grows(layout: Layout, split: str, fmt: str) -> bool:
    """Whether a subset fetched into ``DATA/<fmt>/<split>/`` should be recorded: not when
    the folder holds images but no selection is recorded (the whole split was fetched: it stays
    what is expected, and the subset's images are already among it)."""
    if selection_path(layout.state_dir, split, fmt).exists():
        return True
    return not _has_images(layout.images_dir(fmt, split))


def recorded_subset(
    layout: Layout, split: str, formats: Sequence[str] = IMAGE_FORMATS
) -> Selection | None:
    """The images of ``split`` that are present when the data is a subset, else None.

    The split is a subset when every folder of ``formats`` that holds images has a recorded
    selection (the names are their union); None when one such folder holds the whole split, or
    none holds images (then the metadata alone is the data: ``folds`` of ``--format none``).
    """
    chosen: Selection | None = None
    for fmt in formats:
        if not _has_images(layout.images_dir(fmt, split)):
            continue
        sel = load_selection(selection_path(layout.state_dir, split, fmt))
        if sel is None:
            return None
        if chosen is None:
            chosen = sel
        else:
            chosen.names = sorted(set(chosen.names) | set(sel.names))
    return chosen


# --------------------------------------------------------------------------------------------
# The images file


def _clean_name(raw: str) -> str:
    """``train/ISIC_0000000.jpg`` or ``ISIC_0000000`` -> ``ISIC_0000000`` (spaces, BOM, quotes)."""
    s = raw.strip().strip("\ufeff").strip().strip('"').strip("'").strip()
    s = re.split(r"[\\/]", s)[-1]
    return _SUFFIX_RE.sub("", s)


def read_images_file(path: str | Path) -> list[str]:
    """Image names from a file: one per line (blank lines, ``#`` comments ignored), or a CSV
    with an ``image_name`` column (any other columns are ignored). Order kept, duplicates
    dropped; a malformed name is a UsageError listing the first few with line numbers."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"images file {p} does not exist", "give an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read images file {p}: {exc}", "give a UTF-8 text file") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [c.strip().strip('"') for c in next(csv.reader([first]))] if first else []
    entries: list[tuple[int, str]] = []
    if "image_name" in header:
        col = header.index("image_name")
        start = lines.index(first) + 1
        reader = csv.reader(io.StringIO("\n".join(lines[start:])))
        for k, row in enumerate(reader, start=start + 1):
            if row and len(row) > col and row[col].strip():
                entries.append((k, row[col]))
    else:
        for k, ln in enumerate(lines, start=1):
            s = ln.split("#", 1)[0].strip()
            if s:
                entries.append((k, s.split(",")[0]))
    names: list[str] = []
    seen: set[str] = set()
    bad: list[str] = []
    for k, raw in entries:
        name = _clean_name(raw)
        if not _NAME_RE.match(name):
            bad.append(f"line {k}: {raw.strip()!r}")
            continue
        if name not in seen:
            seen.add(name)
            names.append(name)
    if bad:
        raise UsageError(
            f"{p}: {plural(len(bad), 'entry', 'entries')} "
            f"{'is not an image name' if len(bad) == 1 else 'are not image names'} like "
            "ISIC_0000000 "
            f"({', '.join(bad[:SHOW])}{', ...' if len(bad) > SHOW else ''})",
            "one name per line, or a CSV with an image_name column",
        )
    if not names:
        raise UsageError(f"{p} names no images", "one name per line, or a CSV with image_name")
    return names


# --------------------------------------------------------------------------------------------
# Sampling


def _rank(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{name}".encode()).digest()


def _allocate(n: int, sizes: Sequence[int]) -> list[int]:
    """Proportional shares of ``n`` (largest remainder), each stratum >= 1 when ``n`` allows."""
    total = sum(sizes)
    if n >= total:
        return list(sizes)
    exact = [n * s / total for s in sizes]
    take = [min(s, int(e)) for s, e in zip(sizes, exact)]
    if n >= sum(1 for s in sizes if s):
        take = [max(t, 1 if s else 0) for t, s in zip(take, sizes)]
    # Hand out what is left by largest remainder; take back from the largest shares if the
    # minimum of one pushed us over.
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    while sum(take) < n:
        for i in order:
            if sum(take) < n and take[i] < sizes[i]:
                take[i] += 1
    while sum(take) > n:
        pool = [j for j in range(len(sizes)) if take[j] > 1] or [
            j for j in range(len(sizes)) if take[j] > 0
        ]
        i = max(pool, key=lambda j: (take[j] - exact[j], take[j], -j))
        take[i] -= 1
    return take


def _names_and_strata(meta: pd.DataFrame | Table) -> tuple[list[str], list[str]]:
    """The image names of ``load_metadata``'s frame or ``load_metadata_table``'s table, and
    the stratum of each (its ``target`` as text: ``"0"``, ``"1"``; ``"all"`` without one)."""
    if isinstance(meta, Table):
        names = ["<NA>" if n is None else n for n in meta["image_name"]]
        if "target" not in meta:
            return names, ["all"] * len(names)
        return names, ["<NA>" if t is None else t for t in meta["target"]]
    names = meta["image_name"].astype(str).tolist()
    if "target" not in meta.columns:
        return names, ["all"] * len(names)
    return names, meta["target"].astype("string").fillna("<NA>").tolist()


def _sample(names: list[str], keys: list[str], n: int, seed: int) -> list[str]:
    if n <= 0:
        raise UsageError(f"--sample must be a positive number, not {n}")
    groups = sorted(set(keys))
    members = [[s for s, k in zip(names, keys) if k == g] for g in groups]
    shares = _allocate(n, [len(m) for m in members])
    chosen: set[str] = set()
    for group, k in zip(members, shares):
        chosen.update(sorted(group, key=lambda s: _rank(seed, s))[:k])
    return [s for s in names if s in chosen]


def stratified_sample(meta: pd.DataFrame | Table, n: int, seed: int = 0) -> list[str]:
    """``n`` image names stratified by ``target`` when the metadata has one; metadata order.
    The same names from the frame and from the table of the same CSVs."""
    return _sample(*_names_and_strata(meta), n, seed)


# --------------------------------------------------------------------------------------------
# The whole selection


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _bad_query(where: str, exc: BaseException, columns: Iterable[object]) -> UsageError:
    return UsageError(
        f"--where {where!r} is not a valid query: {_one_line(exc)}",
        "use pandas query syntax over the metadata columns, e.g. "
        "\"target == 1 and sex == 'female'\"; columns: " + ", ".join(map(str, columns)),
    )


def check_where(where: str, split: str) -> None:
    """Refuse a ``--where`` that no metadata can satisfy (a syntax error, a name that is not a
    column) before anything is downloaded: it is tried on an empty frame with the split's
    columns. Whatever depends on the values (types, comparisons) is left to the real frame."""
    import pandas as pd
    from pandas.errors import UndefinedVariableError

    from isic2020.catalog.tables import TEST_COLUMNS, TRAIN_COLUMNS

    columns = TEST_COLUMNS if split == "test" else TRAIN_COLUMNS
    empty = pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    try:
        empty.query(where)
    except (SyntaxError, UndefinedVariableError) as exc:
        raise _bad_query(where, exc, columns) from None
    except Exception:  # noqa: BLE001, S110 - depends on the values: the real frame decides
        pass


def _query(df: pd.DataFrame, where: str) -> pd.DataFrame:
    import pandas as pd

    try:
        out = df.query(where)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds; all are the user's input
        raise _bad_query(where, exc, df.columns) from None
    if not isinstance(out, pd.DataFrame):
        raise UsageError(f"--where {where!r} does not select rows", "give a boolean condition")
    return out


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:SHOW])
    return shown + (f" (+{len(items) - SHOW} more)" if len(items) > SHOW else "")


def select_images(
    df: pd.DataFrame | Table,
    *,
    images_file: str | Path | None = None,
    sample: int | None = None,
    seed: int = 0,
    where: str | None = None,
) -> list[str]:
    """The image names chosen from the metadata ``df``, in its order.

    ``where`` (a ``DataFrame.query`` expression) first, then the names of ``images_file``
    (each must be in ``df``: an unknown name is a UsageError listing the first few), then a
    stratified ``sample`` of ``N`` with ``seed``. With none of them: every image. An empty
    result is a UsageError saying which step emptied it.

    ``df`` is :func:`~isic2020.catalog.tables.load_metadata`'s frame, or, when there is no
    ``where`` (only the names and ``target`` are used), the pandas-free
    :func:`~isic2020.catalog.tables.load_metadata_table` of the same CSVs: the same names.
    """
    if "image_name" not in df.columns:
        raise UsageError("the metadata has no image_name column", "load it with load_metadata")
    frame = df
    steps: list[str] = []
    if where is not None and where.strip():
        if isinstance(df, Table):
            raise TypeError("--where needs load_metadata's frame, not a Table")
        frame = _query(df, where)
        steps.append(f"--where {where!r}")
        if frame.empty:
            raise UsageError(f"--where {where!r} matches no image", "loosen the condition")
    names, keys = _names_and_strata(frame)
    if images_file is not None:
        wanted = read_images_file(images_file)
        known = set(names) if frame is df else set(_names_and_strata(df)[0])
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise UsageError(
                f"{images_file}: {len(unknown)} of {len(wanted)} names are not in the metadata "
                f"({_listing(unknown)})",
                "check the split (--split train or test) and the names",
            )
        keep = set(wanted)
        kept = [(n, k) for n, k in zip(names, keys) if n in keep]
        names, keys = [n for n, _ in kept], [k for _, k in kept]
        steps.append(f"--images {images_file}")
        if not names:
            raise UsageError(
                f"no image of {images_file} is left after {' then '.join(steps[:-1])}",
                "check the file against the condition",
            )
    if sample is not None:
        return _sample(names, keys, sample, seed)
    return names


def make_selection(
    df: pd.DataFrame | Table,
    split: str,
    *,
    images_file: str | Path | None = None,
    sample: int | None = None,
    seed: int = 0,
    where: str | None = None,
    fmt: str | None = None,
) -> Selection:
    """:func:`select_images` plus the record of how it was made."""
    names = select_images(df, images_file=images_file, sample=sample, seed=seed, where=where)
    return Selection(
        split=split,
        names=names,
        images_file=None if images_file is None else str(images_file),
        sample=sample,
        seed=seed,
        where=where,
        format=fmt,
    )
