"""One file of a fetch, whole: trusted, adopted, or downloaded; then recorded and unpacked.

The order of trust, each step resumable on its own:

1. a record whose stat still matches (and whose content can be the manifest's file) vouches for
   the file: zero bytes, no hashing;
2. an archive unpacked earlier and no longer kept (``--no-keep-archives``, ``clean
   --archives``) is done: its images are the data, and those missing or of another size than
   its saved directory says are fetched by their byte ranges (``repair``);
3. a file at its final path without a record is adopted when it verifies (a run killed right
   after landing it), else downloaded again;
4. anything else goes through the engine, with an observer that unpacks an archive while it
   downloads (``archive.streaming``) unless ``$ISIC2020_STREAM=0``.

A verified file is recorded at once (``DATA/.isic2020``), so a later step failing never costs
its download. An archive whose content changed since it was unpacked is unpacked again. An
archive unpacked whole supersedes the subset recorded for its folder (``catalog.selection``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020 import config
from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.plausible import content_problem
from isic2020.catalog.selection import supersede_selection
from isic2020.checks.verify import release_free_memory
from isic2020.commands.fetch_options import FetchRun
from isic2020.commands.fetch_report import FileOutcome
from isic2020.commands.ondisk import cached_result, implausible
from isic2020.store.records import FileRecord, Records
from isic2020.transfer.engine import Downloader
from isic2020.transfer.model import DownloadResult


@dataclass
class _Landed:
    """What a download leaves for the unpacking step."""

    outcome: FileOutcome
    stream_stats: Any = None
    #: The archive's central directory, parsed while it downloaded (None: parse it again).
    directory: Any = field(default=None, repr=False)
    #: Staged images the streaming wrote and checked whole as it wrote them.
    vouched: set[str] = field(default_factory=set, repr=False)


def fetch_file(run: FetchRun, downloader: Downloader, entry: FileEntry) -> FileOutcome:
    """``entry`` complete and verified at its final path (and unpacked, when it is an archive
    and the fetch extracts)."""
    assert run.records is not None
    if run.heap_to_trim and entry.is_archive:
        release_free_memory()
        run.heap_to_trim = False
    layout, records, log = run.layout, run.records, run.how.log
    final = layout.final_path(entry)
    rec = records.file(entry.name)
    done_extraction = entry.is_archive and entry.name in records.extracted
    if entry.is_archive and run.how.extract:  # the whole split: a recorded subset is outgrown
        supersede_selection(layout, entry.split, entry.format)
    if rec is not None and rec.matches_stat(final) and implausible(entry, final, log):
        rec = None  # recorded by an older run that trusted a login page: not verified
    if rec is not None and rec.matches_stat(final):
        landed = _Landed(FileOutcome(cached_result(rec, final), entry.name, "cached"))
    elif rec is not None and done_extraction and not final.exists() and run.how.extract:
        # Unpacked earlier with --no-keep-archives: the images are the data now; what is
        # missing or damaged of them is fetched by byte ranges (``repair``).
        from isic2020.commands.repair import restore_members

        return restore_members(run, entry, rec)
    else:
        landed = _land(run, downloader, entry, final)
        result = landed.outcome.result
        assert result is not None
        _record(records, entry, final, result)
        if done_extraction and (rec is None or rec.sha256 != result.sha256):
            records.drop_extracted(entry.name)  # a different archive: unpack it again
    if entry.is_archive and run.how.extract:
        _unpack(run, entry, final, landed)
    return landed.outcome


def _land(run: FetchRun, downloader: Downloader, entry: FileEntry, final: Path) -> _Landed:
    """Adopt the file at ``final`` when it verifies, else download it."""
    layout, log = run.layout, run.how.log
    if final.exists():
        result = downloader.adopt(
            entry.name, entry.urls(run.mirrors), final,
            expected_size=entry.size, expected_sha256=entry.sha256,
            accept=lambda path: content_problem(entry, path),
        )
        if result is None and log is not None:
            log(f"{entry.name}: the file in {final.parent} could not be verified; "
                "downloading it again")
        if result is not None:  # (a run killed right after landing it left its state)
            for p in (layout.partial_path(entry), layout.partial_state_path(entry)):
                with contextlib.suppress(OSError):
                    p.unlink()
            return _Landed(FileOutcome(result, entry.name, result.status))
    streamer = _streamer(run, entry)
    try:
        result = downloader.download(
            entry.name,
            entry.urls(run.mirrors),
            layout.partial_path(entry),
            layout.partial_state_path(entry),
            final,
            expected_size=entry.size,
            expected_etag=entry.etag,
            expected_sha256=entry.sha256,
            observer=streamer,
            accept=lambda path: content_problem(entry, path),
        )
    except BaseException:
        if streamer is not None:
            streamer.abort()
        raise
    landed = _Landed(FileOutcome(result, entry.name, result.status))
    if streamer is not None:
        landed.stream_stats = streamer.finish()
        landed.directory = streamer.plan
        landed.vouched = streamer.checked_names()
    return landed


def _record(records: Records, entry: FileEntry, final: Path, result: DownloadResult) -> None:
    """The verified file's record, with the stat that lets later runs trust it unhashed."""
    st = final.stat()
    records.put_file(
        FileRecord(
            name=entry.name,
            size=result.size,
            etag=result.etag,
            sha256=result.sha256,
            md5=result.md5,
            url=result.url,
            etag_check=result.etag_check,
            st_size=st.st_size,
            st_mtime_ns=st.st_mtime_ns,
        )
    )


