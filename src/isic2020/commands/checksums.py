"""``isic2020 checksums``: a SHA256SUMS of every image, the per-image list nobody publishes.

A lab runs it once on a verified copy; every other machine runs ``isic2020 verify --against``
(or plain ``sha256sum -c`` from DATA) with it. The format is coreutils' own (``<hex>  <path>``,
paths relative to DATA, sorted by path, so two lists of the same data are byte-identical and
diff cleanly); :mod:`isic2020.checks.against` reads exactly what this writes.

Only images are listed (``ISIC_xxxxxxx.jpg`` / ``.dcm`` in the layout's image folders): the
metadata CSVs and archives are pinned by the manifest already (``isic2020 pin``). The file is
written atomically (:func:`isic2020.store.fsutil.atomic_file`): a list is whole or absent,
never the first half of one. Hashing is streaming and threaded
(:func:`isic2020.checks.against.hash_files`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import EXTENSIONS, FORMATS, expand_split
from isic2020.checks.against import IMAGE_RE, format_line, hash_files
from isic2020.errors import DiskError, UsageError
from isic2020.report import human_size, plural, progress_bar, readable_repr
from isic2020.store.fsutil import atomic_file
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock

FORMAT_CHOICES = (*FORMATS, "all")


@dataclass
class Sum:
    path: str  # relative to DATA, with forward slashes
    sha256: str
    size: int


@readable_repr
@dataclass
class ChecksumsReport:
    data_dir: str
    split: str
    format: str
    out: str | None
    files: list[Sum] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def bytes_hashed(self) -> int:
        return sum(s.size for s in self.files)

    def text(self) -> str:
        """The SHA256SUMS content (what ``sha256sum -c`` reads)."""
        return "".join(format_line(s.sha256, s.path) for s in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "out": self.out,
            "images": len(self.files),
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "files": [{"path": s.path, "sha256": s.sha256, "size": s.size} for s in self.files],
        }

    def summary_lines(self) -> list[str]:
        where = self.out or "stdout"
        return [f"{plural(len(self.files), 'image')} ({human_size(self.bytes_hashed)}) hashed "
                f"in {self.seconds:.1f} s; SHA256SUMS written to {where} "
                f"(check a copy with `isic2020 verify --against` or `sha256sum -c` from "
                f"{self.data_dir})"]


def image_paths(layout: Layout, split: str, fmt: str) -> list[str]:
    """Paths (relative to DATA) of the images in the chosen folders, sorted."""
    formats = FORMATS if fmt == "all" else (fmt,)
    rels: list[str] = []
    for f in formats:
        ext = "." + EXTENSIONS[f]
        for s in expand_split(split):
            folder = layout.images_dir(f, s)
            try:
                with os.scandir(folder) as it:
                    names = [e.name for e in it
                             if e.name.endswith(ext) and IMAGE_RE.match(e.name) and e.is_file()]
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise DiskError(
                    f"cannot read {folder}: {(exc.strerror or str(exc)).lower()}",
                    "fix its permissions (or run as the user who owns the data), then run again",
                ) from None
            rels += [f"{f}/{s}/{n}" for n in names]
    return sorted(rels)


def checksums(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "all",
    fmt: str = "all",
    out: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> ChecksumsReport:
    """Hash every image of ``split``/``fmt`` (``all``: every format present) under DATA; with
    ``out``, write the list there atomically (else the caller prints :meth:`ChecksumsReport.text`).

    Holds the data directory's shared lock: a fetch must not replace images mid-hash.
    """
    if fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMAT_CHOICES)}")
    start = time.monotonic()
    layout = Layout.at(data_dir)
    report = ChecksumsReport(str(layout.root), split, fmt, str(out) if out is not None else None)
    lock = (data_dir_lock(layout.lock_path, shared=True) if layout.root.is_dir()
            else contextlib.nullcontext())
    with lock:
        rels = image_paths(layout, split, fmt)
        if not rels:
            raise UsageError(
                f"no images to hash in {layout.root} (split {split}, format {fmt})",
                "fetch them first (`isic2020 fetch`), or give the right --data-dir",
            )
        report.files = _hash_all(layout.root, rels, workers, progress)
    if out is not None:
        _write(Path(out), report.text())
    report.seconds = time.monotonic() - start
    return report


def _hash_all(root: Path, rels: list[str], workers: int | None, progress: bool) -> list[Sum]:
    paths = [root / rel for rel in rels]
    bar = None
    if progress:
        bar = progress_bar(sum(p.stat().st_size for p in paths), "hashing")
    sums: list[Sum] = []
    try:
        for rel, (path, digest, n) in zip(rels, hash_files(paths, workers)):
            if digest is None:  # removed while we listed: a moving target, not a list
                raise DiskError(f"{path} disappeared while it was being hashed",
                                "run again when nothing else changes the data")
            sums.append(Sum(rel, digest, n))
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    return sums


def _write(out: Path, text: str) -> None:
    try:
        with atomic_file(out) as fh:
            fh.write(text.encode("utf-8"))
    except OSError as exc:
        raise DiskError(
            f"cannot write {out}: {(exc.strerror or str(exc)).lower()}",
            "choose another --out (an existing, writable folder)",
        ) from None
