"""File checks: each CSV and archive in DATA against the record written when it was verified.

A file whose stat still matches its record is trusted without hashing: that is what keeps
``verify`` fast on 30 GB of zips. A changed stat, or ``--deep``, re-hashes it and compares with
the record (or the manifest's size/sha256 when there is no record). A file whose content
cannot be the manifest's (a login page an older run recorded, a gzipped body) fails whatever
its record says. Absent files yield no check: archives may have been deleted with
``--no-keep-archives`` (the images are what is checked) and missing CSVs fail in the metadata
checks.
"""

from __future__ import annotations

from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.plausible import content_problem
from isic2020.checks.findings import Check
from isic2020.store.layout import Layout
from isic2020.store.records import Records
from isic2020.transfer.digests import file_digests


def check_recorded(
    layout: Layout, entry: FileEntry, records: Records, deep: bool
) -> Check | None:
    """``entry``'s check, or None when it is not on disk."""
    path = layout.final_path(entry)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    kind = "archive" if entry.is_archive else "file"
    name = f"{kind}/{entry.name}"
    rec = records.file(entry.name)
    problem = content_problem(entry, path)
    if problem is not None:  # a login page an older run recorded, a gzipped body
        return Check(
            name, "failed", f"not the file the manifest describes: it {problem}",
            {"size": size, "hashed": False},
            [f"{entry.name} {problem}; `isic2020 fetch` downloads it again"],
        )
    if rec is not None and not deep and rec.matches_stat(path):
        return Check(
            name, "ok", "unchanged since verified (stat matches the record; not re-hashed)",
            {"size": size, "hashed": False},
        )
    want_sha = rec.sha256 if rec else entry.sha256
    want_size = rec.size if rec else entry.size
    source = "the record" if rec else "the manifest"
    if want_sha is None and want_size is None:
        return Check(
            name, "warning", "no record and no checksum in the manifest: content not proven",
            {"size": size, "hashed": False},
        )
    if want_size is not None and size != want_size:
        return Check(
            name, "failed", f"{size} bytes, {source} says {want_size}",
            {"size": size, "expected_size": want_size, "hashed": False},
            [f"{entry.name}: size {size} != {want_size}"],
        )
    if want_sha is None:
        return Check(name, "ok", f"size matches {source} (no checksum known)", {"size": size})
    sha = file_digests(path)["sha256"]
    if sha != want_sha:
        return Check(
            name, "failed", f"SHA-256 differs from {source}: the file is damaged",
            {"size": size, "sha256": sha, "expected_sha256": want_sha, "hashed": True},
            [f"{entry.name}: sha256 {sha} != {want_sha}; delete it and run `isic2020 fetch`"],
        )
    return Check(name, "ok", f"SHA-256 matches {source}", {"size": size, "hashed": True})

