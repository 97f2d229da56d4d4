"""Unpack a landed archive into the fixed layout, safely, resumably and fast.

Invariants, and why:

* **Checked before one byte is written.** The central directory is read with the one parser
  (:mod:`~isic2020.archive.zipformat`, end records bounded first) and every entry passes the
  one set of rules (:mod:`~isic2020.archive.rules`: unsafe names, bombs, image naming,
  duplicates). Output paths are built from the validated canonical name only.
* **Never a partial file at a final path** (:mod:`~isic2020.archive.decode`): each member
  goes to a hidden temporary in its final folder, is checked (size, CRC-32) over every byte
  written, then renamed. Before the record claims completion the data directory's filesystem
  is flushed (``Flusher``: in the background while writing, so the final flush finds little).
* **Resumable, idempotent.** A member already at its final path with the right size is
  skipped (only completed files ever reach a final path). A finished archive is recorded in
  ``records.json`` (``extracted``) with the archive's size and mtime; a re-run that finds the
  record, the same archive and the images present does no work at all.
* **Images unpacked while the archive downloaded** (``streaming``) are moved in first, if
  they came from this very version of it (:mod:`~isic2020.archive.staging`).
* **Fast.** Members are written in archive order by forked worker processes
  (:mod:`~isic2020.archive.workers`), or in this process for small jobs.

The caller (``commands.extract``, ``commands.fetch``) holds the data-dir lock.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from isic2020.archive.decode import Flusher, disk_error, present_files
from isic2020.archive.rules import LOCAL_HINT, Member, Plan, Refused, plan_entries, refusal
from isic2020.archive.staging import Promoted, promote, staging_matches
from isic2020.archive.workers import (
    DEFAULT_WORKERS,
    MIN_MEMBERS_PER_WORKER,
    Source,
    chunks_of,
    run_processes,
    write_run,
)
from isic2020.archive.zipformat import BadZip, read_directory
from isic2020.catalog.manifest import FileEntry
from isic2020.errors import DiskError, Interrupted, UsageError, VerificationError
from isic2020.report import human_size, plural, progress_bar
from isic2020.store.fsutil import free_bytes, remove_tree
from isic2020.store.layout import Layout
from isic2020.store.records import Records, file_mode


@dataclass
class ArchiveExtraction:
    """What happened to one archive."""

    archive: str
    split: str
    format: str
    dest: str
    status: str  # "extracted", "skipped" (already complete), "absent" (archive gone, recorded)
    images: int = 0
    written: int = 0
    already_present: int = 0
    bytes_written: int = 0
    non_images: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    directories: int = 0
    workers: int = 0
    from_staging: int = 0  # unpacked while the archive downloaded (see ``streaming``)
    seconds: float = 0.0
    #: Images now in ``dest`` whose content was checked as this run wrote them (the JPEG
    #: markers, ``decode.Vouched``): the closing verify of a fetch need not read them back.
    checked: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, checked=set()))
        d.pop("checked")
        d["checked_when_written"] = len(self.checked)
        return d




def plan_archive(path: Path, entry: FileEntry) -> Plan:
    """The checked plan of the landed archive at ``path``: its end records are bounded before
    anything is sized from them, so a claim of a huge directory or one outside the file is
    refused in one line, exit 1."""
    hint = f"delete {path} and run `isic2020 fetch` again"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise VerificationError(
            f"{entry.name} is not a readable zip: {type(exc).__name__}: {exc}", hint
        ) from None
    try:
        size = os.fstat(fd).st_size
        cd, entries = read_directory(lambda at, n: os.pread(fd, n, at), size)
        plan = plan_entries(entries, entry.format, size)
        plan.parsed = (cd, entries)
        return plan
    except Refused as exc:
        raise refusal(entry.name, exc, LOCAL_HINT) from None
    except BadZip as exc:
        raise VerificationError(f"{entry.name} is not a readable zip: {exc}", hint) from None
    except (OSError, struct.error) as exc:
        raise VerificationError(
            f"{entry.name} is not a readable zip: {type(exc).__name__}: {exc}", hint
        ) from None
    finally:
        os.close(fd)


def _take_staged(
    layout: Layout, entry: FileEntry, records: Records, size: int, dest_dir: Path,
    members: list[Member], vouched: Collection[str],
) -> Promoted:
    """Move in the images unpacked while this archive downloaded, if they were unpacked from
    this very version of it (ETag and size, as recorded when it landed); else drop them."""
    staging = layout.staging_dir(entry)
    if not staging.exists():
        return Promoted()
    rec = records.file(entry.name)
    try:
        if rec is not None and staging_matches(staging, rec.etag, size):
            return promote(staging, dest_dir, members, vouched)
        remove_tree(staging)
    except OSError as exc:
        raise disk_error(exc, dest_dir) from None
    return Promoted()



def extract_archive(
    layout: Layout,
    entry: FileEntry,
    *,
    records: Records,
    progress: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    plan: Plan | None = None,
    vouched: Collection[str] = (),
) -> ArchiveExtraction:
    """Unpack one archive (at ``layout.final_path(entry)``) into ``DATA/<format>/<split>/``.

    ``plan`` is :func:`plan_archive`'s result for this very archive when the caller already
    made it (the streaming extractor parses the directory while the archive downloads): it is
    not parsed and checked a second time. ``vouched``: the staged images the streaming
    checked as it wrote them (see :func:`staging.promote`).

    The caller holds the data-dir lock. Raises VerificationError (unsafe or damaged archive,
    naming the entry), DiskError (disk full, unwritable) or Interrupted; what was finished
    stays in place and the next call resumes.
    """
    start = time.monotonic()
    path = layout.final_path(entry)
    dest_dir = layout.images_dir(entry.format, entry.split)
    rel_dest = os.path.relpath(dest_dir, layout.root)
    result = ArchiveExtraction(entry.name, entry.split, entry.format, rel_dest, "extracted")
    try:
        st = path.stat()
    except OSError:
        raise UsageError(
            f"{path} does not exist", "run `isic2020 fetch` to download it first"
        ) from None
    if _already_extracted(layout, records, entry, st, dest_dir, result):
        result.seconds = time.monotonic() - start
        return result

    if plan is None:
        plan = plan_archive(path, entry)
    result.images = len(plan.members)
    result.non_images = plan.non_images
    result.duplicates = plan.duplicates
    result.directories = plan.directories
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, dest_dir) from None
    staged = _take_staged(layout, entry, records, st.st_size, dest_dir, plan.members, vouched)
    result.from_staging = staged.images
    result.checked = staged.checked
    todo = _todo(entry, plan.members, dest_dir, result, staged.present, staged.every_member)
    if log and todo:
        log(f"extracting {plural(len(todo), 'image')} from {entry.name} to {rel_dest}")
    _write(path, entry, todo, dest_dir, result, workers, progress)
    records.put_extracted(
        entry.name,
        {
            "images": len(plan.members),
            "dest": rel_dest,
            "st_size": st.st_size,
            "st_mtime_ns": st.st_mtime_ns,
            "non_images": plan.non_images,
            "extracted_at": time.time(),
        },
    )
    keep_directory(layout, records, entry, plan)
    result.seconds = time.monotonic() - start
    return result


def _already_extracted(
    layout: Layout, records: Records, entry: FileEntry, st: os.stat_result, dest_dir: Path,
    result: ArchiveExtraction,
) -> bool:
    """The record says this very archive (size, mtime) was extracted and every image of it is
    there, by name and size (a stray file must not stand in for a missing one): nothing to do
    (``result`` says so). A stale record is dropped, and so is one whose images are not all
    there: the extraction that follows writes what is missing."""
    done = records.extracted.get(entry.name)
    same = bool(done) and (done.get("st_size"), done.get("st_mtime_ns")) == (st.st_size,
                                                                             st.st_mtime_ns)
    if same and not _images_missing(layout, records, entry, dest_dir):
        result.status = "skipped"
        result.images = int(done.get("images", 0))
        result.non_images = list(done.get("non_images", []))
        return True
    if done:
        records.drop_extracted(entry.name)
    return False


def _images_missing(layout: Layout, records: Records, entry: FileEntry, dest_dir: Path) -> bool:
    """Is any image of the landed archive absent from ``dest_dir`` or not its size? From the
    saved directory when there is one for this archive (``saved``), else from the archive's."""
    from isic2020.archive.saved import check_folder

    rec = records.file(entry.name)
    if rec is not None:
        try:
            check = check_folder(layout.state_dir, entry.name, entry.format, dest_dir, rec.size,
                                 rec.etag, rec.sha256)
        except Refused:
            check = None  # the archive's own directory decides below
        if check is not None:
            return bool(check.missing.members)
    present = present_files(dest_dir)
    members = plan_archive(layout.final_path(entry), entry).members
    keep_directory(layout, records, entry)  # next time, without parsing the archive
    return any(present.get(m.final) != m.entry.file_size for m in members)


