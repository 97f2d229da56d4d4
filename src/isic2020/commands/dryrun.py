"""``fetch --dry-run``: what a fetch would transfer and write, with nothing written anywhere.

One row per file of the selection (``FetchReport.dry_run``, the ``dry_run`` key of the JSON).
Every row has ``name, state, size, url, to_transfer, disk_needed, free``, so scripts summing the
rows need not know the modes; a whole archive's row also has ``disk_needed_direct`` (its images
alone, in whole blocks: what ``--direct`` would need), so the summary can say when the fetch
will not fit and ``--direct`` would. A whole file's row comes from its record or partial download on
disk and a HEAD to the first host that answers (``sources.first_answer``); a host that fails is
reported in ``state``, never a failure of the dry run.

Subset and ``--direct`` archives get a :class:`MemberRow`, and why it does not simply call the
member fetch: that makes its decisions (the selection from the CSVs, which members are already
in the layout, how the ranges coalesce) interleaved with side effects. ``open_remote`` caches
the central directory, ``fetch_members`` creates the image folder, ``commands.members`` records
the selection. A dry run promises to write nothing anywhere, so it takes the same decisions with
the same pieces, minus their writes: ``open_remote(save=False)`` (the same HEAD, cache key and
ETag rule; a directory read from the server is never stored), ``checked_in_order`` and
``present_files`` for what is already in place, and the same ``plan_ranges`` with the same
defaults, so the figure it prints is what the fetch then moves.

The one thing it cannot do without writing is choose a subset before the metadata CSVs are on
disk: the fetch downloads them first. Then the row says so instead of guessing, and the exit
code stays 0 (nothing is wrong; the answer just needs the CSVs).

Words: a *row* is one file of the dry run; *plan* appears here only in the archive's own
``plan_ranges`` (how member ranges coalesce into GETs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isic2020.archive.decode import present_files
from isic2020.archive.members import checked_in_order, image_members, plan_ranges
from isic2020.archive.remote import RemoteZip, cache_path, open_remote
from isic2020.archive.zipformat import Entry as RemoteMember
from isic2020.catalog.manifest import FileEntry, Manifest
from isic2020.catalog.selection import Selection, make_selection, read_images_file
from isic2020.commands.fetch_options import FetchRun, FetchWhat
from isic2020.commands.ondisk import images_on_disk, partial_bytes, trusted
from isic2020.commands.sources import first_answer, ranged_urls
from isic2020.errors import DownloadError, VerificationError
from isic2020.report import human_size, plural
from isic2020.store.fsutil import block_size, free_bytes, on_disk
from isic2020.store.layout import Layout
from isic2020.store.records import FileRecord, Records
from isic2020.transfer.engine import Downloader

#: ``state`` of a row whose subset cannot be chosen yet (a stable prefix for scripts).
NEEDS_CSVS = "needs the metadata CSVs"


@dataclass
class MemberRow:
    """One archive of a dry run in subset or direct mode (a row of ``FetchReport.dry_run``).

    ``images`` and the counts after it are None when the subset could not be chosen (the CSVs
    are not on disk yet).
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

def dry_run(run: FetchRun, entries: list[FileEntry]) -> list[dict[str, Any]]:
    """The rows of ``fetch --dry-run`` for ``entries``: whole files first, then (subset or
    ``--direct``) each archive's members."""
    members_only = run.members_only
    whole = [e for e in entries if not (e.is_archive and members_only)]
    rows = file_rows(run, whole)
    if members_only:
        free = free_bytes(run.layout.root)
        rows += [member_row(run, e, free).to_dict() for e in entries if e.is_archive]
    return rows


