"""One archive of a subset or ``--direct`` fetch: only the chosen members' byte ranges, straight
into the layout.

The archive is never stored; its central directory is cached by ETag in
``DATA/.isic2020/remote/``. A subset is chosen from the metadata CSVs (which the fetch
downloads first) and recorded in ``DATA/.isic2020/selections/`` so that ``verify`` checks the
images against it instead of the whole CSV. Subsets add up: what earlier subset fetches put in
the folder stays expected. A ``--direct`` fetch of the whole split removes the selection: the
CSV is what the images are checked against again.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any

from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.selection import (
    Selection,
    load_selection,
    make_selection,
    save_selection,
    selection_path,
)
from isic2020.commands.fetch_options import FetchRun
from isic2020.commands.fetch_report import FileOutcome
from isic2020.store.fsutil import remove_file
from isic2020.store.layout import Layout
from isic2020.transfer.model import DownloadResult


def choose_subset(run: FetchRun, entry: FileEntry) -> Selection:
    """The images of ``entry``'s split that ``run.what`` chooses (every one for ``--direct``:
    the names are filled in from the archive)."""
    from isic2020.catalog.tables import load_metadata

    what = run.what
    if not what.subset:
        return Selection(split=entry.split, names=[], format=entry.format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_metadata(entry.split, run.layout.root, image_format=None,
                           manifest=run.manifest.path)
    return make_selection(
        df, entry.split, images_file=what.images, sample=what.sample, seed=what.seed,
        where=what.where, fmt=entry.format,
    )


def fetch_members(run: FetchRun, entry: FileEntry) -> FileOutcome:
    """The chosen members of ``entry`` at their final paths, each checked against the CRC-32
    of the central directory; the selection recorded for ``verify``."""
    from isic2020.archive.direct import fetch_remote_members
    from isic2020.archive.members import image_members
    from isic2020.archive.remote import cache_path

    layout, opts, subset = run.layout, run.options, run.what.subset
    sel = choose_subset(run, entry)
    dest_dir = layout.images_dir(entry.format, entry.split)
    missing: list[str] = []

    def choose(remote: Any) -> list[Any]:
        found = image_members(remote, entry.format)
        if not subset:
            sel.names = sorted(found)
            return list(found.values())
        missing[:] = [n for n in sel.names if n not in found]
        return [found[n] for n in sel.names if n in found]

    t0 = time.monotonic()
    remote, res = fetch_remote_members(
        entry.urls(run.mirrors),
        choose,
        lambda m: dest_dir / m.image_file_name(),
        cache=cache_path(layout.state_dir, entry.name),
        expected_etag=entry.etag,
        connections=opts.connections,
        max_connections=opts.max_connections,
        timeouts=opts.timeouts,
        retry=opts.retry,
        log=run.how.log,
        progress=run.how.progress,
    )
    _record_selection(layout, entry, sel, subset)
    result = DownloadResult(
        name=entry.name,
        path=str(dest_dir),
        url=remote.url,
        size=remote.size,
        etag=remote.etag,
        sha256="",
        md5=None,
        etag_check="members: CRC-32 of each against the central directory",
        bytes_transferred=remote.bytes_read + res.bytes_transferred,
        seconds=round(time.monotonic() - t0, 3),
        retries=remote.retries + res.retries,
        status="subset" if subset else "direct",
    )
    outcome = FileOutcome(result, entry.name, result.status)
    outcome.extraction = {
        **res.to_dict(),
        "selection": sel.describe() if subset else "all images",
        "images": len(sel.names),
        "not_in_archive": missing,
        "directory_bytes": remote.bytes_read,
        "directory_cached": remote.from_cache,
    }
    return outcome


def _record_selection(layout: Layout, entry: FileEntry, sel: Selection, subset: bool) -> None:
    """A subset adds to the recorded one; the whole split removes it."""
    sel_path = selection_path(layout.state_dir, entry.split, entry.format)
    if subset:
        prev = load_selection(sel_path)
        if prev is not None:
            sel.names = sorted(set(prev.names) | set(sel.names))
        save_selection(sel_path, sel)
    else:
        with contextlib.suppress(FileNotFoundError):
            remove_file(sel_path)  # the whole split is here now: verify against the CSV again


def direct_has_work(layout: Layout, entry: FileEntry) -> bool:
    """Will ``--direct`` fetch members of ``entry`` (so the metadata checks of the closing
    verify can run meanwhile)? A cheap guess: fewer images in its folder than it holds. (A
    downloaded archive starts them itself, once its directory is parsed: ``fetch_step``.)"""
    try:
        with os.scandir(layout.images_dir(entry.format, entry.split)) as it:
            have = sum(1 for _ in it)
    except FileNotFoundError:
        have = 0
    return entry.images is None or have < entry.images

