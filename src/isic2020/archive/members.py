"""Members of a remote zip: choosing them by the one set of rules, fetching them by range.

Invariants, and why:

* **The rules first.** Every chosen member passes :mod:`~isic2020.archive.rules` (unsafe
  names, bombs) before anything is fetched; one unsafe entry refuses the job.
* **Members by byte span.** A member's span runs from its local header to the next member's
  (or the directory): header, name, extra, data and data descriptor. Spans of chosen members
  are coalesced when the bytes between them are few (``max_gap``) *and* the waste stays under
  ``max_waste`` of the useful bytes, so a scattered subset never costs more than ~5% over its
  own compressed bytes, while runs of neighbours go in one request (``max_span`` caps a
  request so a retry or a kill loses little).
* **Planned while downloading.** Final paths, what is already there and spans are made while
  the first spans download, over the transfer layer's one range pool; each piece's bytes
  become checked files (:mod:`~isic2020.archive.unpack`,
  :class:`~isic2020.archive.spans.SpanWriter`).
* **Every connection busy, one request per piece.** A span may be split at its members' local
  headers: a connection takes from the queue about its share of the bytes still queued (the
  queued bytes over the connections, at least :data:`MIN_SPLIT`), cut at the first member
  boundary past it, and the rest stays queued. A plan of fewer spans than connections still
  uses them all, pieces shrink as the queue drains so the connections end together, and each
  piece is one request whose end is known when it is sent: no byte is fetched twice, and a
  request costs a millisecond of CPU, so a zip's members are not fetched in thousands of
  them.
* **Resumable.** A member already at its final path with the directory's size is skipped, the
  rule of every writer of the layout: only checked files reach a final path, so a killed run
  loses at most the members in flight. A file of the right size damaged *afterwards* is not
  noticed here (``verify`` notices it); ``check_existing="crc"`` re-reads every present file
  to compare its CRC-32 and is what to use after the object changed. Staged members (an
  empty destination folder: ``MemberFetchOptions.stage``) are written in place under the
  state folder, for this version of the archive only, and reach the layout together, once
  all are checked; a later run takes those of the right size as done.
* **Durable before any record:** the destination's filesystem is flushed in the background
  while writing and once at the end (``decode.Flusher``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from isic2020.archive.decode import Flusher, already_there, disk_error, present_files
from isic2020.archive.remote import DEFAULT_CONNECTIONS, RemoteZip, damaged, host_failed
from isic2020.archive.rules import Member, Refused, check_entry, plan_entries
from isic2020.archive.spans import Coalescer, Span, StagedFolder
from isic2020.archive.staging import IMAGES_DIR, Stage, open_member_staging, promote
from isic2020.archive.unpack import UNPACKERS, MemberSink, Unpackers, cuts_of
from isic2020.archive.unpack_worker import PROCESS_MIN, ForkedUnpackers
from isic2020.archive.zipformat import Entry as RemoteMember
from isic2020.errors import Interrupted
from isic2020.report import human_size, plural, progress_bar
from isic2020.store.forking import can_fork
from isic2020.store.records import file_mode
from isic2020.transfer.http import Timeouts
from isic2020.transfer.localfile import range_client
from isic2020.transfer.model import READ_BLOCK
from isic2020.transfer.pool import RangePool
from isic2020.transfer.pool import Span as PoolSpan
from isic2020.transfer.retry import HostFailed, RetryPolicy
from isic2020.transfer.throttle import Throttle

KiB = 1 << 10
MiB = 1 << 20
DEFAULT_MAX_GAP = 64 * KiB
DEFAULT_MAX_SPAN = 8 * MiB
DEFAULT_MAX_WASTE = 0.05
#: A cut costs one request: a piece taken from a span leaves at least this much on each side.
MIN_SPLIT = 256 * KiB

Log = Callable[[str], None]
_OFFSET = attrgetter("header_offset")


#: Where a member lands: its final path (a string is cheapest; a plan makes 33,126 of them).
Dest = Callable[[RemoteMember], "str | os.PathLike[str]"]


@dataclass(frozen=True)
class MemberFetchOptions:
    """How members are fetched (the options :func:`fetch_members` and
    ``direct.fetch_remote_members`` share): connections, the transfer's timeouts and retry
    policy, log and progress bar, and the coalescing limits of :func:`plan_ranges`."""

    connections: int = DEFAULT_CONNECTIONS
    #: Grow up to this many connections while the rate rises (None: ``connections``, fixed).
    max_connections: int | None = None
    timeouts: Timeouts | None = None
    retry: RetryPolicy | None = None
    log: Log | None = None
    progress: bool = False
    max_gap: int = DEFAULT_MAX_GAP
    max_span: int = DEFAULT_MAX_SPAN
    #: From an archive of this size on, forked children unpack (``$ISIC2020_STREAM_PROCESS_MIN``).
    process_min: int = PROCESS_MIN
    #: Where the members may be staged (every one lands in its ``folder``): written in place
    #: there and moved in with one rename once all are checked (see
    #: :func:`~isic2020.archive.staging.open_member_staging` for when it is used).
    stage: Stage | None = None

    def but(self, **keywords: Any) -> MemberFetchOptions:
        """These options with ``keywords`` replacing fields (an unknown one: TypeError)."""
        return replace(self, **keywords) if keywords else self


@dataclass
class FetchMembersResult:
    """What :func:`fetch_members` did (the fields of the JSON report)."""

    archive: str
    url: str
    etag: str | None
    requested: int = 0
    written: int = 0
    skipped: int = 0  # already at their final path with the right size (or CRC)
    spans: int = 0
    bytes_transferred: int = 0
    bytes_wanted: int = 0  # the compressed bytes of the members fetched (for the overhead)
    bytes_written: int = 0
    retries: int = 0
    seconds: float = 0.0
    processes: int = 0  # forked children that unpacked (0: threads of the fetch itself)
    #: The final paths of the members whose content the writer checked in memory before it
    #: wrote them (``decode.Vouched``): the closing verify need not read them back.
    checked: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, checked=set()))  # (not a deep copy of a name per image)
        del out["checked"]
        return out

    def fold_in(self, earlier: FetchMembersResult) -> None:
        """Count an earlier pass of the same job too (its directory was doubted and read
        again): what it wrote this pass found in place, and its bytes crossed the network."""
        moved = min(earlier.written, self.skipped)
        self.written += moved
        self.skipped -= moved
        self.spans += earlier.spans
        self.bytes_transferred += earlier.bytes_transferred
        self.bytes_wanted += earlier.bytes_wanted
        self.bytes_written += earlier.bytes_written
        self.retries += earlier.retries
        self.seconds = round(self.seconds + earlier.seconds, 3)
        self.checked |= earlier.checked


def unsafe_members(remote: RemoteZip) -> list[tuple[str, str]]:
    """``(name, why)`` for every entry the rules refuse as unsafe."""
    out = []
    for m in remote.members:
        why = m.unsafe_reason()
        if why:
            out.append((m.name, why))
    return out


def image_members(remote: RemoteZip, fmt: str | None = None) -> dict[str, RemoteMember]:
    """``image_name`` (``ISIC_xxxxxxx``, as in the CSVs) -> its entry, by the one set of rules
    (:func:`isic2020.archive.rules.plan_entries`, as every path uses them): any entry whose
    base name is ``ISIC_<7 digits>.jpg`` (``.dcm``), wherever it stands; ``fmt`` keeps only
    that extension. The archive is refused when any entry is unsafe or a bomb, or two entries
    are the same image with different contents; identical duplicates keep the first.
    """
    try:
        plan = plan_entries(remote.members, fmt, remote.size)
    except Refused as exc:
        raise damaged(remote.name, exc) from None
    remote.checked = remote.members
    return {m.final[:-4]: m.entry for m in plan.members}  # less ".jpg" (".dcm")


def plan_ranges(
    remote: RemoteZip,
    members: Iterable[RemoteMember],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
    max_waste: float = DEFAULT_MAX_WASTE,
) -> list[Span]:
    """Cut the chosen members into ranged GETs.

    A member's bytes are ``[header_offset, next header_offset)`` (the CD for the last one).
    Neighbours are joined into one request when the bytes between them are at most ``max_gap``,
    the joined request stays within ``max_span`` and the skipped bytes stay within
    ``max_waste`` of the wanted ones: fewer requests for runs, no big overhead for scattered
    picks. A member larger than ``max_span`` is a span of its own (it is streamed anyway).
    """
    joiner = Coalescer(remote.member_end(), max_gap, max_span, max_waste)
    chosen = sorted({m.header_offset: m for m in members}.values(), key=lambda m: m.header_offset)
    spans = [s for s in map(joiner.add, chosen) if s is not None]
    last = joiner.finish()
    return [*spans, last] if last is not None else spans


def fetch_members(
    remote: RemoteZip,
    members: Sequence[RemoteMember],
    dest: Dest,
    options: MemberFetchOptions | None = None,
    *,
    check_existing: Literal["size", "crc"] = "size",
    started: Callable[[], None] | None = None,
    **keywords: Any,
) -> FetchMembersResult:
    """Fetch ``members`` of ``remote`` by byte ranges straight to ``dest(member)``.

    ``options`` (:class:`MemberFetchOptions`); each of its fields is also a keyword, which
    replaces that field of the object given.

    Parallel over ``connections`` (up to ``max_connections`` while the rate rises; each
    worker its own session, with the engine's AIMD throttle on 503/429), every member
    inflated, size- and CRC-checked against the directory, written to ``.<name>.part`` next
    to its final path and renamed (or, with ``stage``, in place in the staging folder, which
    becomes the destination folder once every member is there). Members already at their
    final path (see ``check_existing``) are skipped, so a killed run resumes.

    Every member is checked against the limits before anything is fetched; the plan (final
    paths, what is already there, spans) is then made while the first spans download, and
    the range pool's downloading threads hand their blocks to the span writers. ``started``
    runs once everything is planned, while the members download (the caller's work that
    need not delay the first byte: saving the directory it read).

    Raises VerificationError naming a damaged member (nothing half-written is left),
    ObjectChanged when the archive changed (re-read its directory: :func:`open_remote`),
    DownloadError when the host gives up (after the retry window), DiskError, Interrupted.
    """
    opts = (options or MemberFetchOptions()).but(**keywords)
    connections, log = opts.connections, opts.log
    t0 = time.monotonic()
    result = FetchMembersResult(remote.name, remote.url, remote.etag, requested=len(members))
    chosen = checked_in_order(remote, members)
    ends = remote.member_end()
    bar = progress_bar(sum(ends[m.header_offset] - m.header_offset for m in chosen),
                       remote.name) if opts.progress else None
    staged = None if opts.stage is None else open_member_staging(opts.stage, {
        "size": remote.size, "etag": remote.etag, "last_modified": remote.last_modified})
    job = _MemberFetch(remote, result, (connections, opts.max_connections or connections),
                       opts.timeouts or Timeouts(), opts.retry or RetryPolicy(), bar, log=log,
                       process_min=opts.process_min,
                       staged=None if staged is None else (opts.stage, staged))
    try:
        try:
            job.start()
            job.plan(chosen, dest, check_existing,
                     Coalescer(ends, opts.max_gap, opts.max_span, DEFAULT_MAX_WASTE))
            if log is not None and result.spans:
                log(f"{remote.name}: fetching {plural(job.planned, 'member')} "
                    f"({human_size(job.planned_bytes)} in {plural(result.spans, 'range')}) "
                    f"over {plural(min(connections, job.most_pieces), 'connection')}")
            if started is not None:
                started()
            job.wait()
        except KeyboardInterrupt:
            job.stop()
            raise Interrupted(
                f"interrupted while fetching members of {remote.name}",
                "run the same command again to resume; finished images are kept",
            ) from None
        except BaseException:
            job.stop()
            raise
        finally:
            job.close()
            result.bytes_transferred = job.client.transferred
            result.retries = job.client.retries
            result.seconds = round(time.monotonic() - t0, 3)
        try:
            job.pool.raise_first()
        except HostFailed as exc:
            raise host_failed(remote.url, exc) from None
        if job.staged is not None:
            job.promote()
        if result.written or job.moved:
            job.flush()
    finally:
        job.release()
    result.seconds = round(time.monotonic() - t0, 3)
    return result


def checked_in_order(
    remote: RemoteZip, members: Sequence[RemoteMember]
) -> list[RemoteMember]:
    """The members to consider, once each, in archive order, every one within the limits:
    one unsafe entry refuses the job before a byte is written."""
    unique = {m.header_offset: m for m in members if not m.is_dir}
    try:
        if remote.checked is not remote.members:  # else the rules passed every entry already
            for m in unique.values():
                check_entry(m)
    except Refused as exc:
        raise damaged(remote.name, exc) from None
    return sorted(unique.values(), key=_OFFSET)


class _MemberFetch:
    """One :func:`fetch_members` job: the plan, the range pool, the flushers."""

    def __init__(
        self,
        remote: RemoteZip,
        result: FetchMembersResult,
        connections: tuple[int, int],
        timeouts: Timeouts,
        retry: RetryPolicy,
        bar: Any,
        log: Callable[[str], None] | None = None,
        process_min: int = PROCESS_MIN,
        staged: tuple[Stage, int] | None = None,
    ) -> None:
        """``connections``: where the pool starts, and the most it may run; ``log``: the
        pool's ``--verbose`` lines (changes of the connection count); ``process_min``: from
        an archive of this size on, forked children unpack (``unpack_worker``); ``staged``:
        the stage and its images folder's descriptor, which the writers then write in
        (closed by :meth:`release`)."""
        self.stage, self.staged = staged if staged is not None else (None, None)
        self.stage_members: list[Member] = []  # every chosen member, named as staged
        self.moved = 0  # staged images moved into the layout
        self.remote = remote
        self.result = result
        self.bar = bar
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.finals: dict[int, str] = {}  # header offset -> final path, of planned members
        self.mode = file_mode()
        self.planned = self.planned_bytes = 0
        self.most_pieces = 0  # how many connections the spans could keep busy
        self.client = range_client(
            remote.url, remote.size, remote.etag, remote.last_modified,
            timeouts=timeouts, retry=retry, throttle=Throttle(max(1, connections[0])),
            abort=self.abort, on_bytes=(bar.update if bar is not None else None),
            block=READ_BLOCK,
        )
        self.pool = RangePool(self.client, connections[0], take_min=MIN_SPLIT,
                              max_connections=connections[1], log=log, label=remote.name)
        self.shown = "" if self.stage is None else os.fspath(self.stage.staging / IMAGES_DIR)
        self.folder = (None if self.staged is None
                       else StagedFolder(self.staged, self.shown))
        self.unpackers: Any = self._threads()
        if remote.size >= process_min and can_fork():  # off the download's GIL
            self.unpackers = ForkedUnpackers(UNPACKERS, self.abort, self.pool.fail, self.done,
                                             remote.name, self.mode, self.folder)
        self.flushers: dict[int, Flusher] = {}  # by device of the destination folders

    def done(self, writer: Any) -> None:
        checked = writer.checked_finals()
        with self.lock:
            self.result.written += writer.done
            self.result.bytes_written += writer.bytes_written
            self.result.checked.update(checked)

    # -- the plan (main thread) ------------------------------------------------------------
    def plan(
        self,
        chosen: list[RemoteMember],
        dest: Dest,
        check: str,
        joiner: Coalescer,
    ) -> None:
        """Final paths, what is already in place, spans: each span is queued as soon as it is
        closed, so the first ones download while the rest is planned."""
        present: dict[str, dict[str, int]] = {}
        made: set[str] = set()
        staged = self.staged is not None
        if self.staged is not None:
            # the staging's files stand for the folder's (empty: see open_member_staging)
            present[""] = present_files(self.staged)
            self._make_folder(self.shown)
        # (per member, 33,126 of them, on the thread the download's connections share: no
        # os.path call, no attribute updated, no method called that has nothing to do)
        finals, add, sep = self.finals, joiner.add, os.sep
        planned = wanted = skipped = 0
        for m in chosen:
            if self.abort.is_set():
                break
            final = os.fspath(dest(m))
            cut = final.rfind(sep) + 1
            folder, name = final[:cut].rstrip(sep) or final[:cut], final[cut:]  # os.path.split
            if staged:
                self.stage_members.append(Member(m, name))
                folder = final = ""
            here = present.get(folder)
            if here is None:
                here = present[folder] = present_files(folder)
            if here.get(name) == m.file_size and (
                staged or check == "size" or already_there(m, Path(final), check)
            ):
                skipped += 1
                continue
            if folder not in made and not staged:
                self._make_folder(folder)
                made.add(folder)
            finals[m.header_offset] = name if staged else final
            planned += 1
            wanted += m.compressed_size
            span = add(m)
            if span is not None:
                self._queue(span)
        self.planned += planned
        self.result.skipped += skipped
        self.result.bytes_wanted += wanted
        self._queue(joiner.finish())
        self.pool.close()
        if self.bar is not None:
            self.bar.total = self.planned_bytes
            self.bar.refresh()

    def _queue(self, span: Span | None) -> None:
        if span is not None:
            self.result.spans += 1
            self.planned_bytes += span.length
            self.most_pieces += max(1, min(len(span.members), span.length // MIN_SPLIT))
            self.pool.put(PoolSpan(span.start, span.end, tag=span, cuts=cuts_of(span)))

    def _make_folder(self, folder: str) -> None:
        try:
            os.makedirs(folder or ".", exist_ok=True)
            dev = os.stat(folder or ".").st_dev
        except OSError as exc:
            raise disk_error(exc, Path(folder)) from None
        if dev not in self.flushers:
            flusher = self.flushers[dev] = Flusher(Path(folder or "."))
            flusher.start()

    def _threads(self) -> Unpackers:
        """Unpacking threads, writing where the children would (the staging, when staged:
        ``finals`` then name files relative to it, never to the working directory)."""
        return Unpackers(UNPACKERS, self.abort, self.pool.fail, self.done, self.folder)

    def start(self) -> None:
        try:
            self.unpackers.start()
        except OSError:  # no child could be forked: the threads unpack
            self.unpackers = self._threads()
            self.unpackers.start()
        if isinstance(self.unpackers, ForkedUnpackers):
            self.result.processes = len(self.unpackers.children)
        sink = MemberSink(self.remote.name, self.finals, self.mode, self.unpackers)
        self.pool.start(sink, name="isic2020-rz")

    def wait(self) -> None:
        """Until every span is fetched and written (Ctrl-C interrupts the wait); the errors
        stay in the pool, raised after :meth:`close`."""
        self.pool.join()
        self.unpackers.stop()

    def stop(self) -> None:
        """After an error or Ctrl-C in the main thread: stop every thread."""
        self.pool.stop()

    def close(self) -> None:
        """Whatever happened: the pool ends (removing the members in progress), the
        background flushes stop, the progress bar closes."""
        self.pool.close()
        self.unpackers.stop()
        for f in self.flushers.values():
            f.stop()
        if self.bar is not None:
            self.bar.close()

    def promote(self) -> None:
        """Every member is staged and checked: move them into the layout (one rename of the
        staging's images folder), the checked ones said by their final paths."""
        assert self.stage is not None
        folder = self.stage.folder
        try:
            moved = promote(self.stage.staging, folder, self.stage_members,
                            vouched=self.result.checked)
        except OSError as exc:
            raise disk_error(exc, folder) from None
        self.moved = moved.images
        base = os.path.join(os.fspath(folder), "")
        self.result.checked = {base + name for name in moved.checked}

    def flush(self) -> None:
        """The flush that makes the written files durable (before any record of them)."""
        for f in self.flushers.values():
            f.final()

    def release(self) -> None:
        """The flushers' folder handles, and the staging's, last."""
        for f in self.flushers.values():
            f.close()
        if self.staged is not None:
            os.close(self.staged)
            self.staged = None
