"""What a subset or ``--direct`` fetch would take out of each remote archive: the dry run.

Why a module of its own, and why it does not simply call the fetch path: a member fetch makes
its decisions (the selection from the CSVs, which members are already in the layout, how the
ranges coalesce) interleaved with side effects. ``open_remote`` caches the central directory,
``fetch_members`` creates the image folder, ``_fetch_members`` records the selection. A dry run
promises to write nothing anywhere, so it takes the same decisions with the same pieces, minus
their writes: ``open_remote(save=False)`` (the same HEAD, cache key and ETag rule; a directory
read from the server is never stored), ``checked_in_order`` and ``present_files`` for what is
already in place, and the same ``plan_ranges`` with the same defaults, so the figure it prints
is what the fetch then moves.

The one thing it cannot do without writing is choose a subset before the metadata CSVs are on
disk: the fetch downloads them first. Then the row says so instead of guessing, and the exit
code stays 0 (nothing is wrong; the answer just needs the CSVs).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isic2020.archive.decode import present_files
from isic2020.archive.members import checked_in_order, image_members, plan_ranges
from isic2020.archive.remote import RemoteMember, RemoteZip, cache_path, open_remote
from isic2020.catalog.manifest import FileEntry, Manifest
from isic2020.catalog.selection import Selection, make_selection, read_images_file
from isic2020.errors import DownloadError, UsageError, VerificationError
from isic2020.report import human_size
from isic2020.store.layout import Layout
from isic2020.transfer.engine import DownloadOptions

#: ``state`` of a row whose subset cannot be chosen yet (a stable prefix for scripts).
NEEDS_CSVS = "needs the metadata CSVs"


@dataclass
class MemberPlan:
    """One archive of a dry run in subset or direct mode (a row of ``FetchReport.dry_run``).

    ``name, state, size, url, to_transfer, disk_needed, free`` are the keys every dry-run row
    has, so scripts summing the rows need not know the modes. ``images`` and the counts after
    it are None when the subset could not be chosen (the CSVs are not on disk yet).
    """

    name: str
    split: str
    format: str
    mode: str  # "subset" or "direct"
    selection: str  # how the subset is chosen (its options), or "all images"
    state: str
    size: int | None = None  # the archive's size, from the HEAD
    url: str | None = None
    images: int | None = None  # chosen
    not_in_archive: int | None = None  # chosen but absent from the archive
    present: int | None = None  # already at their final path with the directory's size
    to_fetch: int | None = None
    archive_images: int | None = None  # image members the archive holds
    directory_bytes: int = 0  # reading the central directory (0 when the cache is valid)
    directory_cached: bool = False
    member_bytes: int = 0  # the ranged GETs for the members to fetch
    ranges: int = 0
    to_transfer: int = 0
    disk_needed: int = 0  # the members to fetch, unpacked
    free: int | None = 0  # None: the filesystem does not say (ramfs)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_csvs(layout: Layout, man: Manifest, split: str) -> bool:
    from isic2020.catalog.tables import find_metadata_files

    files = find_metadata_files(layout, man)
    return (files.train if split == "train" else files.test_metadata) is not None


def _todo(
    remote: RemoteZip, chosen: list[RemoteMember], dest_dir: Path
) -> tuple[int, list[RemoteMember]]:
    """``(present, to fetch)`` by ``fetch_members``' own pieces: each member once, in archive
    order, within the same limits; present when its final path has the directory's size."""
    here = present_files(dest_dir)
    present = 0
    todo: list[RemoteMember] = []
    for m in checked_in_order(remote, chosen):
        if here.get(str(m.image_file_name())) == m.file_size:
            present += 1
        else:
            todo.append(m)
    return present, todo


