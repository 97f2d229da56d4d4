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
(what is already done), ``repair`` (images of an archive no longer kept, by byte ranges),
``fetch_report`` (the report and its JSON).
"""

from __future__ import annotations

import contextlib
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
from isic2020.commands.ondisk import PlannedFetch, check_space, trusted
from isic2020.commands.repair import fetch_command
from isic2020.commands.sources import check_mirrors, first_answer
from isic2020.errors import DiskError
from isic2020.report import file_done, overall
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records
from isic2020.transfer.engine import Downloader
from isic2020.transfer.localfile import file_path, is_file_url

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
    """Download, verify, unpack and check one selection of the dataset (``isic2020 fetch``).

    Call it with keywords, ``fetch(split="train", fmt="jpeg", data_dir="./isic2020-data")``,
    or with the three option objects (the only positional parameters); a keyword replaces that
    field of an object given, and an unknown keyword is a ``TypeError`` before anything is
    written. The keywords, by object:

    ``what`` (:class:`FetchWhat`), which images:
        split: ``"train"``, ``"test"`` or ``"all"`` (default ``"all"``).
        fmt: ``"jpeg"`` (default), ``"dicom"`` (corrected), ``"dicom-original"`` or
            ``"none"`` (the metadata CSVs only).
        images: a file naming the images to fetch (one per line, or a CSV with an
            ``image_name`` column); only their byte ranges are read out of the remote zip.
        sample: fetch this many images, stratified by target.
        seed: the seed of ``sample`` (default 0): the same seed chooses the same images.
        where: a pandas query on the metadata (``"target == 1 and sex == 'female'"``).
        reset_selection: the subset replaces the recorded one (images outside it are
            removed) instead of adding to it.
    ``place`` (:class:`FetchPlace`), from where and to where:
        data_dir: the data directory (default ``$ISIC2020_DATA_DIR``, else
            ``$XDG_DATA_HOME/isic2020``, else ``~/.local/share/isic2020``).
        manifest: a manifest TOML path or a loaded ``Manifest`` (default
            ``$ISIC2020_MANIFEST``, else the bundled one).
        mirrors: folder URLs (``http(s)://``, ``file://``, ``s3://``) tried in order instead of
            the manifest's hosts, each holding the official file names.
        keep_archives: keep the zips in ``DATA/archives`` after unpacking (default True).
    ``how`` (:class:`FetchHow`), how it runs:
        connections: parallel connections per file, fixed (default None: start at 16 and
            add more while the rate rises, up to `$ISIC2020_MAX_CONNECTIONS`, 64).
        extract: unpack and verify the images (default True; False: archives only).
        direct: read every image straight out of the remote zip, never storing it.
        dry_run: return what would be transferred and the disk needed; write nothing.
        lock_timeout: seconds to wait for another isic2020 on the data directory (None:
            wait as long as it takes).
        progress: draw progress bars on stderr.
        log: a callable given each message line (None: silent).
        options: the download engine's options whole (timeouts, retries, chunk size).
        limit_rate: an overall cap in bytes/s over every connection (``"10M"``: binary
            units, as aria2c; None: ``$ISIC2020_LIMIT_RATE``, else none).
        read_timeout: seconds a request may wait between two received blocks.
        connect_timeout: seconds to open a connection.
        retry_window: seconds without a new byte before a host is given up.

    Returns a :class:`FetchReport` (``report.exit_code``, ``report.to_dict()`` as the CLI's
    ``--json``); a report with ``exit_code`` 1 means the closing verify found a problem. Raises
    :class:`~isic2020.errors.Isic2020Error` subclasses for usage (2), download, disk and lock
    (3) failures, whose ``exit_code`` is the CLI's; what finished is kept, so calling it again
    resumes.
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
        with data_dir_lock(run.layout.lock_path, timeout=how.lock_timeout, on_wait=how.log,
                           read_only_ok=True):  # a no-op fetch works on read-only data
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
    downloader = Downloader(run.options)
    outcomes: dict[str, FileOutcome] = {}
    small_entries = [e for e in entries if not e.is_archive]
    try:
        plan = PlannedFetch(layout, run.records, entries, how.extract,
                            members_only=run.members_only,
                            server_sizes=server_sizes(run, downloader, entries))
        space = check_space(plan)
        if how.extract:
            run.precheck = MetadataPrecheck(layout, run.manifest, run.what.split)
        expected = {**{e.name: 0 for e in entries if e.is_archive and run.members_only},
                    **space.sizes}
        with overall(f"{run.what.split} {run.what.fmt}", expected, enabled=how.progress):
            # The CSVs download side by side, and beside the first archive (a subset's archive
            # waits: it is chosen from them; ``--direct`` reads the zip's directory meanwhile and
            # checks it against them before its members);
            # the report lists the files in the manifest's order.
            small = SmallFiles(run, small_entries).start()
            run.after_small, run.wait_small = small.after, small.wait
            for entry in (e for e in entries if e.is_archive):
                if run.what.subset:
                    small.wait()
                    _forget(small_entries)
                outcomes[entry.name] = _fetch_entry(run, downloader, entry)
                file_done(entry.name)
            small.wait()
            _forget(small_entries)
    finally:
        downloader.close()
    outcomes.update(small.outcomes)
    report.files.extend(outcomes[e.name] for e in entries)
    if how.extract:
        report.verification = verify_if_changed(
            layout, run.manifest, run.records, run.what.split, run.what.fmt, how.progress,
            run.precheck, run.checked,
        )
        if not run.what.subset:  # the repair is this very fetch (with its mirrors)
            report.verification.repair = fetch_command(run)
    if report.exit_code == 0:
        write_notices(layout)


def _forget(entries: list[FileEntry]) -> None:
    """The overall bar stops waiting for files that are done (see ``report.file_done``)."""
    for e in entries:
        file_done(e.name)


def server_sizes(run: FetchRun, downloader: Downloader, entries: list[FileEntry]) -> dict[str, int]:
    """The size each server says, for the files whose exact size the manifest does not pin
    (a HEAD each; a ``file://`` mirror's file is looked at), so the space check counts what
    this mirror serves. A host that does not answer leaves the published size."""
    sizes: dict[str, int] = {}
    for e in entries:
        if e.size is not None or (e.is_archive and run.members_only):
            continue
        if run.records is not None and trusted(run.records.file(e.name), e,
                                               run.layout.final_path(e)):
            continue
        size, url, _ = first_answer(e, run.mirrors, downloader)
        if url is not None and is_file_url(url):
            with contextlib.suppress(OSError):
                size = file_path(url).stat().st_size
        if size:
            sizes[e.name] = size
    return sizes


def _fetch_entry(run: FetchRun, downloader: Downloader, entry: FileEntry) -> FileOutcome:
    if not entry.is_archive or not run.members_only:
        return fetch_file(run, downloader, entry)
    if (run.precheck is not None and run.how.direct and not run.what.subset
            and direct_has_work(run.layout, entry)):
        # the closing verify's metadata checks, while members download (once the CSVs are in)
        run.after_small(run.precheck.start)
    return fetch_members(run, entry)