def _unpack(run: FetchRun, entry: FileEntry, final: Path, landed: _Landed) -> None:
    """Unpack the archive (what streaming did not finish) and drop it unless it is kept."""
    from isic2020.archive.local import extract_archive

    outcome = landed.outcome
    if landed.stream_stats is None and outcome.status in ("downloaded", "resumed"):
        # The transfer's buffers (one set per connection, up to 64) are garbage now: hand the
        # heap back before the extraction forks its workers, which would inherit it.
        release_free_memory()
    ext = extract_archive(run.layout, entry, records=run.records, progress=run.how.progress,
                          log=run.how.log, plan=landed.directory, vouched=landed.vouched)
    if ext.checked:
        run.checked.setdefault(run.layout.images_dir(entry.format, entry.split),
                               set()).update(ext.checked)
    outcome.extraction = ext.to_dict()
    if landed.stream_stats is not None:
        outcome.extraction["while_downloading"] = landed.stream_stats.to_dict()
    if not run.place.keep_archives:
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
    if landed.stream_stats is not None:
        # The archive's parsed directory and the transfer's buffers are garbage now: the heap
        # goes back before the next archive's transfer and directory take theirs (see cli's
        # flat_heap for the allocator settings), or before the closing verify (which does
        # it itself). Not after a re-run: nothing was allocated.
        landed.directory = None
        run.heap_to_trim = True


def _streamer(run: FetchRun, entry: FileEntry) -> Any:
    """The observer that unpacks ``entry`` while it downloads (``streaming``), or None when
    it will not be unpacked (or ``$ISIC2020_STREAM=0`` turns it off, to compare). The closing
    verify's metadata checks start once the archive's directory is parsed: both at once would
    add their peaks of memory (the CSVs' tables; the archive's entries)."""
    if not (entry.is_archive and run.how.extract) or not config.flag(config.STREAM, True):
        return None
    from isic2020.archive.streaming import StreamingExtractor

    precheck = run.precheck
    process_min = config.load().stream_process_min
    return StreamingExtractor(
        run.layout, entry, log=run.how.log,
        on_planned=(lambda: run.after_small(precheck.start)) if precheck is not None else None,
        **({} if process_min is None else {"process_min": process_min}),
    )
