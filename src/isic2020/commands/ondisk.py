"""What the data directory already holds, as ``fetch``, its dry run and ``list`` judge it.

Why one module: the three must agree on what is done. A file is done when its record vouches
for it (same stat as when it was verified, and content that can be the manifest's file: an older
run's record of a login page does not vouch), and a partial download counts the bytes its
state file says are done. Everything here reads; nothing writes.
"""

from __future__ import annotations

from pathlib import Path

from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.plausible import content_problem
from isic2020.commands.fetch_options import Log
from isic2020.errors import DiskError
from isic2020.report import human_size
from isic2020.store.fsutil import free_bytes
from isic2020.store.layout import Layout
from isic2020.store.records import FileRecord, Records, done_intervals, read_json
from isic2020.transfer.model import DownloadResult


def trusted(rec: FileRecord | None, entry: FileEntry, final: Path) -> bool:
    """A record vouches for ``final``: same stat as when it was verified, and content that
    can be ``entry`` (``plausible``; a record an older run made of a login page does not)."""
    return rec is not None and rec.matches_stat(final) and content_problem(entry, final) is None


def implausible(entry: FileEntry, final: Path, log: Log | None) -> bool:
    """A recorded file that cannot be ``entry`` (``plausible``): say so, distrust the record."""
    problem = content_problem(entry, final)
    if problem and log is not None:
        log(f"{entry.name}: the recorded file {problem}; downloading it again")
    return problem is not None


def partial_bytes(layout: Layout, entry: FileEntry) -> int:
    """Bytes of ``entry`` a partial download already holds (0 when there is none)."""
    doc = read_json(layout.partial_state_path(entry))
    if not isinstance(doc, dict):
        return 0
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        return 0
    return sum(b - a for a, b in done_intervals(doc.get("done", []), size))


def cached_result(rec: FileRecord, final: Path) -> DownloadResult:
    """The per-file result of a file its record vouches for: nothing transferred."""
    return DownloadResult(
        name=rec.name,
        path=str(final),
        url=rec.url,
        size=rec.size,
        etag=rec.etag,
        sha256=rec.sha256,
        md5=rec.md5,
        etag_check=rec.etag_check,
        bytes_transferred=0,
        seconds=0.0,
        retries=0,
        status="cached",
    )


def check_space(
    layout: Layout,
    records: Records,
    entries: list[FileEntry],
    extract: bool,
    members_only: bool = False,
) -> None:
    """Refuse to start what cannot finish: remaining download plus unpacked images."""
    need = 0
    for e in entries:
        if e.is_archive and members_only:
            continue  # images only, no archive: extraction checks the space per archive
        rec = records.file(e.name)
        if trusted(rec, e, layout.final_path(e)):
            continue
        if e.is_archive and e.name in records.extracted and not layout.final_path(e).exists():
            continue
        need += max(0, e.approx_bytes - partial_bytes(layout, e))
        if e.is_archive and extract:
            # Images take about the archive's size again; with --no-keep-archives the archive
            # is deleted only after its images are in place, so the peak is the same.
            need += e.approx_bytes
    free = free_bytes(layout.root)  # None: the filesystem does not say (ramfs)
    if free is not None and need > free:
        raise DiskError(
            f"not enough disk space in {layout.root}: about {human_size(need)} needed, "
            f"{human_size(free)} free",
            "free space, choose another --data-dir, or fetch with --no-extract",
        )