def keep_directory(layout: Layout, records: Records, entry: FileEntry,
                   plan: Plan | None = None) -> None:
    """Save the landed archive's directory (``saved``) unless it is saved already: once the
    archive goes, it is what a later ``fetch`` repairs the images from. ``plan``: one made
    from this very archive, whose parsed directory is saved as it is (no second parse)."""
    from isic2020.archive.saved import directory_path, load_directory, save_directory

    rec = records.file(entry.name)
    if rec is None:
        return
    dest = directory_path(layout.state_dir, entry.name)
    if load_directory(dest, rec.size, rec.etag, rec.sha256) is None:
        with contextlib.suppress(DiskError):  # (a read-only copy): only a later repair needs it
            save_directory(layout.final_path(entry), dest, rec.url, rec.etag, rec.sha256,
                           parsed=plan.parsed if plan is not None else None,
                           prepared=plan.prepared if plan is not None else None)


def _todo(
    entry: FileEntry, members: list[Member], dest_dir: Path, result: ArchiveExtraction,
    present: dict[str, int] | None = None, every_member: bool = False,
) -> list[Member]:
    """The members not yet at their final path with their size, in archive order (each
    worker reads its runs of the zip sequentially); refused when they cannot fit.
    ``present``: ``dest_dir``'s content when already known (the staged folder became it);
    ``every_member``: it holds every member with its size (none is left)."""
    if present is None:
        present = present_files(dest_dir)
    todo = [] if every_member else [
        m for m in members if present.get(m.final) != m.entry.file_size]
    result.already_present = len(members) - len(todo)
    need = sum(m.entry.file_size for m in todo)
    free = free_bytes(dest_dir)  # None: the filesystem does not say (ramfs)
    if free is not None and need > free:
        raise DiskError(
            f"{entry.name} needs {human_size(need)} more in {dest_dir}, only "
            f"{human_size(free)} free",
            "free space or choose another --data-dir, then run the same command again",
        )
    todo.sort(key=lambda m: m.entry.header_offset)
    return todo