def file_rows(run: FetchRun, entries: list[FileEntry]) -> list[dict[str, Any]]:
    """What a fetch would do for each whole file (remote sizes from a HEAD each)."""
    layout = run.layout
    records = Records(layout.records_path)
    free = free_bytes(layout.root)
    block = block_size(layout.root)
    downloader = Downloader(run.options)
    rows = []
    try:
        for e in entries:
            rec = records.file(e.name)
            if rec is not None and trusted(rec, e, layout.final_path(e)):
                rows.append(file_row(e, "verified", 0, 0, free, rec.size, rec.url))
                continue
            if (rec is not None and e.is_archive and run.how.extract and e.name in
                    records.extracted and not layout.final_path(e).exists()):
                rows.append(repair_row(run, e, rec, free))  # what a repair would fetch
                continue
            size, url, state = first_answer(e, run.mirrors, downloader)
            size = size or e.approx_bytes
            have = partial_bytes(layout, e)
            if have:
                state = f"partial ({human_size(have)} of {human_size(size)})"
            to_transfer = max(0, size - have)
            images = images_on_disk(e, size, block) if e.is_archive and run.how.extract else 0
            row = file_row(e, state, to_transfer, to_transfer + images, free, size, url)
            if images:
                row["disk_needed_direct"] = images  # --direct: the images, no archive
            rows.append(row)
    finally:
        downloader.close()
    return rows


def repair_row(run: FetchRun, e: FileEntry, rec: FileRecord, free: int | None) -> dict[str, Any]:
    """An extracted archive no longer kept: the images a repair would fetch by byte ranges,
    from its saved directory (``archive.saved``; nothing asked of a server)."""
    from isic2020.archive.saved import repair_needs

    folder = run.layout.images_dir(e.format, e.split)
    needs = repair_needs(run.layout.state_dir, e.name, e.format, folder, rec.size, rec.etag,
                         rec.sha256)
    state = "extracted (archive not kept)"
    if needs is None:
        row = file_row(e, f"{state}; its images are checked against the remote zip's "
                       "directory", 0, 0, free, rec.size, rec.url)
        return row | {"repair": []}
    names, fetch, write = needs
    if names:
        state += f"; {plural(len(names), 'image')} to repair"
    return file_row(e, state, fetch, write, free, rec.size, rec.url) | {"repair": names}


def file_row(
    e: FileEntry, state: str, to_transfer: int, disk: int, free: int | None, size: int | None,
    url: str | None,
) -> dict[str, Any]:
    """One whole file's row: the keys every row has."""
    return {
        "name": e.name,
        "state": state,
        "size": size,
        "url": url,
        "to_transfer": to_transfer,
        "disk_needed": disk,
        "free": free,
    }


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


def _choose(
    layout: Layout, man: Manifest, entry: FileEntry, what: FetchWhat
) -> tuple[Selection | None, str | None]:
    """The selection a member fetch would make, or None when the CSVs it is chosen from are
    not on disk yet (and why the ones there cannot be used, when they are)."""
    from isic2020.catalog.tables import selection_metadata

    split, fmt = entry.split, entry.format
    if not what.subset:
        return Selection(split=split, names=[], format=fmt), None
    sel: Selection | None = None
    unusable: str | None = None  # why the CSVs on disk cannot be used to choose
    if _has_csvs(layout, man, split):
        try:
            df = selection_metadata(split, layout.root, man, what.where)
        except VerificationError as exc:
            # The fetch would download a CSV that changed since it was verified again
            # before choosing, so a damaged one is a reason to wait, not a failure.
            unusable = exc.message
        else:
            sel = make_selection(
                df, split, images_file=what.images, sample=what.sample, seed=what.seed,
                where=what.where, fmt=fmt,
            )
    if sel is None and what.images is not None:
        read_images_file(what.images)  # a malformed list is refused now, not after the CSVs
    return sel, unusable


def _open_first(
    run: FetchRun, entry: FileEntry, urls: list[str]
) -> tuple[RemoteZip | None, dict[str, RemoteMember], list[str]]:
    """The first archive of ``urls`` whose directory reads (from the cache when valid; never
    saved), its image members, and why each host before it failed."""
    opts = run.options
    failures: list[str] = []
    for url in urls:
        try:
            remote = open_remote(
                url, cache_path(run.layout.state_dir, entry.name), timeouts=opts.timeouts,
                retry=opts.retry, expected_etag=entry.etag, connections=opts.connections,
                save=False,
            )
            return remote, image_members(remote, entry.format), failures
        except (DownloadError, VerificationError) as exc:
            kind = "damaged" if isinstance(exc, VerificationError) else "unreachable"
            failures.append(f"{kind} ({exc.message})")
    return None, {}, failures


