"""``pin``: the manifest with the exact size, ETag and sha256 of every file verified here.

A fetch proves what it downloads (size, ETag, sha256) and keeps that proof in
``DATA/.isic2020/records.json``. ``pin`` writes it back into the manifest, so every other
machine that fetches with ``--manifest pinned.toml`` demands those exact bytes: from the
official hosts, and from any mirror whatever its ETags are (the sha256 decides; see
``Manifest.for_mirrors``). Only what is verified *now* is pinned: a record whose file changed
since (another stat), or whose file cannot be that entry (``plausible``), pins nothing. An
archive unpacked with ``--no-keep-archives`` keeps its record and is pinned from it.

Reads only; holds the data directory's lock shared, so a fetch cannot replace a file while its
record is read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from isic2020.catalog.manifest import FileEntry, Manifest, load_manifest, manifest_to_toml
from isic2020.catalog.plausible import content_problem
from isic2020.errors import UsageError, VerificationError
from isic2020.report import readable_repr
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import FileRecord, Records
from isic2020.version import __version__

#: The pinned manifest's name where ``mirror`` publishes it, beside the official files.
PINNED_NAME = "isic2020-pinned.toml"


@readable_repr
@dataclass
class PinReport:
    """The pinned manifest (``toml``), and which entries it pins."""

    data_dir: str
    manifest: Manifest
    pinned: list[str] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def toml(self) -> str:
        return manifest_to_toml(self.manifest)

    def to_dict(self) -> dict[str, Any]:
        return {"isic2020": __version__, "data_dir": self.data_dir, "pinned": self.pinned,
                "not_verified": self.unpinned, "manifest": self.toml}

    def summary_lines(self) -> list[str]:
        return self.toml.splitlines()


def verified_record(layout: Layout, records: Records, entry: FileEntry) -> FileRecord | None:
    """The record that vouches for ``entry`` now, or None: the file has the stat it had when
    verified and can be that entry, or it is an archive unpacked and deleted since."""
    rec = records.file(entry.name)
    if rec is None:
        return None
    final = layout.final_path(entry)
    if rec.matches_stat(final) and content_problem(entry, final) is None:
        return rec
    if entry.is_archive and entry.name in records.extracted and not final.exists():
        return rec
    return None


def pin_entry(entry: FileEntry, rec: FileRecord) -> FileEntry:
    """``entry`` with its record's size, ETag and sha256; a manifest that already pins other
    values is not silently overridden."""
    for what, pinned, proven in (("size", entry.size, rec.size),
                                 ("sha256", entry.sha256, rec.sha256)):
        if pinned is not None and pinned != proven:
            raise VerificationError(
                f"{entry.name}: the manifest pins {what} {pinned} but the verified file has "
                f"{proven}", "use the manifest it was fetched with, or fetch it again")
    return dataclasses.replace(entry, size=rec.size, etag=rec.etag or entry.etag,
                               sha256=rec.sha256)


def pin(
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | Manifest | None = None,
    lock_timeout: float | None = None,
) -> PinReport:
    """The manifest with every verified file pinned (see the module docstring)."""
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    layout = Layout.at(data_dir)
    report = PinReport(str(layout.root), man)
    if not layout.records_path.exists():
        raise UsageError(f"nothing is verified in {layout.root}",
                         "run `isic2020 fetch` first (or give the right --data-dir)")
    with data_dir_lock(layout.lock_path, shared=True, timeout=lock_timeout):
        records = Records(layout.records_path)
        files = []
        for entry in man.files:
            rec = verified_record(layout, records, entry)
            if rec is None:
                report.unpinned.append(entry.name)
                files.append(entry)
            else:
                report.pinned.append(entry.name)
                files.append(pin_entry(entry, rec))
    if not report.pinned:
        raise UsageError(f"nothing is verified in {layout.root}",
                         "run `isic2020 fetch` first (or give the right --data-dir)")
    report.manifest = dataclasses.replace(man, files=tuple(files))
    return report
