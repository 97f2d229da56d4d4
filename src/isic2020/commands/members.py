"""One archive of a subset or ``--direct`` fetch: only the chosen members' byte ranges, straight
into the layout.

The archive is never stored; its central directory is cached by ETag in
``DATA/.isic2020/remote/``. A subset is chosen from the metadata CSVs (which the fetch
downloads first) and recorded in ``DATA/.isic2020/selections/`` so that ``verify`` checks the
images against it instead of the whole CSV. Subsets add up: what earlier subset fetches put in
the folder stays expected, and a subset fetched into a folder that holds the whole split
records nothing (the whole split stays expected). A ``--direct`` fetch of the whole split removes
the selection: the CSV is what the images are checked against again. ``--reset-selection``
replaces the recorded subset by the new one and removes the images outside it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from isic2020 import config
from isic2020.catalog.manifest import EXTENSIONS, FileEntry
from isic2020.catalog.selection import (
    Selection,
    load_selection,
    make_selection,
    save_selection,
    selection_path,
    subset_grows,
    supersede_selection,
)
from isic2020.commands.fetch_options import FetchRun
from isic2020.commands.fetch_report import FileOutcome
from isic2020.errors import Interrupted, Isic2020Error, VerificationError
from isic2020.store.fsutil import remove_file
from isic2020.store.layout import Layout
from isic2020.transfer.model import DownloadResult

if TYPE_CHECKING:
    from isic2020.archive.members import MemberFetchOptions


def choose_subset(run: FetchRun, entry: FileEntry) -> Selection:
    """The images of ``entry``'s split that ``run.what`` chooses (every one for ``--direct``:
    the names are filled in from the archive)."""
    from isic2020.catalog.tables import selection_metadata

    what = run.what
    if not what.subset:
        return Selection(split=entry.split, names=[], format=entry.format)
    df = selection_metadata(entry.split, run.layout.root, run.manifest, what.where)
    return make_selection(
        df, entry.split, images_file=what.images, sample=what.sample, seed=what.seed,
        where=what.where, fmt=entry.format,
    )


def _listed_not_found(run: FetchRun, entry: FileEntry, found: dict[str, Any]) -> list[str]:
    """The images the split's (sha256-pinned) metadata lists that are not among ``found``;
    none when the metadata cannot be read (the closing verify reports that instead). The
    names come from the closing verify's metadata precheck when it ran (the CSVs are read
    once per fetch), else from the CSVs."""
    from isic2020.catalog.tables import load_metadata_table

    try:
        run.wait_small()
        pre = run.precheck.result() if run.precheck is not None else None
        roles = ("ground_truth", "ground_truth_v2") if entry.split == "train" else (
            "test_metadata",)
        names = next((pre[1][r] for r in roles if pre is not None and r in pre[1]), None)
        if names is None:
            names = load_metadata_table(entry.split, run.layout.root, run.manifest)
    except Interrupted:
        raise
    except Isic2020Error:  # a CSV that failed is the fetch's error, raised after the archive
        return []
    return sorted(str(n) for n in names["image_name"] if n is not None and n not in found)


def member_options(run: FetchRun) -> MemberFetchOptions:
    """The member fetch's options from the run's (connections, timeouts, retry, log, bar)."""
    from isic2020.archive.members import MemberFetchOptions

    opts = run.options
    process_min = config.load().stream_process_min
    return MemberFetchOptions(connections=opts.connections,
                              max_connections=opts.max_connections, timeouts=opts.timeouts,
                              retry=opts.retry, log=run.how.log, progress=run.how.progress,
                              **({} if process_min is None else {"process_min": process_min}))


def fetch_members(run: FetchRun, entry: FileEntry) -> FileOutcome:
    """The chosen members of ``entry`` at their final paths, each checked against the CRC-32
    of the central directory; the selection recorded for ``verify``."""
    from isic2020.archive.direct import fetch_remote_members
    from isic2020.archive.members import image_members
    from isic2020.archive.remote import cache_path
    from isic2020.archive.staging import Stage

    layout, subset = run.layout, run.what.subset
    sel = choose_subset(run, entry)
    reset = subset and run.what.reset_selection
    record = not subset or reset or subset_grows(layout, entry.split, entry.format)
    if not record and run.how.log is not None:  # the whole split is here: nothing to record
        run.how.log(f"{entry.name}: {layout.images_dir(entry.format, entry.split)} holds "
                    "the whole split; the subset's images are checked as part of it")
    removed = _reset_folder(layout, entry, sel) if reset else 0
    dest_dir = layout.images_dir(entry.format, entry.split)
    missing: list[str] = []

    doubted: list[bool] = []  # a directory was doubted (and read again) once already
    chosen: dict[str, Any] = {}  # the image members of the directory last chosen from
    # header offset -> final path of each image chosen: strings, made once (a Path and the
    # rules' name per member cost a plan of 33,126 members several times its own work)
    finals: dict[int, str] = {}
    base, ext = os.fspath(dest_dir) + os.sep, EXTENSIONS[entry.format]

    def choose(remote: Any) -> list[Any]:
        found = image_members(remote, entry.format)
        chosen.clear()
        chosen.update(found)
        finals.clear()
        finals.update((m.header_offset, f"{base}{name}.{ext}") for name, m in found.items())
        if not subset:
            sel.names = sorted(found)
            return list(found.values())
        missing[:] = [n for n in sel.names if n not in found]
        return [found[n] for n in sel.names if n in found]

    def confirm(remote: Any) -> None:
        # The pinned CSVs list images this directory lacks: a directory has no checksum, and
        # one damaged in transit (a flipped byte in a name makes an image a stray file) would
        # otherwise be cached and trusted by every later run. Read it again once (the member
        # fetch drops the cache on this error, then fetches what is still missing); if the
        # archive really lacks them, the closing verify says so. Checked once the members
        # are in place, so that they need not wait for the CSVs.
        absent = [] if subset or doubted else _listed_not_found(run, entry, chosen)
        if absent:
            doubted.append(True)
            raise VerificationError(
                f"{entry.name}: its {'cached ' if remote.from_cache else ''}directory lacks "
                f"{len(absent):,} image(s) the metadata lists ({', '.join(absent[:3])})")

    t0 = time.monotonic()
    remote, res = fetch_remote_members(
        entry.urls(run.mirrors),
        choose,
        lambda m: finals[m.header_offset],
        member_options(run).but(stage=Stage(layout.staging_dir(entry), dest_dir)),
        cache=cache_path(layout.state_dir, entry.name),
        expected_etag=entry.etag,
        confirm=confirm,
    )
    if record:
        _record_selection(layout, entry, sel, subset, reset)
    if res.checked:  # checked as written: the closing verify need not read them back
        cut = len(base)  # (its paths are base + name: no os.path call per image)
        run.checked.setdefault(dest_dir, set()).update(
            p[cut:] if p.startswith(base) else os.path.basename(p) for p in res.checked)
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
    if reset:
        outcome.extraction["removed_outside_selection"] = removed
    return outcome


def _record_selection(
    layout: Layout, entry: FileEntry, sel: Selection, subset: bool, reset: bool = False
) -> None:
    """A subset adds to the recorded one (or replaces it: ``reset``); the whole split removes
    it; a subset of a folder that holds the whole split leaves it the whole split."""
    sel_path = selection_path(layout.state_dir, entry.split, entry.format)
    if subset:
        prev = None if reset else load_selection(sel_path)
        if prev is not None:
            sel.names = sorted(set(prev.names) | set(sel.names))
        save_selection(sel_path, sel)
    else:
        supersede_selection(layout, entry.split, entry.format)


def _reset_folder(layout: Layout, entry: FileEntry, sel: Selection) -> int:
    """``--reset-selection``: remove the images of the folder outside the new subset (only
    ``ISIC_*`` image files of ``DATA/<format>/<split>/``); how many were removed."""
    keep = set(sel.names)
    folder = layout.images_dir(entry.format, entry.split)
    removed = 0
    try:
        with os.scandir(folder) as it:
            stale = [e.name for e in it if e.name.startswith("ISIC_") and e.is_file()
                     and e.name.rsplit(".", 1)[0] not in keep]
    except FileNotFoundError:
        return 0
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            remove_file(folder / name)
            removed += 1
    return removed


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