def plan_members(
    layout: Layout,
    man: Manifest,
    entry: FileEntry,
    mirrors: list[str],
    opts: DownloadOptions,
    *,
    images: str | os.PathLike[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    where: str | None = None,
    free: int | None = 0,
) -> MemberPlan:
    """What ``fetch`` would transfer and write for ``entry`` in subset or direct mode.

    Reads the data directory and asks the server (HEAD, ranged GETs for an uncached
    directory); writes nothing. A bad ``--where`` or images file is the UsageError the fetch
    would give; a host that fails or serves a damaged archive is reported in ``state`` (the
    next URL is tried first), as the plain dry run reports an unreachable host.
    """
    from isic2020.catalog.tables import load_metadata

    split, fmt = entry.split, entry.format
    subset = images is not None or sample is not None or where is not None
    http_urls = [u for u in entry.urls(mirrors) if not u.startswith("file://")]
    if not http_urls:
        raise UsageError(
            "direct and partial fetch need an http(s) URL (file:// mirrors have no byte ranges)",
            "fetch the whole archive instead",
        )
    sel: Selection | None = None
    unusable: str | None = None  # why the CSVs on disk cannot be used to choose
    if not subset:
        sel = Selection(split=split, names=[], format=fmt)
    else:
        if _has_csvs(layout, man, split):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df = load_metadata(split, layout.root, image_format=None, manifest=man.path)
            except VerificationError as exc:
                # The fetch would download a CSV that changed since it was verified again
                # before choosing, so a damaged one is a reason to wait, not a failure.
                unusable = exc.message
            else:
                sel = make_selection(
                    df, split, images_file=images, sample=sample, seed=seed, where=where,
                    fmt=fmt,
                )
        if sel is None and images is not None:
            read_images_file(images)  # a malformed list is refused now, not after the CSVs
    how = Selection(split=split, names=[], images_file=None if images is None else str(images),
                    sample=sample, seed=seed, where=where, format=fmt).describe()
    plan = MemberPlan(
        name=entry.name, split=split, format=fmt, mode="subset" if subset else "direct",
        selection=how if subset else "all images", state="", free=free,
    )
    remote: RemoteZip | None = None
    failures: list[str] = []
    for url in http_urls:
        try:
            remote = open_remote(
                url, cache_path(layout.state_dir, entry.name), timeouts=opts.timeouts,
                retry=opts.retry, expected_etag=entry.etag, connections=opts.connections,
                save=False,
            )
            found = image_members(remote, fmt)
            break
        except (DownloadError, VerificationError) as exc:
            kind = "damaged" if isinstance(exc, VerificationError) else "unreachable"
            failures.append(f"{kind} ({exc.message})")
            remote = None
    if remote is None:
        plan.state = "; ".join(failures) or "unreachable"
        plan.url = http_urls[-1]
        return plan
    plan.url, plan.size = remote.url, remote.size
    plan.directory_cached = remote.from_cache
    plan.directory_bytes = 0 if remote.from_cache else remote.bytes_read
    plan.archive_images = len(found)
    plan.to_transfer = plan.directory_bytes
    if sel is None:
        plan.state = (f"{NEEDS_CSVS}: they are downloaded first, the subset cannot be "
                      "sized until then")
        if unusable:
            plan.state += f" (the ones on disk do not load: {unusable})"
        plan.note = (f"run `isic2020 fetch --split {split} --format none --data-dir "
                     f"{layout.root}` (a few MB), then this dry run again to size the subset")
        return plan
    if subset:
        chosen = [found[n] for n in sel.names if n in found]
        plan.images = len(sel.names)
        plan.not_in_archive = len(sel.names) - len(chosen)
    else:
        chosen = list(found.values())
        plan.images, plan.not_in_archive = len(chosen), 0
    try:
        present, todo = _todo(remote, chosen, layout.images_dir(fmt, split))
    except VerificationError as exc:
        plan.state = f"damaged ({exc.message})"
        return plan
    spans = plan_ranges(remote, todo)
    plan.present, plan.to_fetch = present, len(todo)
    plan.member_bytes = sum(s.length for s in spans)
    plan.ranges = len(spans)
    plan.to_transfer = plan.directory_bytes + plan.member_bytes
    plan.disk_needed = sum(m.file_size for m in todo)
    plan.state = (f"{plan.mode}: {len(todo)} to fetch" if todo
                  else f"{plan.mode}: all {present} present")
    return plan


def _ranges(n: int) -> str:
    return f"{n} range" if n == 1 else f"{n} ranges"


def member_lines(row: dict[str, Any]) -> list[str]:
    """The indented lines under a subset/direct row of the human dry-run summary."""
    pad = " " * 6
    if row.get("images") is None:
        lines = []
        if row.get("archive_images") is not None:
            lines.append(
                f"{pad}{row['selection']}: not sized; the figures above count only the "
                f"directory ({human_size(row['directory_bytes'])}) of the archive's "
                f"{row['archive_images']} images"
            )
        if row.get("note"):
            lines.append(f"{pad}{row['note']}")
        return lines
    if row["mode"] == "direct":
        chosen = f"all images: {row['images']} in the archive"
    else:
        chosen = (f"{row['selection']}: {row['images']} images chosen, "
                  f"{row['not_in_archive']} not in the archive")
    directory = ("directory cached" if row["directory_cached"]
                 else f"directory {human_size(row['directory_bytes'])}")
    return [
        f"{pad}{chosen}; {row['present']} already present, {row['to_fetch']} to fetch",
        f"{pad}{directory}, members {human_size(row['member_bytes'])} in {_ranges(row['ranges'])}; "
        f"{human_size(row['disk_needed'])} unpacked",
    ]