def member_row(run: FetchRun, entry: FileEntry, free: int | None = 0) -> MemberRow:
    """What ``fetch`` would transfer and write for ``entry`` in subset or direct mode.

    Reads the data directory and asks the server (HEAD, ranged GETs for an uncached
    directory); writes nothing. A bad ``--where`` or images file is the UsageError the fetch
    would give; a host that fails or serves a damaged archive is reported in ``state`` (the
    next URL is tried first), as the plain dry run reports an unreachable host.
    """
    what, layout = run.what, run.layout
    split, fmt = entry.split, entry.format
    urls = ranged_urls(entry, run.mirrors)
    sel, unusable = _choose(layout, run.manifest, entry, what)
    how = Selection(split=split, names=[],
                    images_file=None if what.images is None else str(what.images),
                    sample=what.sample, seed=what.seed, where=what.where, format=fmt).describe()
    row = MemberRow(
        name=entry.name, split=split, format=fmt, mode="subset" if what.subset else "direct",
        selection=how if what.subset else "all images", state="", free=free,
    )
    remote, found, failures = _open_first(run, entry, urls)
    if remote is None:
        row.state = "; ".join(failures) or "unreachable"
        row.url = urls[-1]
        return row
    row.url, row.size = remote.url, remote.size
    row.directory_cached = remote.from_cache
    row.directory_bytes = 0 if remote.from_cache else remote.bytes_read
    row.archive_images = len(found)
    row.to_transfer = row.directory_bytes
    if sel is None:
        row.state = (f"{NEEDS_CSVS}: they are downloaded first, the subset cannot be "
                     "sized until then")
        if unusable:
            row.state += f" (the ones on disk do not load: {unusable})"
        row.note = (f"run `isic2020 fetch --split {split} --format none --data-dir "
                    f"{layout.root}` (a few MB), then this dry run again to size the subset")
        return row
    _size_members(row, remote, found, sel, layout.images_dir(fmt, split), what.subset,
                  block_size(layout.root))
    return row


def _size_members(
    row: MemberRow, remote: RemoteZip, found: dict[str, RemoteMember], sel: Selection,
    dest_dir: Path, subset: bool, block: int,
) -> None:
    """The counts and bytes of ``row`` once the selection and the directory are known."""
    if subset:
        chosen = [found[n] for n in sel.names if n in found]
        row.images = len(sel.names)
        row.not_in_archive = len(sel.names) - len(chosen)
    else:
        chosen = list(found.values())
        row.images, row.not_in_archive = len(chosen), 0
    try:
        present, todo = _todo(remote, chosen, dest_dir)
    except VerificationError as exc:
        row.state = f"damaged ({exc.message})"
        return
    spans = plan_ranges(remote, todo)
    row.present, row.to_fetch = present, len(todo)
    row.member_bytes = sum(s.length for s in spans)
    row.ranges = len(spans)
    row.to_transfer = row.directory_bytes + row.member_bytes
    row.disk_needed = sum(on_disk(m.file_size, block) for m in todo)  # a block per image
    row.state = (f"{row.mode}: {len(todo)} to fetch" if todo
                 else f"{row.mode}: all {present} present")


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


def dry_run_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The human summary of a dry run: a line per row (and the member lines under a subset or
    direct archive), then the totals."""
    lines = ["dry run: nothing was written"]
    total = need = 0
    for row in rows:
        lines.append(
            f"  {row['name']:<40} {row['state']:<28} "
            f"to transfer {human_size(row['to_transfer'])}"
        )
        if "selection" in row:  # a subset or --direct archive (a MemberRow)
            lines.extend(member_lines(row))
        total += row["to_transfer"]
        need += row["disk_needed"]
    free = rows[0]["free"] if rows else None
    lines.append(
        f"total to transfer {human_size(total)}; disk needed about {human_size(need)}; "
        f"free {_free(free) if rows else '?'}"
    )
    if free is not None and need > free:
        lines.append(f"will not fit: about {human_size(need - free)} more than is free")
        direct = sum(r.get("disk_needed_direct", r["disk_needed"]) for r in rows)
        if any("disk_needed_direct" in r for r in rows) and direct <= free:
            lines.append(f"--direct would fit: only the images, no archive (about "
                         f"{human_size(direct)})")
    return lines


def _free(n: int | None) -> str:
    return "unknown (the filesystem does not say)" if n is None else human_size(n)
