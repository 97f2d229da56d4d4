"""What the data directory already holds, as ``fetch``, its dry run and ``list`` judge it.

Why one module: the three must agree on what is done. A file is done when its record vouches
for it (same stat as when it was verified, and content that can be the manifest's file: an older
run's record of a login page does not vouch), and a partial download counts the bytes its
state file says are done. Everything here reads; nothing writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.plausible import content_problem
from isic2020.commands.fetch_options import Log
from isic2020.errors import DiskError
from isic2020.report import human_size
from isic2020.store.fsutil import block_size, free_bytes, on_disk
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


def images_on_disk(entry: FileEntry, archive_size: int, block: int) -> int:
    """About what an archive's images take once unpacked, counted in whole blocks.

    Each image costs at least a block, so 33,126 images of 1 KB take 135 MB, not 33 MB. The
    count is the manifest's, scaled down when the server's archive is smaller than the
    published one (a mirror of a sample holds fewer images); each image is taken at the
    archive's average size, rounded up to a block."""
    n = entry.images or 0
    published = entry.approx_bytes
    if n and published > archive_size:
        n = max(1, round(n * archive_size / published))
    if not n:
        return archive_size
    return n * on_disk(-(-archive_size // n), block)


@dataclass
class SpaceNeed:
    """What a fetch still needs on disk, from the server's sizes where known."""

    #: name -> bytes of each file still to download (its whole size: a resume counts its bytes
    #: done); the overall progress line adds these up.
    sizes: dict[str, int] = field(default_factory=dict)
    #: bytes still to download plus the unpacked images (whole blocks).
    need: int = 0
    #: what the same fetch needs with ``--direct``: the other files and only the images.
    direct_need: int = 0
    free: int | None = None

    def fits(self) -> bool:
        return self.free is None or self.need <= self.free

    def direct_fits(self) -> bool:
        return self.free is not None and self.direct_need <= self.free < self.need


@dataclass(frozen=True)
class PlannedFetch:
    """A fetch about to start, as the space check sees it: where it writes, what the data
    directory already vouches for, which files, and what it keeps of them."""

    layout: Layout
    records: Records
    entries: list[FileEntry]
    #: the images are unpacked (not ``--no-extract``).
    extract: bool
    #: images only, no archive (a subset or ``--direct``).
    members_only: bool = False
    #: name -> size a server answered (a HEAD); wins over the manifest's published size.
    server_sizes: dict[str, int] | None = None


def space_needed(plan: PlannedFetch) -> SpaceNeed:
    """Remaining download plus unpacked images: the server's sizes (``server_sizes``, from a
    HEAD) win over the manifest's published ones (a 50 MB mirror is not refused for 46 GB)."""
    layout, records, extract = plan.layout, plan.records, plan.extract
    block = block_size(layout.root)
    out = SpaceNeed(free=free_bytes(layout.root))  # None: the filesystem does not say (ramfs)
    for e in plan.entries:
        if e.is_archive and plan.members_only:
            continue  # images only, no archive: extraction checks the space per archive
        rec = records.file(e.name)
        if trusted(rec, e, layout.final_path(e)):
            continue
        if e.is_archive and e.name in records.extracted and not layout.final_path(e).exists():
            continue
        size = (plan.server_sizes or {}).get(e.name) or e.approx_bytes
        out.sizes[e.name] = size
        download = max(0, size - partial_bytes(layout, e))
        images = images_on_disk(e, size, block) if e.is_archive and extract else 0
        # With --no-keep-archives the archive is deleted only after its images are in place,
        # so the peak is the archive and its images.
        out.need += download + images
        out.direct_need += images if e.is_archive else download
    if not extract:  # --direct unpacks: no suggestion for a fetch that keeps only archives
        out.direct_need = out.need
    return out


def check_space(plan: PlannedFetch) -> SpaceNeed:
    """Refuse to start what cannot finish (:func:`space_needed`); what it needs otherwise."""
    need = space_needed(plan)
    layout = plan.layout
    if not need.fits():
        assert need.free is not None
        hint = ("free space, choose another --data-dir, or fetch with --no-extract"
                if plan.extract else "free space or choose another --data-dir")
        if need.direct_fits():
            hint = (f"fetch with --direct (only the images, no archive: about "
                    f"{human_size(need.direct_need)}), free space, or choose another --data-dir")
        raise DiskError(
            f"not enough disk space in {layout.root}: about {human_size(need.need)} needed, "
            f"{human_size(need.free)} free",
            hint,
        )
    return need
