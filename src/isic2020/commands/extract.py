"""``isic2020 extract``: unpack the selected archives already in DATA/archives.

Orchestration only: the data-dir lock, the records, the report. The unpacking of one archive
is :func:`isic2020.archive.local.extract_archive`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isic2020.archive.local import ArchiveExtraction, extract_archive
from isic2020.catalog.manifest import expand_split, load_manifest
from isic2020.catalog.selection import supersede_selection
from isic2020.errors import NothingThere
from isic2020.report import plural, readable_repr
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records


@readable_repr
@dataclass
class ExtractReport:
    data_dir: str
    split: str
    format: str
    archives: list[ArchiveExtraction] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # archives neither present nor recorded
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "extract",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "archives": [a.to_dict() for a in self.archives],
            "missing_archives": self.missing,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for a in self.archives:
            if a.status == "extracted":
                lines.append(
                    f"{a.archive}: {plural(a.images, 'image')} in {a.dest} ({a.written:,} written, "
                    f"{a.already_present} already there) in {a.seconds:.1f} s"
                )
            elif a.status == "skipped":
                lines.append(f"{a.archive}: already extracted to {a.dest} "
                             f"({plural(a.images, 'image')})")
            else:
                lines.append(f"{a.archive}: extracted earlier, archive since removed")
            if a.non_images:
                shown = ", ".join(a.non_images[:5])
                more = f" (+{len(a.non_images) - 5} more)" if len(a.non_images) > 5 else ""
                lines.append(
                    f"  {len(a.non_images)} non-image entries not extracted: {shown}{more}"
                )
            if a.duplicates:
                lines.append(f"  {len(a.duplicates)} duplicate image entries ignored")
        for m in self.missing:
            lines.append(f"{m}: not in {self.data_dir}/archives; run `isic2020 fetch` first")
        if not self.archives and not self.missing:
            lines.append("nothing to extract")
        return lines


def extract(
    split: str = "all",
    fmt: str = "jpeg",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    progress: bool = False,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractReport:
    """``isic2020 extract``: unpack the selected archives already in DATA/archives."""
    start = time.monotonic()
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    splits = expand_split(split)
    report = ExtractReport(str(layout.root), split, fmt)
    if fmt == "none":
        return report
    with data_dir_lock(layout.lock_path, on_wait=log):
        records = Records(layout.records_path)
        records.heal(log)
        for s in splits:
            entry = man.archive(s, fmt)
            if entry is None:
                continue
            if not layout.final_path(entry).exists():
                if entry.name in records.extracted:
                    info = records.extracted[entry.name]
                    report.archives.append(
                        ArchiveExtraction(
                            entry.name, s, fmt, str(info.get("dest", "")), "absent",
                            images=int(info.get("images", 0)),
                        )
                    )
                else:
                    report.missing.append(entry.name)
                continue
            supersede_selection(layout, s, fmt)  # the whole archive: no longer a subset
            report.archives.append(
                extract_archive(
                    layout, entry, records=records, progress=progress, workers=workers, log=log
                )
            )
    if not report.archives:
        raise NothingThere(
            f"nothing to extract: {', '.join(report.missing) or 'no archive'} not in "
            f"{layout.archives_dir}",
            f"run `isic2020 fetch --split {split} --format {fmt}` first",
        )
    report.seconds = time.monotonic() - start
    return report
