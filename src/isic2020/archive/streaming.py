"""Unpack a zip's members while the zip itself is still downloading.

Why: a zip member is usable as soon as its own bytes are on disk, and the engine writes
blocks in place into a preallocated partial file, so the unpacking can follow the download
block by block instead of adding a whole extraction pass after it.

How, and why each step:

* **The directory first.** The engine is asked (``first_offset``) to fetch the archive's tail
  (room for the end records and the longest zip comment) before anything else. The end records
  say where the central directory is; the engine is asked to fetch that region next, cut over
  all connections. Once it is on disk it is read from the partial file by the one parser
  (``zipformat``) and checked by the one set of rules (``rules``: unsafe names, zip bombs,
  conflicting duplicates). An archive the extraction would refuse, or whose end records
  cannot be read, simply turns streaming off: the ordinary extraction after the download then
  does the work, or names the problem.
* **Member by member, as their bytes land.** The engine reports each block it writes
  (``arrived``); a member whose whole span (local header to the next entry) lies inside the
  bytes on disk is queued, and ``STREAM_THREADS`` threads unpack queued members with the one
  decoder (``decode``: ``pread`` + inflate + bound + CRC-32 + write). Threads, not processes:
  the work here waits on a download, zlib and the file system calls release the GIL, and
  forking a process that runs download threads is unsafe.
* **Staged until the archive is verified.** Members are CRC-checked against the directory as
  they are written, but the directory itself is only proven when the whole archive's hash is
  (size, ETag, manifest sha256). So they are written to ``DATA/.isic2020/staging/<archive>/``
  and reach the layout only after the archive has landed: ``local.extract_archive`` moves
  them in (``staging.promote``) and unpacks whatever is left. A discarded partial file
  (changed object, failed verification) discards the staging; a staging made for another
  version of the object (``object.json``: ETag, size) is removed before it is reused. A killed
  run keeps both the partial file and the staged images; the next run resumes the download and
  skips the members already staged (by name and size). The staging is no final path, so a
  member checked whole in memory is written straight under its name (``in_place``: no
  temporary, no rename); its size only grows with bytes written, so a file of the right size
  is complete, and a shorter one (a killed write) is redone, never promoted.
* **No links followed.** The staging folder is reached with :func:`isic2020.store.fsutil.open_dir`
  and members are written relative to its images folder's descriptor: a link planted there
  (by whoever else can write into a shared state folder) cannot send a write, a removal or a
  rename outside DATA (:class:`isic2020.store.fsutil.StateLinkError` instead).
* **Never in the way.** Any error here (disk full, a damaged member) stops the streaming and is
  kept for the report; the download goes on and the extraction after it repeats the work,
  raising the error in its usual form if it is real.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from isic2020.archive.decode import Damaged, Flusher, Vouched, extract_member, present_files
from isic2020.archive.rules import Member, Plan, Refused, damaged_member, plan_entries
from isic2020.archive.saved import prepare_directory
from isic2020.archive.staging import IMAGES_DIR, open_staging
from isic2020.archive.stream_worker import UnpackerGone, UnpackerProcess
from isic2020.archive.unpack_worker import PROCESS_MIN
from isic2020.archive.workers import DAMAGED_HINT
from isic2020.archive.zipformat import (
    DEFLATED,
    STORED,
    BadZip,
    end_records,
    member_ends,
    read_directory,
    tail_start,
)
from isic2020.catalog.manifest import FileEntry
from isic2020.errors import Isic2020Error
from isic2020.report import count_images, plural
from isic2020.store.fsutil import StateLinkError, file_mode, remove_tree
from isic2020.store.layout import Layout
from isic2020.transfer.intervals import add_interval
from isic2020.transfer.model import RemoteObject
from isic2020.transfer.observer import TransferObserver

STREAM_THREADS = 2
BATCH = 16  # members a thread takes at once
PROCESS_BATCH = 64  # members a thread hands its child process at once
#: Directory bytes per image guessed by :meth:`StreamingExtractor.first_offset` (an entry
#: is 46 bytes, a name like ``train/ISIC_0000000.jpg`` and a few extra fields).
CD_BYTES_PER_IMAGE = 96

Log = Callable[[str], None]


@dataclass
class StreamStats:
    """What the streaming did (the ``streamed_*`` fields of the extraction report)."""

    members: int = 0  # images the archive holds (0: streaming never started)
    unpacked: int = 0  # unpacked into the staging folder by this run
    already_staged: int = 0  # staged by an earlier, interrupted run
    #: of those unpacked, checked whole as they were written (a JPEG's markers): the closing
    #: verify need not read them back (see ``decode.Vouched``)
    checked: int = 0
    after_download_s: float = 0.0  # unpacking left when the download finished
    processes: int = 0  # child processes that unpacked (0: the threads did, in this one)
    disabled: str | None = None  # why streaming stopped or never started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _covered(intervals: list[list[int]], start: int, end: int) -> bool:
    return any(a <= start and end <= b for a, b in intervals)


class StreamingExtractor(TransferObserver):
    """Unpacks ``entry``'s image members into its staging folder while it downloads."""

    def __init__(
        self, layout: Layout, entry: FileEntry, *, threads: int = STREAM_THREADS,
        log: Log | None = None, on_planned: Callable[[], None] | None = None,
        process_min: int = PROCESS_MIN,
    ) -> None:
        self.layout = layout
        self.entry = entry
        self.staging = layout.staging_dir(entry)
        self.images = self.staging / IMAGES_DIR
        self.n_threads = max(1, threads)
        self.process_min = process_min
        self.log = log
        self.on_planned = on_planned  # called once the directory is parsed and checked
        self.stats = StreamStats()
        self._cond = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        self.url: str = ""
        self.etag: str | None = None
        self.fd = -1
        self.size = 0
        self.tail_from = 0
        self.wait_from = 0
        self.prioritize: Callable[[int, int], None] = lambda a, b: None
        self.avail: list[list[int]] = []
        self.members: list[Member] = []
        self.plan: Plan | None = None  # the directory's plan, for ``extract_archive``
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.queued = bytearray()
        self.checked = bytearray()  # 1: written by this run and its content check passed
        self.queue: deque[int] = deque()
        self.planned = False
        self.closing = False
        self.stopped = False
        self.active = 0
        self.threads: list[threading.Thread] = []
        self.procs: list[UnpackerProcess] = []  # the threads' child processes, if any
        self.flusher: Flusher | None = None
        self.images_fd = -1  # the staging images folder, reached without following links

    # -- the engine's hooks --------------------------------------------------------------
    def first_offset(self, size: int) -> int | None:
        """The end records' room and, guessed from the manifest's image count, the directory
        before them: both then arrive over the first requests of every connection, instead
        of the directory being asked for once the end records are read, behind each
        connection's chunk under way (a guess too small only leaves the rest to that)."""
        if self.stats.disabled:
            return None
        guess = (self.entry.images or 0) * CD_BYTES_PER_IMAGE
        return max(0, tail_start(size) - min(guess, size // 8))

    def begin(
        self,
        remote: RemoteObject,
        fd: int,
        done: list[list[int]],
        prioritize: Callable[[int, int], None],
    ) -> None:
        self._stop_threads()
        if remote.size is None or not remote.etag:
            # Without an ETag nothing could prove, after the download, that staged images came
            # from the archive that landed: ``extract`` would drop them and unpack again.
            self.stats.disabled = "the server names no version of the archive (no ETag)"
            return
        ident = {"size": remote.size, "etag": remote.etag, "last_modified": remote.last_modified}
        try:
            images_fd = open_staging(self.staging, ident)
        except OSError as exc:
            self.stats.disabled = f"cannot stage images: {exc.strerror or exc}"
            return
        except StateLinkError as exc:
            self.stats.disabled = f"cannot stage images: {exc.message}"
            return
        with self._cond:
            self._reset()
            self.url, self.etag = remote.url, remote.etag
            self.fd = os.dup(fd)
            self.images_fd = images_fd
            self.size = remote.size
            self.tail_from = self.first_offset(remote.size) or 0
            self.avail = [list(iv) for iv in done]
        self.prioritize = prioritize
        self.flusher = Flusher(self.images)
        self.flusher.start()
        planner = threading.Thread(target=self._planner, name="isic2020-stream-plan",
                                   daemon=True)
        self.threads = [planner] + [
            threading.Thread(target=self._worker, name=f"isic2020-stream-{k}", daemon=True)
            for k in range(self.n_threads)
        ]
        for t in self.threads:
            t.start()

    def arrived(self, start: int, end: int) -> None:
        with self._cond:
            if self.fd < 0 or self.stopped:
                return
            self.avail = add_interval(self.avail, start, end)
            if not self.planned:
                if _covered(self.avail, self.wait_from, self.size):
                    self._cond.notify_all()
                return
            if self._release(start, end):
                self._cond.notify_all()

    def discard(self) -> None:
        self._stop_threads()
        self.plan = None
        with contextlib.suppress(OSError):
            remove_tree(self.staging)

    # -- the caller's side -----------------------------------------------------------------
    def finish(self) -> StreamStats:
        """After the download landed: unpack what is left (all bytes are there), stop."""
        t0 = time.monotonic()
        with self._cond:
            self.closing = True
            self._cond.notify_all()
        for t in self.threads:
            t.join()
        self.stats.after_download_s = round(time.monotonic() - t0, 3)
        self._close()
        return self.stats

    def checked_names(self) -> set[str]:
        """The images this run wrote into the staging folder whose content check passed as
        they were written: what a promotion may vouch for without reading them back."""
        with self._cond:
            return {m.final for m, ok in zip(self.members, self.checked) if ok}

    def abort(self) -> None:
        """The fetch failed or was interrupted: stop; what is staged stays for the next run."""
        self._stop_threads()

    # -- threads ---------------------------------------------------------------------------
    def _wait_for(self, start: int) -> bool:
        """Until ``[start, size)`` is on disk (False: stopped first)."""
        with self._cond:
            self.wait_from = start
            while not (_covered(self.avail, start, self.size) or self.stopped):
                self._cond.wait()
            return not self.stopped

    def _planner(self) -> None:
        self._guarded(self._plan_directory)

    def _worker(self) -> None:
        self._guarded(self._unpack_queued)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run a thread's work so that any failure, expected or not, stops the streaming and
        shows in ``while_downloading.disabled`` (never as a thread's traceback on stderr while
        the report says nothing went wrong)."""
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - reported, and extraction redoes the work
            self._stop(f"unpacking while downloading failed ({type(exc).__name__}: {exc})")

    def _plan_directory(self) -> None:
        fd = self.fd
        try:
            if not self._wait_for(self.tail_from):
                return
            at = tail_start(self.size)
            tail = os.pread(fd, self.size - at, at)
            cd = end_records(tail, at, self.size, lambda at, n: os.pread(fd, n, at))
            if cd.offset < self.tail_from:
                self.prioritize(cd.offset, self.tail_from)
                if not self._wait_for(cd.offset):
                    return
            plan, starts, ends = self._read_directory(fd)
            members = plan.members
        except (BadZip, Refused, OSError) as exc:
            self._stop(f"the directory could not be read while downloading ({exc})")
            return
        # A killed write left a short file (or a temporary): its size does not match.
        staged = present_files(self.images)
        with self._cond:
            self.members, self.starts, self.ends = members, starts, ends
            self.plan = plan
            self.queued = bytearray(len(members))
            self.checked = bytearray(len(members))
            for i, m in enumerate(members):
                if staged.get(m.final) == m.entry.file_size:
                    self.queued[i] = 1
                    self.stats.already_staged += 1
            self.stats.members = len(members)
            self.planned = True
            for a, b in self.avail:
                self._release(a, b)
            self._cond.notify_all()
        if self.log is not None:
            self.log(f"{self.entry.name}: unpacking {plural(len(members), 'image')} while it "
                     "downloads")
        if self.on_planned is not None:
            self.on_planned()
        # the saved directory's file, for ``extract_archive`` once the archive lands as expected
        plan.prepared = prepare_directory(plan.parsed, self.size, self.url, self.etag,
                                          self.entry.sha256)

    def _read_directory(self, fd: int) -> tuple[Plan, list[int], list[int]]:
        """The plan (the rules of every path), and each member's span in archive order."""
        cd, entries = read_directory(lambda at, n: os.pread(fd, n, at), self.size)
        plan = plan_entries(entries, self.entry.format, self.size)
        plan.parsed = (cd, entries)
        members = plan.members
        members.sort(key=lambda m: m.entry.header_offset)
        starts = [m.entry.header_offset for m in members]
        nxt = member_ends(entries, cd.offset)
        ends = [nxt[a] for a in starts]
        return plan, starts, ends

    def _release(self, start: int, end: int) -> bool:
        """Queue the members that ``[start, end)`` completed (under the lock)."""
        iv = next((iv for iv in self.avail if iv[0] <= start and end <= iv[1]), None)
        if iv is None:
            return False
        lo, hi = iv
        i = bisect.bisect_right(self.ends, start)
        n = len(self.starts)
        added = False
        while i < n and self.starts[i] < end:
            if not self.queued[i] and self.starts[i] >= lo and self.ends[i] <= hi:
                self.queued[i] = 1
                self.queue.append(i)
                added = True
            i += 1
        return added

    def _unpack_queued(self) -> None:
        """Take batches off the queue and unpack them: in this thread, or (an archive of at
        least ``process_min`` bytes) through a forked child of its own (``stream_worker``:
        its own GIL), which this thread feeds and, outliving it, owns."""
        mode = file_mode()
        d = str(self.images)
        vouch = Vouched.for_format(self.entry.format)  # this thread's: it holds a verdict
        proc: UnpackerProcess | None = None
        first = True
        try:
            while True:
                with self._cond:
                    while not self.queue and not self.stopped and not (
                        self.closing and (self.planned or not self._planner_alive())
                    ):
                        self._cond.wait()
                    if self.stopped or not self.queue:
                        return
                    take = PROCESS_BATCH if proc is not None else BATCH
                    batch = [self.queue.popleft() for _ in range(min(take, len(self.queue)))]
                    fd = self.fd
                    members = self.members
                if first:  # forked once the plan is made: the child inherits the members
                    first = False
                    if self.size >= self.process_min:
                        proc = self._start_process(members, fd, mode)
                # other methods are left for the extraction after the download (zipfile's)
                todo = [i for i in batch if members[i].entry.method in (STORED, DEFLATED)]
                if proc is not None:
                    try:
                        proc.submit(todo)
                    except UnpackerGone as exc:
                        if not exc.interrupted:  # else whoever stopped it handles the rest
                            self._stop(f"stopped unpacking while downloading: {exc}")
                        return
                    continue
                for i in todo:
                    if self.stopped:
                        return
                    if vouch is not None:
                        vouch.passed = False
                    try:
                        self._write(fd, members[i], d, mode, vouch)
                    except (Isic2020Error, OSError) as exc:
                        why = exc.message if isinstance(exc, Isic2020Error) else str(exc)
                        self._stop(f"stopped unpacking while downloading: {why}")
                        return
                    self._unpacked((i,), () if vouch is not None and vouch.passed else (i,))
        finally:
            if proc is not None:
                if self.stopped:
                    proc.stop()
                why = proc.close()
                if why is not None and not self.stopped and not proc.interrupted:
                    self._stop(f"stopped unpacking while downloading: {why}")

    def _start_process(self, members: list[Member], fd: int, mode: int
                       ) -> UnpackerProcess | None:
        proc = UnpackerProcess.start(members, fd, self.images_fd, mode, self.entry.name,
                                     self.entry.format, self._unpacked_elsewhere)
        if proc is not None:
            with self._cond:
                self.procs.append(proc)
                self.stats.processes += 1
                if self.stopped:  # stopped while it started: it stops at once too
                    proc.stop()
        return proc

    def _unpacked(self, done: Sequence[int], unchecked: Collection[int]) -> None:
        """The members at ``done`` are written; those not in ``unchecked`` passed their
        content check."""
        with self._cond:
            self.stats.unpacked += len(done)
            if len(self.checked) != len(self.members):  # (reset meanwhile)
                return
            for i in done:
                if i not in unchecked:
                    self.checked[i] = 1
                    self.stats.checked += 1

    def _unpacked_elsewhere(self, done: Sequence[int], unchecked: Collection[int]) -> None:
        """A child wrote ``done``: its counter is its own, so the report's is counted here
        (in this process the writer counts each one itself)."""
        self._unpacked(done, unchecked)
        count_images(len(done))

    def _write(self, fd: int, m: Member, d: str, mode: int, vouch: Vouched | None) -> None:
        try:
            extract_member(lambda at, n: os.pread(fd, n, at), m.entry, d, m.final, mode,
                           dir_fd=self.images_fd, in_place=True, inspect=vouch)
        except Damaged as exc:
            raise damaged_member(self.entry.name, m.entry.name, str(exc), DAMAGED_HINT) from None

    def _planner_alive(self) -> bool:
        return bool(self.threads) and self.threads[0].is_alive()

    # -- helpers ---------------------------------------------------------------------------
    def _stop(self, why: str) -> None:
        with self._cond:
            if self.stats.disabled is None:
                self.stats.disabled = why
            self.stopped = True
            self._cond.notify_all()
            procs = list(self.procs)
        for p in procs:
            p.stop()
        if self.log is not None:
            self.log(f"{self.entry.name}: {why}; unpacking after the download instead")

    def _stop_threads(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
            procs = list(self.procs)
        for p in procs:  # each stops at its next member; its thread then reaps it
            p.stop()
        for t in self.threads:
            t.join()
        self._close()

    def _close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
            self.flusher = None
        with self._cond:
            self.threads = []
            self.starts, self.ends, self.queued = [], [], bytearray()  # ``plan`` stays
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = -1
            if self.images_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.images_fd)
                self.images_fd = -1
