"""Repair without the archive: the images of an extracted archive that is no longer kept.

When ``--no-keep-archives`` deleted an archive after unpacking it (or ``clean --archives``, or a
user), the images are the only copy. A re-run of the same ``fetch`` then:

1. loads the archive's saved directory (``archive.saved``) and compares it with the image
   folder by names and sizes: one ``scandir``, nothing read, nothing asked of a server, so a
   complete re-run stays free. (No saved directory, from an older version: the remote zip's
   directory is read once and saved.)
2. fetches only the missing or mis-sized members by their byte ranges from the remote zip
   (``archive.direct``: the subset machinery, each member inflated and checked against its
   CRC-32, written to a temporary and renamed: atomic), and reports how many images it
   repaired and the bytes it transferred;
3. from a server that serves no byte ranges, fails in one line (exit 3) that says so and gives
   the exact commands that download the whole archive and unpack it instead.

A file of the right size with changed bytes is not found here (that would read every image on
every re-run): ``verify`` finds it (integrity; ``--deep`` decodes), and once it is deleted the
next ``fetch`` restores it.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from isic2020.catalog.manifest import FileEntry
from isic2020.commands.fetch_options import FetchRun
from isic2020.commands.fetch_report import FileOutcome
from isic2020.commands.members import member_options
from isic2020.commands.ondisk import cached_result
from isic2020.errors import DownloadError
from isic2020.report import plural
from isic2020.store.records import FileRecord

NOT_KEPT = "extracted (archive not kept)"
REPAIRED = "repaired (archive not kept)"


def fetch_command(run: FetchRun, *extra: str) -> str:
    """The ``isic2020 fetch`` of this run's split and format, data directory and mirrors."""
    args = ["isic2020", "fetch", "--split", run.what.split, "--format", run.what.fmt,
            "--data-dir", str(run.layout.root)]
    for m in run.place.mirrors:
        args += ["--mirror", m]
    if not run.place.keep_archives:
        args.append("--no-keep-archives")
    if run.how.direct:
        args.append("--direct")
    return shlex.join([*args, *extra])


def restore_members(run: FetchRun, entry: FileEntry, rec: FileRecord) -> FileOutcome:
    """The images of ``entry`` (extracted, archive gone) checked by names and sizes against
    its directory; the missing or damaged ones fetched by their byte ranges."""
    from isic2020.archive.remote import damaged
    from isic2020.archive.rules import Refused
    from isic2020.archive.saved import check_folder

    layout = run.layout
    final = layout.final_path(entry)
    try:
        check = check_folder(layout.state_dir, entry.name, entry.format,
                             layout.images_dir(entry.format, entry.split), rec.size, rec.etag,
                             rec.sha256)
    except Refused as exc:
        raise damaged(entry.name, exc) from None
    if check is not None and not check.missing.members:
        outcome = FileOutcome(cached_result(rec, final), entry.name, NOT_KEPT)
        outcome.extraction = {"repaired": 0, "repaired_images": []}
        return outcome
    return _fetch_missing(run, entry, rec, check is not None)


def _missing(run: FetchRun, entry: FileEntry, remote: Any) -> Any:
    from isic2020.archive.remote import damaged
    from isic2020.archive.rules import Refused
    from isic2020.archive.saved import missing_members

    try:
        return missing_members(remote, entry.format, run.layout.images_dir(entry.format,
                                                                           entry.split))
    except Refused as exc:
        raise damaged(entry.name, exc) from None


def _fetch_missing(run: FetchRun, entry: FileEntry, rec: FileRecord, known: bool) -> FileOutcome:
    """Open the remote zip (its directory from the saved one when the ETag is the same: no
    directory bytes) and fetch what is missing or damaged. ``known``: the saved directory
    already said something is; else a host that cannot give the directory is only logged."""
    from isic2020.archive.direct import fetch_remote_members
    from isic2020.archive.remote import RangesNotServed
    from isic2020.archive.saved import directory_path

    layout, log = run.layout, run.how.log
    found: list[Any] = []
    finals: dict[int, str] = {}
    dest_dir = layout.images_dir(entry.format, entry.split)

    def choose(remote: Any) -> list[Any]:
        todo = _missing(run, entry, remote)
        found[:] = [todo]
        finals.clear()
        for m in todo.members:
            finals[m.header_offset] = m.image_file_name(None)
        if todo.members and log is not None:
            log(f"{entry.name}: {plural(len(todo.members), 'image')} missing or damaged "
                f"({len(todo.absent)} missing, {len(todo.wrong_size)} of another size); "
                "fetching only those from the remote zip")
        return todo.members

    t0 = time.monotonic()
    try:
        remote, res = fetch_remote_members(
            entry.urls(run.mirrors), choose, lambda m: dest_dir / finals[m.header_offset],
            member_options(run), cache=directory_path(layout.state_dir, entry.name),
            expected_etag=entry.etag,
        )
    except DownloadError as exc:
        if not found and not known:  # its directory could not be read: nothing to compare
            if log is not None:
                log(f"{entry.name}: its images cannot be checked against the remote zip "
                    f"({exc.message}); the closing verify checks them")
            return FileOutcome(cached_result(rec, layout.final_path(entry)), entry.name,
                               NOT_KEPT)
        if not isinstance(exc, RangesNotServed):
            raise
        n = len(found[0].members) if found else 0
        what = f"{plural(n, 'missing or damaged image')} of {entry.name}" if n else entry.name
        raise DownloadError(
            f"{what} cannot be fetched alone: {exc.message}",
            "download the whole archive and unpack it instead: "
            f"`{fetch_command(run, '--no-extract')} && {fetch_command(run)}`",
        ) from None
    todo = found[0] if found else None
    result = cached_result(rec, layout.final_path(entry))
    result.url = remote.url
    result.bytes_transferred = remote.bytes_read + res.bytes_transferred
    result.retries = remote.retries + res.retries
    result.seconds = round(time.monotonic() - t0, 3)
    repaired = res.written
    result.status = REPAIRED if repaired else NOT_KEPT
    outcome = FileOutcome(result, entry.name, result.status)
    outcome.extraction = {
        "repaired": repaired,
        "repaired_images": todo.names if todo is not None else [],
        "missing": sorted(todo.absent) if todo is not None else [],
        "wrong_size": sorted(todo.wrong_size) if todo is not None else [],
        "bytes_transferred": result.bytes_transferred,
        "directory_bytes": remote.bytes_read,
        "members": res.to_dict(),
    }
    return outcome