def _write(
    path: Path, entry: FileEntry, todo: list[Member], dest_dir: Path,
    result: ArchiveExtraction, workers: int | None, progress: bool,
) -> None:
    """Write ``todo`` (in this process or forked workers), then flush: after a power cut
    the record must never vouch for files the disk does not hold."""
    n_workers = max(1, min(workers or DEFAULT_WORKERS, os.cpu_count() or 1))
    if not hasattr(os, "fork") or len(todo) < n_workers * MIN_MEMBERS_PER_WORKER:
        n_workers = 1
    result.workers = n_workers
    mode = file_mode()
    d = str(dest_dir)
    bar = _progress_bar(progress, len(todo), entry.name)
    flusher = Flusher(dest_dir)
    try:
        if n_workers == 1:
            src = Source(str(path))
            flusher.start()
            try:
                for lo, hi in chunks_of(todo, 1) if bar is not None else [(0, len(todo))]:
                    result.bytes_written += write_run(src, todo[lo:hi], d, mode, entry.name)
                    if bar is not None:
                        bar.update(hi - lo)
            finally:
                src.close()
        else:
            result.bytes_written = run_processes(
                str(path), todo, d, mode, entry.name, n_workers, bar, flusher.start
            )
        if todo or result.from_staging:
            flusher.final()
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while extracting {entry.name}",
            "run the same command again to resume; finished images are kept",
        ) from None
    finally:
        flusher.close()
        if bar is not None:
            bar.close()
    result.written = len(todo)


def _progress_bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled or total == 0:
        return None
    return progress_bar(total, name, unit="img")
