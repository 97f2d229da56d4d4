"""``fetch``: the main job, from manifest to verified data on disk.

``fetch`` holds the data directory's lock for its whole run; the CSVs download side by side
and beside the first archive (``fetch_small``; a subset's archive waits for them: it is chosen
from them), the archives one after another: a whole file goes through ``fetch_step`` (trusted
from its record, adopted, or downloaded, then recorded and unpacked), an archive of a subset
or ``--direct`` fetch through ``members`` (only the chosen members' byte ranges). The selection is
then checked by the fast ``verify`` (``fetch_verify``), and a fetch that passed writes its
notices (``notices``). Each step is resumable on its own, so a re-run after any failure picks up
where the last one stopped. ``--dry-run`` (``dryrun``) takes the same decisions, writes nothing
and takes no lock.

Modules: ``fetch_options`` (what, where, how), ``sources`` (mirrors and hosts), ``ondisk``
(what is already done), ``fetch_report`` (the report and its JSON).
"""

from __future__ import annotations

import time
from typing import Any

from isic2020.catalog.manifest import FileEntry, Manifest, load_manifest
from isic2020.commands.dryrun import dry_run
from isic2020.commands.fetch_options import (
    FetchHow,
    FetchPlace,
    FetchRun,
    FetchWhat,
    check_options,
    download_options,
    engine_options,
    options_from_keywords,
)
from isic2020.commands.fetch_report import FetchReport, FileOutcome
from isic2020.commands.fetch_small import SmallFiles
from isic2020.commands.fetch_step import fetch_file
from isic2020.commands.fetch_verify import verify_if_changed
from isic2020.commands.members import direct_has_work, fetch_members
from isic2020.commands.notices import write_notices
from isic2020.commands.ondisk import check_space
from isic2020.commands.sources import check_mirrors
from isic2020.errors import DiskError
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records
from isic2020.transfer.engine import Downloader

__all__ = [
    "FetchHow",
    "FetchPlace",
    "FetchReport",
    "FetchWhat",
    "check_mirrors",
    "download_options",
    "fetch",
]


def fetch(
    what: FetchWhat | None = None,
    place: FetchPlace | None = None,
    how: FetchHow | None = None,
    **keywords: Any,
) -> FetchReport:
    """Download, verify, unpack and check one selection of the dataset.

    ``what`` (:class:`FetchWhat`): split, format and the subset (``images``/``sample``/
    ``where``/``seed``); only a subset's byte ranges are read out of the remote zip.
    ``place`` (:class:`FetchPlace`): data directory, manifest, mirrors, whether archives are
    kept. ``how`` (:class:`FetchHow`): connections, extraction, ``direct`` (every image out of
    the remote zip; the archive is never stored), dry run, lock timeout, progress and log.
    Every field is also a keyword, as in ``fetch(split="train", fmt="jpeg", data_dir=...)``;
    a keyword replaces that field of the object given. An unknown keyword is a ``TypeError``.

    Returns a :class:`FetchReport`; raises :class:`~isic2020.errors.Isic2020Error` subclasses
    for usage, download and disk failures (their ``exit_code`` is the CLI's).
    """
    t0 = time.monotonic()
    what, place, how = options_from_keywords(what, place, how, keywords)
    man = place.manifest if isinstance(place.manifest, Manifest) else load_manifest(
        place.manifest)
    if place.mirrors:  # a mirror's ETags depend on its uploader; a pinned sha256 decides
        man = man.for_mirrors()
    entries = man.select(what.split, what.fmt)
    check_options(what, how)
    mirrors = check_mirrors(place.mirrors, [e.name for e in entries])
    run = FetchRun(what, place, how, Layout.at(place.data_dir), man, mirrors, engine_options(how))
    report = FetchReport(str(run.layout.root), what.split, what.fmt)
    if how.dry_run:
        report.dry_run = dry_run(run, entries)
    else:
        _make_root(run.layout)
        with data_dir_lock(run.layout.lock_path, timeout=how.lock_timeout, on_wait=how.log):
            _fetch_locked(run, entries, report)
    report.seconds = time.monotonic() - t0
    return report


def _make_root(layout: Layout) -> None:
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskError(
            f"cannot create the data directory {layout.root}: {exc.strerror or exc}",
            "choose a writable place with --data-dir",
        ) from None


def _fetch_locked(run: FetchRun, entries: list[FileEntry], report: FetchReport) -> None:
    """Every file, the closing verify and the notices, under the data directory's lock."""
    from isic2020.checks.verify import MetadataPrecheck

    layout, how = run.layout, run.how
    run.records = Records(layout.records_path)
    run.records.heal(how.log)
    check_space(layout, run.records, entries, how.extract, run.members_only)
    if how.extract:
        run.precheck = MetadataPrecheck(layout, run.manifest, run.what.split)
    # The CSVs download side by side, and beside the first archive (a subset's archive waits:
    # it is chosen from them); the report lists the files in the manifest's order.
    small = SmallFiles(run, [e for e in entries if not e.is_archive]).start()
    run.after_small = small.after
    outcomes: dict[str, FileOutcome] = {}
    downloader = Downloader(run.options)
    try:
        for entry in (e for e in entries if e.is_archive):
            if run.members_only:
                small.wait()
            outcomes[entry.name] = _fetch_entry(run, downloader, entry)
        small.wait()
    finally:
        downloader.close()
    outcomes.update(small.outcomes)
    report.files.extend(outcomes[e.name] for e in entries)
    if how.extract:
        report.verification = verify_if_changed(
            layout, run.manifest, run.records, run.what.split, run.what.fmt, how.progress,
            run.precheck,
        )
    if report.exit_code == 0:
        write_notices(layout)


def _fetch_entry(run: FetchRun, downloader: Downloader, entry: FileEntry) -> FileOutcome:
    if not entry.is_archive or not run.members_only:
        return fetch_file(run, downloader, entry)
    if (run.precheck is not None and run.how.direct and not run.what.subset
            and direct_has_work(run.layout, entry)):
        run.precheck.start()  # the closing verify's metadata checks, while members download
    return fetch_members(run, entry)
