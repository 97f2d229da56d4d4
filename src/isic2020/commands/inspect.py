"""``isic2020 inspect``: each selected archive's central directory, read remotely (or from
the cache), and how its image names compare with the metadata CSV when that is on disk.

Orchestration and the report only: reading the directory is
:func:`isic2020.archive.remote.open_remote`, choosing images is
:func:`isic2020.archive.members.image_members` (the one set of rules).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.archive.members import Log, image_members
from isic2020.archive.remote import RemoteZip, cache_path, open_remote
from isic2020.catalog.manifest import EXTENSIONS
from isic2020.errors import (
    DiskError,
    DownloadError,
    UsageError,
    VerificationError,
    host_line,
    hosts_failed,
)
from isic2020.report import human_size, readable_repr
from isic2020.transfer.http import Timeouts
from isic2020.transfer.retry import RetryPolicy


@dataclass
class ArchiveInspection:
    """One remote archive as its central directory describes it, compared with the CSV."""

    archive: str
    split: str
    format: str
    url: str
    size: int
    etag: str | None
    entries: int
    images: int
    directories: int
    non_images: list[str]
    compressed_bytes: int
    uncompressed_bytes: int
    cd_bytes: int
    bytes_transferred: int
    from_cache: bool
    image_sizes: dict[str, int]  # min, median, max (uncompressed)
    metadata_csv: str | None = None
    in_metadata: int | None = None
    missing: list[str] = field(default_factory=list)  # in the CSV, not in the archive
    extra: list[str] = field(default_factory=list)  # in the archive, not in the CSV
    members: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@readable_repr
@dataclass
class InspectReport:
    data_dir: str
    split: str
    format: str
    archives: list[ArchiveInspection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def bytes_transferred(self) -> int:
        return sum(a.bytes_transferred for a in self.archives)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "inspect",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "archives": [a.to_dict() for a in self.archives],
            "notes": self.notes,
            "bytes_transferred": self.bytes_transferred,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }

    def summary_lines(self) -> list[str]:
        lines: list[str] = []
        for a in self.archives:
            how = "cached directory" if a.from_cache else f"{human_size(a.bytes_transferred)} read"
            lines.append(
                f"{a.archive}: {a.entries} entries, {a.images} images, "
                f"{human_size(a.compressed_bytes)} compressed, "
                f"{human_size(a.uncompressed_bytes)} unpacked ({how})"
            )
            s = a.image_sizes
            if s:
                lines.append(
                    f"  image sizes: min {s['min']:,} B, median {s['median']:,} B, "
                    f"max {s['max']:,} B"
                )
            if a.non_images:
                lines.append(f"  {len(a.non_images)} non-image entries: {_short(a.non_images)}")
            if a.metadata_csv is None:
                lines.append("  metadata CSV not on disk: run `isic2020 fetch --format none` "
                             "to compare the images with it")
            else:
                lines.append(
                    f"  vs {a.metadata_csv}: {a.in_metadata} listed, "
                    f"{len(a.missing)} missing from the archive, {len(a.extra)} extra"
                )
                if a.missing:
                    lines.append(f"    missing: {_short(a.missing)}")
                if a.extra:
                    lines.append(f"    extra: {_short(a.extra)}")
        lines.extend(self.notes)
        return lines


def _short(items: Sequence[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def inspect_remote(remote: RemoteZip, split: str, fmt: str) -> ArchiveInspection:
    """What the directory says: counts, sizes, non-image entries (no metadata comparison)."""
    ext = EXTENSIONS[fmt]
    images = image_members(remote, fmt)
    directories = sum(1 for m in remote.members if m.is_dir)
    image_offsets = {m.header_offset for m in images.values()}
    non_images = [
        m.name for m in remote.members if not m.is_dir and m.header_offset not in image_offsets
    ]
    sizes = sorted(m.file_size for m in images.values())
    return ArchiveInspection(
        archive=remote.name,
        split=split,
        format=fmt,
        url=remote.url,
        size=remote.size,
        etag=remote.etag,
        entries=len(remote.members),
        images=len(images),
        directories=directories,
        non_images=non_images,
        compressed_bytes=sum(m.compressed_size for m in remote.members),
        uncompressed_bytes=sum(m.file_size for m in remote.members),
        cd_bytes=remote.cd_size,
        bytes_transferred=remote.bytes_read,
        from_cache=remote.from_cache,
        image_sizes=(
            {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]} if sizes else {}
        ),
        members=[
            {"image_name": k, "file": f"{k}.{ext}", "entry": m.name,
             "compressed_size": m.compressed_size, "file_size": m.file_size}
            for k, m in sorted(images.items())
        ],
    )


def compare_with_metadata(
    result: ArchiveInspection, images: Iterable[str], csv_names: Iterable[str], csv: str
) -> None:
    """Fill in which CSV names the archive lacks (``missing``) and which it adds (``extra``)."""
    have, listed = set(images), list(dict.fromkeys(csv_names))
    known = set(listed)
    result.metadata_csv = csv
    result.in_metadata = len(listed)
    result.missing = [n for n in listed if n not in have]
    result.extra = sorted(have - known)


def inspect(
    split: str = "all",
    fmt: str = "jpeg",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: Any = None,
    mirrors: Sequence[str] = (),
    *,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    log: Log | None = None,
) -> InspectReport:
    """``isic2020 inspect``: each selected archive's directory, read remotely (or from the
    cache), and how its image names compare with the metadata CSV when that is on disk."""
    from isic2020.catalog.manifest import Manifest, expand_split, load_manifest
    from isic2020.store.layout import Layout

    t0 = time.monotonic()
    if fmt == "none":
        raise UsageError("inspect needs an image format",
                         "use --format jpeg, dicom or dicom-original")
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if mirrors:  # held to a mirror as fetch holds it: a pinned sha256, not the ETag, decides
        man = man.for_mirrors()
    layout = Layout.at(data_dir)
    report = InspectReport(str(layout.root), split, fmt)
    for s in expand_split(split):
        entry = man.archive(s, fmt)
        if entry is None:
            report.notes.append(f"no {s} archive in format {fmt}")
            continue
        remote = _open_first(entry, entry.urls(list(mirrors)), cache_path(layout.state_dir,
                             entry.name), timeouts, retry, log)
        result = inspect_remote(remote, s, fmt)
        _compare(result, s, layout.root, man)
        report.archives.append(result)
    report.seconds = time.monotonic() - t0
    return report


def _open_first(
    entry: Any, urls: Sequence[str], cache: Path, timeouts: Timeouts | None,
    retry: RetryPolicy | None, log: Log | None,
) -> RemoteZip:
    """The directory from the first host that serves it; when none does, a verification
    error if every host answered with a damaged archive, else a download error."""
    failures, damaged = [], []
    for url in urls:
        try:
            return open_remote(url, cache, timeouts=timeouts, retry=retry,
                               expected_etag=entry.etag)
        except (DownloadError, VerificationError) as exc:
            if isinstance(exc, DiskError):
                raise
            failures.append(host_line(url, exc.message))
            if isinstance(exc, VerificationError):
                damaged.append(exc.message)
            if log is not None:
                log(f"{entry.name}: {exc.message}")
    if failures and len(damaged) == len(failures):  # every host answered: bad data
        raise VerificationError(
            f"{entry.name}: every host serves a damaged archive ({'; '.join(damaged)})",
            "the server's archive is damaged or not the official one; try another --mirror",
        )
    if not failures:  # only file:// URLs: a directory is read over http(s) or s3
        raise UsageError(
            f"{entry.name}: inspect reads archives' directories from http(s) or s3 hosts, and "
            "every URL given is a file:// mirror",
            "give an http(s) --mirror, or look at the local zip with `unzip -l`",
        )
    raise hosts_failed(f"{entry.name}: no host could serve its directory", failures)


def _compare(result: ArchiveInspection, split: str, root: Path, man: Any) -> None:
    """Compare the archive's image names with the split's metadata CSV, if it is on disk."""
    import warnings

    from isic2020.catalog.tables import load_metadata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = load_metadata(split, root, image_format=None, manifest=man.path)
    except (VerificationError, UsageError):
        return
    role = "test_metadata" if split == "test" else "ground_truth_v2"
    csv_entry = man.role(role) or man.role("ground_truth")
    compare_with_metadata(
        result,
        [m["image_name"] for m in result.members],
        df["image_name"].astype(str),
        csv_entry.name if csv_entry else "metadata",
    )
