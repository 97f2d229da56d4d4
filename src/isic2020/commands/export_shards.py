"""``isic2020 export --layout webdataset|parquet``: training shards from the verified images.

The work is in :mod:`isic2020.training` (samples, the shard plan and index, the two formats,
the destination seam); this module picks the splits, reports, and sets the exit code:

* ``--split all`` (the default) exports train, and test when its metadata and images are on
  disk (a note otherwise); ``--split test`` without them is an error;
* a subset fetch (``--sample``/``--images``/``--where``) exports its recorded selection: the
  report says ``subset`` with the counts, and only its images count as missing;
* images named in the metadata but not on disk are left out of the shards, counted, and make
  the exit code 1 (the shards hold what is there; fetch the rest and run again: the shards
  that do not change are kept);
* a damaged image (not a whole JPEG) stops the export with one line naming it (exit 1); a full
  disk with one line (exit 3); in both cases the finished shards and the index stay and the
  same command resumes;
* DEST may be ``s3://bucket/prefix`` (:class:`isic2020.training.bucket.BucketDestination`):
  the same shards and index, byte for byte, uploaded one finished shard at a time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import expand_split
from isic2020.errors import EXIT_OK, EXIT_VERIFY, NothingThere, VerificationError
from isic2020.report import human_size, plural, readable_repr
from isic2020.store.layout import Layout
from isic2020.training.bucket import BucketDestination, dest_scheme
from isic2020.training.destination import INDEX_NAME, Destination, LocalDestination
from isic2020.training.samples import SampleQuery, check_format, load_samples
from isic2020.training.shards import (
    DEFAULT_SHARD_SIZE,
    Index,
    ShardFormat,
    SplitResult,
    parse_shard_size,
    write_split,
)

SHARD_LAYOUTS = ("webdataset", "parquet")


@dataclass(frozen=True)
class ShardOptions:
    """What to export, and how big each shard may get."""

    layout: str = "webdataset"
    split: str = "all"
    image_format: str = "jpeg"
    shard_size: int | str = DEFAULT_SHARD_SIZE
    data_dir: str | os.PathLike[str] | None = None
    manifest: str | os.PathLike[str] | None = None


@readable_repr
@dataclass
class ShardReport:
    """What ``isic2020 export --layout webdataset|parquet`` wrote."""

    dest: str
    layout: str
    data_dir: str
    index: str
    shard_size: int
    splits: list[SplitResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Per split that is a subset: ``{"selected": n, "in_metadata": m}``.
    subset_images: dict[str, dict[str, int]] = field(default_factory=dict)
    exit_code: int = EXIT_OK

    @property
    def subset(self) -> bool:
        return bool(self.subset_images)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("exit_code")
        d["subset"] = self.subset
        return d

    def summary_lines(self) -> list[str]:
        lines = [f"{self.layout} shards in {self.dest} (from {self.data_dir})"]
        for r in self.splits:
            lines.append(
                f"  {r.split} ({r.image_format}): {plural(r.samples, 'sample')} in "
                f"{plural(r.shards, 'shard')}, {human_size(r.bytes)} ({r.written:,} written, "
                f"{r.kept:,} already there)"
                + (f", {plural(r.missing, 'image')} MISSING" if r.missing else "")
            )
            if r.removed:
                lines.append(f"  removed {plural(len(r.removed), 'stale shard')} of {r.split}")
        lines.append(f"  index: {self.index}")
        lines.extend(self.notes)
        return lines


def _format_for(layout: str, columns: list[str]) -> ShardFormat:
    if layout == "parquet":
        from isic2020.training.parquet import ParquetFormat

        return ParquetFormat(columns)
    from isic2020.training.webdataset import WebDatasetFormat

    return WebDatasetFormat()


@contextlib.contextmanager
def _destination(dest: str | os.PathLike[str], data_root: Path) -> Iterator[Destination]:
    """The prepared destination for ``dest`` (a folder, or ``s3://``), cleaned up after."""
    if dest_scheme(dest) == "s3":
        bucket = BucketDestination.connect(os.fspath(dest))
        try:
            bucket.prepare(data_root)
            yield bucket
            bucket.finish()
        finally:
            bucket.close()
        return
    local = LocalDestination(Path(dest).expanduser().absolute())
    local.prepare(data_root)
    yield local


def export_shards(dest: str | os.PathLike[str], opts: ShardOptions) -> ShardReport:
    """Write the shards of ``opts`` into ``dest``, a folder or ``s3://bucket/prefix`` (see the
    module doc)."""
    check_format(opts.image_format)
    shard_size = parse_shard_size(opts.shard_size)
    splits = expand_split(opts.split)
    dest_scheme(dest)  # another URL scheme is refused before anything is read
    if opts.layout == "parquet":
        from isic2020.training.parquet import require_pyarrow

        require_pyarrow()
    lay = Layout.at(opts.data_dir)
    with _destination(dest, lay.root) as target:
        return _export(target, lay, opts, splits, shard_size)


def _export(target: Destination, lay: Layout, opts: ShardOptions, splits: tuple[str, ...],
            shard_size: int) -> ShardReport:
    index_at = (f"{target.url}/{INDEX_NAME}" if dest_scheme(target.url)
                else str(Path(target.url) / INDEX_NAME))
    report = ShardReport(target.url, opts.layout, str(lay.root), index_at, shard_size)
    index = Index(target, opts.layout, shard_size)
    for split in splits:
        query = SampleQuery(split, opts.image_format, opts.data_dir, opts.manifest)
        try:
            sset = load_samples(query)
        except (NothingThere, VerificationError):
            if split == "test" and opts.split == "all":
                report.notes.append(
                    "note: no test metadata on disk, so no test shards (run `isic2020 fetch "
                    "--split test --format none`)"
                )
                continue
            raise
        if not sset.folder.is_dir():
            fetch = "fetch --format jpeg" if opts.image_format == "jpeg" else "resize"
            note = (
                f"no {opts.image_format} {split} images in {sset.folder}, so no {split} shards "
                f"(run `isic2020 {fetch} --split {split}`)"
            )
            if opts.split == "all" and split == "test":
                report.notes.append("note: " + note)
                continue
            report.exit_code = EXIT_VERIFY
            report.notes.append(note)
            continue
        if sset.in_metadata is not None:
            report.subset_images[split] = {"selected": sset.rows, "in_metadata": sset.in_metadata}
            report.notes.append(
                f"note: {split} is a subset ({sset.rows:,} of {sset.in_metadata:,} images, as "
                "fetched): the shards hold it"
            )
        fmt = _format_for(opts.layout, sset.columns)
        result = write_split(target, index, fmt, sset, opts.image_format, shard_size)
        report.splits.append(result)
        if sset.missing:
            report.exit_code = EXIT_VERIFY
            report.notes.append(
                f"{sset.missing:,} of {sset.rows:,} {split} images are not in {sset.folder}: "
                f"the {split} shards leave them out (get them, then export again: unchanged "
                "shards are kept)"
            )
    return report
