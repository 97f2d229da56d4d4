"""The download engine: parallel byte ranges, resumable across kills, verified before it lands.

How a file travels (every step is there for a failure we have seen or expect):

1. **Probe** (``HEAD``): size, ETag, Last-Modified. For a multipart S3 ETag (``<md5>-<N>``) the
   part size is asked with ``HEAD ?partNumber=1`` so the ETag can be checked; for a server that
   does not answer that, the part sizes that fit the size and part count are tried (a size that
   reproduces the ETag proves the bytes; none that does is a mismatch).
2. **Plan**: the file is cut into chunks (the part size, else 8 MiB); a preallocated partial file
   in ``DATA/.isic2020/partial/`` receives each chunk in place (``pwrite``). A small JSON state
   file next to it lists the byte intervals written, inside chunks too; a background checkpoint
   rewrites it (atomically, at most ten times a second, and at an interrupt) only after an
   ``fdatasync`` of the data it claims (``checkpoint.py``), so a kill loses at most the last
   fraction of a second and a power loss never leaves a claim on bytes that are not on disk.
   The state is tied to the object's size and ETag: a run that finds another ETag starts over
   instead of splicing two versions.
3. **Transfer**: ``connections`` worker threads, each with its own session, take chunks from a
   queue. Every ranged GET carries ``If-Match`` (or ``If-Unmodified-Since``) and must answer 206
   with exactly the Content-Range asked for; anything else is a retry, a changed object (start
   over cleanly), or a server that ignores ranges (fall back to one plain stream).
   Body reads are retried by us (urllib3 cannot resume a broken body) from the byte where they
   broke, with exponential backoff and full jitter, honouring ``Retry-After``; a 503/429 also
   halves the number of parallel requests for a while (AIMD). A body slower than the lowest
   speed for its window fails the request (``speed.py``; it also halves the parallel requests).
   A host is given up only after ``RetryPolicy.window`` seconds without progress (a new byte
   arriving at the lowest speed or faster; in a plain stream, a byte beyond the best attempt),
   or at once for a redirect loop or a redirect to anything but http(s); then the next host or
   mirror takes over (keeping the partial file when it serves the same object).
4. **Hash while downloading**: a follower thread reads the contiguous finished prefix back from
   the page cache and feeds SHA-256, MD5 and per-part MD5s, so verification needs no second pass
   over the file after the last byte. A :class:`TransferObserver` is told of every block as it
   lands (``streaming`` unpacks a zip's members from them while the rest downloads) and may ask
   for a region first (the zip's central directory, at its end).
5. **Verify, then land**: size, the S3 ETag when it is a content hash, the manifest's sha256 when
   known; a content hash that does not match is repaired from a second copy (``repair``); the
   caller's content checks (``plausible``: a zip that is a zip, a CSV with its header) run last.
   Only then is the partial file fsynced and renamed to its final path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from isic2020.catalog.plausible import encoding_problem
from isic2020.errors import DiskError, DownloadError, Interrupted, ObjectChanged, VerificationError
from isic2020.report import progress_bar
from isic2020.store.fsutil import move_into_place, open_nofollow, remove_file
from isic2020.store.records import atomic_write_json, done_intervals, read_json, remove_stale_temps
from isic2020.transfer.checkpoint import Checkpointer
from isic2020.transfer.digests import (
    COMMON_PART_SIZES,  # noqa: F401 - re-exported: callers and tests import it from here
    MultipartHasher,
    conditional_headers,
    etag_kind,
    matching_part_size,
    multipart_count,
    normalize_etag,
    part_size_candidates,
    pin_note,
)
from isic2020.transfer.http import RedirectRefused, Timeouts, header_int, make_session
from isic2020.transfer.repair import ContentCheck, RepairFailed, repair
from isic2020.transfer.speed import SpeedGuard, TooSlow, read_block

MiB = 1 << 20
# 16: on S3-like servers that cap each stream, time falls linearly up to 16 connections
# (benchmarks/RESULTS.md row 1: 44.0, 11.8, 6.4, 3.8 s at 1, 4, 8, 16), as with aria2c's -x16.
DEFAULT_CONNECTIONS = 16
DEFAULT_CHUNK = 8 * MiB
BLOCK = 1 * MiB
#: Bytes per socket read of a ranged body: with 16 connections, 1 MiB reads held ~30 MB more
#: (http.client's buffer and the block, per connection) for no measurable gain in throughput.
READ_BLOCK = 256 * 1024
_TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # partial files, opened with open_nofollow
_CONTENT_RANGE_RE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)$")
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
#: Where a host sends us cannot change by asking again: a failed host at once, then the next.
_REDIRECT_ERRORS = (
    RedirectRefused,
    requests.TooManyRedirects,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
)

Log = Callable[[str], None]
#: A last check of verified bytes before they land: a reason to refuse them, or None.
Accept = Callable[[Path], "str | None"]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``window``: seconds without any progress before a host is given up."""

    base: float = 0.5
    cap: float = 20.0
    window: float = 300.0
    probe_attempts: int = 3
    object_restarts: int = 3

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.window)
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * (2**attempt))


@dataclass
class DownloadOptions:
    connections: int = DEFAULT_CONNECTIONS
    chunk_size: int = DEFAULT_CHUNK
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = False
    log: Log | None = None


@dataclass
class RemoteObject:
    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    part_size: int | None = None
    part_size_source: str | None = None  # "server" or "guess"
    #: Multipart ETag, part size not stated: the sizes that fit, tried in order (``hashing``).
    part_sizes: tuple[int, ...] = ()
    #: The ETag header exactly as received: sent back as the validator, never re-quoted.
    validator: str | None = None
    content_encoding: str | None = None


@dataclass
class DownloadResult:
    """What happened to one file; the fields of ``fetch --json``'s per-file entry."""

    name: str
    path: str
    url: str
    size: int
    etag: str | None
    sha256: str
    md5: str | None
    etag_check: str
    bytes_transferred: int
    seconds: float
    retries: int
    status: str  # downloaded | resumed | cached
    failed_hosts: list[str] = field(default_factory=list)
    #: Byte ranges taken from a second copy to make a mismatching content hash match.
    repaired: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HostFailed(Exception):
    """This host cannot give us this file (after retries); try the next one."""


class _RangesIgnored(HostFailed):
    """The server answered a ranged GET with the whole body (the engine falls back to one
    plain stream; where ranges are indispensable it is a failed host)."""

    def __init__(self) -> None:
        super().__init__("the server ignores byte ranges (answered 200 to a Range request)")


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None, slowdown: bool = False):
        super().__init__(msg)
        self.retry_after = retry_after
        self.slowdown = slowdown


# --------------------------------------------------------------------------------------------
# Small pieces


def _retry_after(resp: requests.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, requests.TooManyRedirects):
        return f"redirect loop ({text or 'too many redirects'})"
    if isinstance(exc, RedirectRefused):
        return text
    if isinstance(exc, requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema):
        return f"redirected to an unusable URL ({text[:120]})"
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return "host name could not be resolved (DNS)"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout) or "timed out" in text:
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS certificate verification failed"
    if "Connection reset by peer" in text or "ConnectionResetError" in text:
        return "connection reset by the server"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection closed before the body was complete"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:160]


def add_interval(done: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Merge ``[start, end)`` into sorted, disjoint, non-adjacent byte intervals."""
    out: list[list[int]] = []
    placed = False
    for a, b in done:
        if b < start or a > end:
            if not placed and a > end:
                out.append([start, end])
                placed = True
            out.append([a, b])
        else:
            start, end = min(a, start), max(b, end)
    if not placed:
        out.append([start, end])
    return sorted(out)


def missing_ranges(done: list[list[int]], size: int) -> list[tuple[int, int]]:
    """The byte ranges of ``[0, size)`` not covered by ``done``."""
    out = []
    pos = 0
    for a, b in done:
        if min(a, size) > pos:
            out.append((pos, min(a, size)))
        pos = max(pos, b)
    if pos < size:
        out.append((pos, size))
    return out


def plan_chunk(size: int, connections: int, base: int = DEFAULT_CHUNK) -> int:
    """Bytes per ranged request: about ``base``, but a whole multiple of ``connections``
    chunks, so the last round keeps every connection busy instead of one chunk running alone
    (with 49 chunks of 8 MiB over 16 connections, a fourth round of one chunk cost 0.5 s in
    the benchmark). Never under 1 MiB (or ``base`` if smaller): requests have a fixed cost.
    """
    if size <= 0:
        return max(1, base)
    rounds = max(1, math.ceil(size / (connections * base)))
    chunk = math.ceil(size / (rounds * connections))
    chunk = math.ceil(chunk / (64 * 1024)) * 64 * 1024
    return max(chunk, min(base, MiB))


def disk_error(path: Path, exc: OSError) -> DiskError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what = "the disk is full" if exc.errno != errno.EFBIG else "the file size limit was hit"
        return DiskError(
            f"writing {path.name}: {what} ({exc.strerror})",
            "free space (or raise the limit) and run the same command again to resume",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DiskError(
            f"cannot write {path}: {exc.strerror}",
            "make the data directory writable or choose another with --data-dir",
        )
    return DiskError(f"writing {path}: {exc.strerror or exc}", "check the disk, then run again")


class Throttle:
    """Caps requests in flight; halves the cap and pauses everyone on 503 SlowDown / 429."""

    def __init__(self, limit: int) -> None:
        self.max = limit
        self.limit = limit
        self.active = 0
        self.pause_until = 0.0
        self._ok = 0
        self._cond = threading.Condition()

    def acquire(self, abort: threading.Event) -> None:
        with self._cond:
            while True:
                if abort.is_set():
                    raise Interrupted("aborted")
                wait = self.pause_until - time.monotonic()
                if self.active < self.limit and wait <= 0:
                    self.active += 1
                    return
                self._cond.wait(timeout=min(0.2, wait) if wait > 0 else 0.2)

    def release(self, ok: bool) -> None:
        with self._cond:
            self.active -= 1
            if ok and self.limit < self.max:
                self._ok += 1
                if self._ok >= 4:
                    self.limit += 1
                    self._ok = 0
            self._cond.notify_all()

    def slowdown(self, delay: float) -> None:
        with self._cond:
            self.limit = max(1, self.limit // 2)
            self._ok = 0
            self.pause_until = max(self.pause_until, time.monotonic() + delay)


class _Follower(threading.Thread):
    """Hashes the contiguous finished prefix of the partial file while the rest downloads."""

    def __init__(
        self, fd: int, size: int, part_size: int | None, want_md5: bool, want_sha256: bool = True
    ) -> None:
        super().__init__(name="isic2020-hash", daemon=True)
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self.sha256 = hashlib.sha256() if want_sha256 else None
        self.md5 = hashlib.md5() if want_md5 else None
        self.part_md5s: list[bytes] = []
        self._part = hashlib.md5() if part_size else None
        self._part_left = part_size or 0
        self.pos = 0
        self._frontier = 0
        self._cond = threading.Condition()
        self._halt = False
        self.error: BaseException | None = None

    def advance(self, frontier: int) -> None:
        with self._cond:
            if frontier > self._frontier:
                self._frontier = frontier
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify()

    def run(self) -> None:
        try:
            while self.pos < self.size:
                with self._cond:
                    while self._frontier <= self.pos and not self._halt:
                        self._cond.wait()
                    if self._halt:
                        return
                    frontier = self._frontier
                while self.pos < frontier:
                    block = os.pread(self.fd, min(4 * BLOCK, frontier - self.pos), self.pos)
                    if not block:
                        raise OSError(errno.EIO, "short read from partial file")
                    self._feed(block)
                    self.pos += len(block)
        except BaseException as exc:  # surfaced by the transfer
            self.error = exc

    def _feed(self, block: bytes) -> None:
        if self.sha256 is not None:
            self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)
        if self._part is None:
            return
        view = memoryview(block)
        while view:
            take = min(self._part_left, len(view))
            self._part.update(view[:take])
            self._part_left -= take
            view = view[take:]
            if self._part_left == 0:
                self.part_md5s.append(self._part.digest())
                self._part = hashlib.md5()
                self._part_left = self.part_size or 0
        if self.pos + len(block) >= self.size and self._part_left != self.part_size:
            self.part_md5s.append(self._part.digest())

    def digests(self) -> tuple[str | None, str | None, str | None]:
        mp = None
        if self.part_size:
            mp = f"{hashlib.md5(b''.join(self.part_md5s)).hexdigest()}-{len(self.part_md5s)}"
        sha = self.sha256.hexdigest() if self.sha256 is not None else None
        return sha, (self.md5.hexdigest() if self.md5 else None), mp


class _Hashers:
    """SHA-256 in one follower, the MD5s an S3 ETag needs in another: hashlib releases the
    GIL on big blocks, so the two run on two cores (MD5 alone is ~0.5 GB/s a core, SHA-256
    with SHA-NI ~1.1 GB/s; in one thread they would cap the download at ~0.33 GB/s)."""

    def __init__(self, fd: int, size: int, part_size: int | None, want_md5: bool) -> None:
        self.followers = [_Follower(fd, size, None, False, want_sha256=True)]
        if want_md5 or part_size:
            self.followers.append(_Follower(fd, size, part_size, want_md5, want_sha256=False))

    def start(self) -> None:
        for f in self.followers:
            f.start()

    def advance(self, frontier: int) -> None:
        for f in self.followers:
            f.advance(frontier)

    def stop(self) -> None:
        for f in self.followers:
            f.stop()

    def join(self) -> BaseException | None:
        """Wait for every follower; the first error, if any."""
        for f in self.followers:
            f.join()
        return next((f.error for f in self.followers if f.error is not None), None)

    def digests(self) -> tuple[str, str | None, str | None]:
        sha = self.followers[0].digests()[0] or ""
        md5 = mp = None
        if len(self.followers) > 1:
            _, md5, mp = self.followers[1].digests()
        return sha, md5, mp


# --------------------------------------------------------------------------------------------
# Watching a transfer


class TransferObserver:
    """Told where a ranged transfer's bytes land, as they land; the base class ignores it all.

    Why a hook and not a second pass: whatever can be done with the bytes of a region (unpack
    the zip members inside it) can start as soon as that region is on disk, so the work hides
    behind the download instead of following it. ``arrived`` runs in a download thread after
    every block (about 1 MiB): it must be quick and must never raise. Nothing derived from the
    partial file may be trusted after ``discard`` (it was thrown away: changed object, failed
    verification, a server that ignores ranges).
    """

    def first_offset(self, size: int) -> int | None:
        """Bytes from this offset to the end are fetched before the others (None: in order)."""
        return None

    def begin(
        self,
        remote: RemoteObject,
        fd: int,
        done: list[list[int]],
        prioritize: Callable[[int, int], None],
    ) -> None:
        """A transfer of ``remote`` starts into the partial file ``fd`` (valid until the call
        returns: ``os.dup`` it to keep it), with ``done`` already there from a resumed run.
        ``prioritize(start, end)`` moves queued chunks of that region to the front."""

    def arrived(self, start: int, end: int) -> None:
        """``[start, end)`` is written to the partial file."""

    def discard(self) -> None:
        """The partial file was deleted; anything made from its bytes is void."""


# --------------------------------------------------------------------------------------------
# One transfer of one object from one URL


class _Transfer:
    def __init__(
        self,
        opts: DownloadOptions,
        remote: RemoteObject,
        partial: Path,
        state_path: Path,
        bar: Any,
        observer: TransferObserver | None = None,
    ) -> None:
        assert remote.size is not None
        self.observer = observer
        self.opts = opts
        self.remote = remote
        self.size = remote.size
        self.partial = partial
        self.state_path = state_path
        self.bar = bar
        # Per-part MD5s come from the follower's sequential pass, so chunks need not align to
        # S3 parts: they are sized for the connections instead.
        self.chunk = plan_chunk(self.size, opts.connections, opts.chunk_size)
        self.done: list[list[int]] = []  # finished byte intervals, sorted and merged
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.throttle = Throttle(opts.connections)
        self.client = RangeClient(
            remote.url,
            self.size,
            remote.etag,
            remote.last_modified,
            timeouts=opts.timeouts,
            retry=opts.retry,
            throttle=self.throttle,
            abort=self.abort,
            on_bytes=bar.update if bar is not None else None,
            block=READ_BLOCK,
            validator=remote.validator,
        )
        self.resumed_bytes = 0
        self.fd = -1
        self.follower: _Hashers | None = None
        # The queue exists only once ``run`` has planned it, but the observer's threads may ask
        # for a region first (``prioritize``) as soon as ``begin`` starts them: kept here.
        self._queue: list[tuple[int, int]] = []
        self._early: list[tuple[int, int]] | None = []
        # Chunks being fetched: start -> [start, end of what is written so far]. The state
        # claims these too (see checkpoint.py), so an interrupt loses no written byte.
        self._inflight: dict[int, list[int]] = {}
        self.checkpoint: Checkpointer | None = None

    # -- state ----------------------------------------------------------------------------
    def _state_doc(self, done: list[list[int]] | None = None) -> dict[str, Any]:
        return {
            "version": 2,
            "url": self.remote.url,
            "size": self.size,
            "etag": self.remote.etag,
            "last_modified": self.remote.last_modified,
            "done": self.done if done is None else done,
        }

    def _written(self) -> list[list[int]]:
        """Every byte interval written so far: finished chunks and the written part of the
        chunks in flight (the checkpoint's snapshot)."""
        with self.lock:
            out = [list(iv) for iv in self.done]
            for a, b in self._inflight.values():
                if b > a:
                    out = add_interval(out, a, b)
        return out

    def _checkpoint_failed(self, exc: BaseException) -> None:
        err = disk_error(self.state_path, exc) if isinstance(exc, OSError) else exc
        with self.lock:
            if self.error is None:
                self.error = err
        self.abort.set()

    def _load_state(self) -> None:
        doc = read_json(self.state_path)
        if not isinstance(doc, dict) or not self.partial.exists():
            return
        same = (
            doc.get("version") == 2
            and doc.get("size") == self.size
            and (
                (self.remote.etag and doc.get("etag") == self.remote.etag)
                or (
                    not self.remote.etag
                    and self.remote.last_modified
                    and doc.get("last_modified") == self.remote.last_modified
                    and doc.get("url") == self.remote.url
                )
            )
        )
        if not same:
            self._log(f"{self.partial.name}: the remote object changed since the partial download; "
                      "starting over")
            return
        self.done = done_intervals(doc.get("done", []), self.size)
        self.resumed_bytes = sum(b - a for a, b in self.done)

    def _save_state(self, done: list[list[int]] | None = None) -> None:
        """Replace the state file (not fsynced: see checkpoint.py for why that is safe).
        Only :class:`Checkpointer` may claim new bytes; other callers save what was loaded."""
        try:
            atomic_write_json(self.state_path, self._state_doc(done), durable=False)
        except OSError as exc:
            raise disk_error(self.state_path, exc) from None

    def _log(self, msg: str) -> None:
        if self.opts.log:
            self.opts.log(msg)

    def _frontier(self) -> int:
        """End of the finished prefix: what the follower may hash."""
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0

    # -- run ------------------------------------------------------------------------------
    def run(self) -> tuple[str, str | None, str | None]:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.state_path)  # a kill during a checkpoint's write
        self._load_state()
        if not self.done and self.partial.exists():
            remove_file(self.partial)
        try:
            fresh = not self.partial.exists()
            self.fd = open_nofollow(self.partial, os.O_RDWR | os.O_CREAT)
            if fresh or os.fstat(self.fd).st_size != self.size:
                os.ftruncate(self.fd, self.size)
                if fresh and hasattr(os, "posix_fallocate") and self.size:
                    try:
                        os.posix_fallocate(self.fd, 0, self.size)
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                            raise
                        # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; that is fine.
        except OSError as exc:
            self._close()
            raise disk_error(self.partial, exc) from None
        self._save_state()
        if self.bar is not None:
            self.bar.update(self.resumed_bytes)
        kind = etag_kind(self.remote.etag)
        self.follower = _Hashers(self.fd, self.size, self.remote.part_size, kind == "md5")
        self.follower.start()
        self.follower.advance(self._frontier())
        first = None
        if self.observer is not None:
            self.observer.begin(self.remote, self.fd, [list(iv) for iv in self.done],
                                self.prioritize)
            first = self.observer.first_offset(self.size)
        pending = self._plan(first)
        with self.lock:
            self._queue = list(reversed(pending))  # pop() from the end: lowest offsets first
            early, self._early = self._early or [], None
        for a, b in early:
            self.prioritize(a, b)
        self.checkpoint = Checkpointer(self.fd, self._written, self._save_state,
                                       self._checkpoint_failed)
        self.checkpoint.start()
        workers = [
            threading.Thread(target=self._worker, name=f"isic2020-dl-{k}", daemon=True)
            for k in range(min(self.opts.connections, len(pending)))
        ]
        try:
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                for w in workers:
                    w.join(timeout=0.1)
            if self.error is not None:
                raise self.error
            error = self.follower.join()
            if error is not None:
                raise disk_error(self.partial, error) if isinstance(error, OSError) else error
            self.checkpoint.stop(flush=False)  # the file is synced and renamed by finish()
            return self.follower.digests()
        except BaseException:
            self.abort.set()
            self.follower.stop()
            with contextlib.suppress(OSError, DiskError):
                self.checkpoint.stop(flush=True)  # claim every byte written, in chunks too
            raise

    def _plan(self, first: int | None) -> list[tuple[int, int]]:
        """The chunks still missing, in the order they are fetched: ``[first, size)`` (cut
        finer, so that every connection helps with it) before the rest, each part in order."""

        def cut(ranges: list[tuple[int, int]], step: int) -> list[tuple[int, int]]:
            return [(a, min(end, a + step)) for start, end in ranges
                    for a in range(start, end, step)]

        missing = missing_ranges(self.done, self.size)
        if first is None or not 0 <= first < self.size:
            return cut(missing, self.chunk)
        head = [(max(a, first), b) for a, b in missing if b > first]
        rest = [(a, min(b, first)) for a, b in missing if a < first]
        return cut(head, self._fine_step(self.size - first)) + cut(rest, self.chunk)

    def _fine_step(self, length: int) -> int:
        """Chunk size for a region wanted first: shared by all connections, >= 256 KiB."""
        return max(256 * 1024, min(self.chunk, -(-length // self.opts.connections)))

    def prioritize(self, start: int, end: int) -> None:
        """Fetch what is queued of ``[start, end)`` next, cut so that every connection helps:
        queued chunks are split at its edges and the inside re-cut finer."""
        step = self._fine_step(end - start)
        with self.lock:
            if self._early is not None:  # asked before the queue was planned: applied then
                self._early.append((start, end))
                return
            rest: list[tuple[int, int]] = []
            hit: list[tuple[int, int]] = []
            for a, b in self._queue:
                if b <= start or a >= end:
                    rest.append((a, b))
                    continue
                if a < start:
                    rest.append((a, start))
                if b > end:
                    rest.append((end, b))
                lo, hi = max(a, start), min(b, end)
                hit.extend((x, min(hi, x + step)) for x in range(lo, hi, step))
            rest.sort(reverse=True)  # popped from the end: lowest offsets first
            hit.sort(reverse=True)
            self._queue = rest + hit

    def finish(self) -> None:
        """Flush the data to disk before the rename makes it final."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise disk_error(self.partial, exc) from None
        finally:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _next(self) -> tuple[int, int] | None:
        with self.lock:
            return self._queue.pop() if self._queue else None

    def _worker(self) -> None:
        session = make_session(1)
        try:
            while not self.abort.is_set():
                span = self._next()
                if span is None:
                    return
                self._fetch_chunk(session, *span)
                with self.lock:
                    self.done = add_interval(self.done, *span)
                    self._inflight.pop(span[0], None)
                    frontier = self._frontier()
                assert self.follower is not None and self.checkpoint is not None
                self.follower.advance(frontier)
                self.checkpoint.poke()
        except BaseException as exc:
            with self.lock:
                if self.error is None and not isinstance(exc, Interrupted):
                    self.error = exc
            self.abort.set()
        finally:
            session.close()

    def _fetch_chunk(self, session: requests.Session, start: int, end: int) -> None:
        """Write ``[start, end)`` in place; the client retries and checks every response.
        What is written is recorded as it goes, so a checkpoint can claim part of a chunk."""
        offset = [start]
        observer = self.observer
        checkpoint = self.checkpoint
        assert checkpoint is not None

        def write(block: bytes) -> None:
            view = memoryview(block)
            at = offset[0]
            try:
                while view:
                    n = os.pwrite(self.fd, view, offset[0])
                    view = view[n:]
                    offset[0] += n
            except OSError as exc:
                raise disk_error(self.partial, exc) from None
            with self.lock:
                self._inflight[start] = [start, offset[0]]
            checkpoint.poke()
            if observer is not None:
                observer.arrived(at, offset[0])

        self.client.stream(session, start, end, write)

    @property
    def transferred(self) -> int:
        return self.client.transferred

    @property
    def retries(self) -> int:
        return self.client.retries


class RangeClient:
    """Strict ranged GETs of one pinned object, retried from the byte where a body broke.

    The one place that asks for bytes by range: the engine's chunks (``_Transfer``) and the
    remote zip's directory and members (``remotezip``) both go through :meth:`stream`.
    Thread-safe counters; each thread passes its own session.
    """

    def __init__(
        self,
        url: str,
        size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        timeouts: Timeouts,
        retry: RetryPolicy,
        throttle: Throttle | None = None,
        abort: threading.Event | None = None,
        on_bytes: Callable[[int], None] | None = None,
        block: int = BLOCK,
        validator: str | None = None,
    ) -> None:
        """``validator``: the ETag header as the server sent it (``If-Match`` sends it back
        unchanged; a weak one pins with ``If-Unmodified-Since`` instead, see ``hashing``)."""
        self.url = url
        self.size = size
        self.etag = etag
        self.last_modified = last_modified
        self.conditions = conditional_headers(etag, last_modified, validator)
        self.timeouts = timeouts
        self.retry = retry
        self.throttle = throttle or Throttle(64)
        self.abort = abort or threading.Event()
        self.on_bytes = on_bytes
        # Bytes per read: each connection holds about twice this (http.client's buffer and the
        # block), so 16 connections at 1 MiB cost ~30 MB more than at 256 KiB.
        self.block = block
        self.lock = threading.Lock()
        self.transferred = 0
        self.retries = 0
        self.last_progress = time.monotonic()
        self.last_error = ""

    def read(self, session: requests.Session, start: int, end: int) -> bytes:
        out = bytearray()
        self.stream(session, start, end, out.extend)
        return bytes(out)

    def stream(
        self,
        session: requests.Session,
        start: int,
        end: int,
        sink: Callable[[bytes], None],
    ) -> None:
        """Feed ``sink`` every byte of ``[start, end)`` exactly once, in order, across retries."""
        pos = start
        attempt = 0
        while pos < end:
            if self.abort.is_set():
                raise Interrupted("aborted")
            headers = {"Range": f"bytes={pos}-{end - 1}", **self.conditions}
            self.throttle.acquire(self.abort)
            ok = False
            before = pos
            try:
                try:
                    with session.get(
                        self.url, headers=headers, stream=True, timeout=self.timeouts.as_tuple()
                    ) as resp:
                        self._check(resp, pos, end)
                        raw = resp.raw
                        guard = SpeedGuard(self.timeouts.lowest_speed, self.timeouts.speed_time)
                        while pos < end:
                            if self.abort.is_set():
                                raise Interrupted("aborted")
                            block = read_block(raw, min(self.block, end - pos), guard)
                            if not block:
                                break
                            pos += len(block)
                            # Trickled bytes are no progress: a host that only trickles is
                            # given up after the retry window, like one that sends nothing.
                            # A finished range is (a short one may not reach the rate at all).
                            healthy = pos >= end or guard.healthy()
                            with self.lock:
                                self.transferred += len(block)
                                if healthy:
                                    self.last_progress = time.monotonic()
                            if self.on_bytes is not None:
                                self.on_bytes(len(block))
                            sink(block)
                            guard.check()
                finally:
                    if pos > before:
                        attempt = 0
                ok = pos >= end
                if not ok:
                    raise _Retryable("connection closed before the range was complete")
            except _Retryable as exc:
                self._note_retry(str(exc), exc.retry_after, exc.slowdown, attempt)
                attempt += 1
            except TooSlow as exc:  # fewer parallel requests may be what a slow link needs
                self._note_retry(str(exc), None, True, attempt)
                attempt += 1
            except _REDIRECT_ERRORS as exc:
                raise HostFailed(_describe(exc)) from None
            except _NETWORK_ERRORS as exc:
                self._note_retry(_describe(exc), None, False, attempt)
                attempt += 1
            finally:
                self.throttle.release(ok)

    def _check(self, resp: requests.Response, pos: int, end: int) -> None:
        status = resp.status_code
        etag = normalize_etag(resp.headers.get("ETag"))
        if status in (200, 206) and self.etag and etag and etag != self.etag:
            raise ObjectChanged(f"{self.url}: ETag changed from {self.etag} to {etag}")
        if status == 206:
            enc = resp.headers.get("Content-Encoding", "identity").lower()
            if enc not in ("identity", ""):
                raise HostFailed(f"server sent Content-Encoding {enc} despite identity")
            m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
            if not m:
                raise _Retryable("206 without a valid Content-Range")
            a, b, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if total != "*" and int(total) != self.size:
                raise ObjectChanged(f"{self.url}: object size changed to {total}")
            if a != pos or b != end - 1:
                raise _Retryable(
                    f"Content-Range {a}-{b} does not match the request {pos}-{end - 1}"
                )
            return
        if status == 200:
            raise _RangesIgnored()
        if status in (412, 416):
            raise ObjectChanged(f"{self.url}: HTTP {status} to a conditional range request")
        if status in (429, 503):
            raise _Retryable(f"HTTP {status} (slow down)", _retry_after(resp), slowdown=True)
        if status >= 500 or status == 408:
            raise _Retryable(f"HTTP {status}", _retry_after(resp))
        raise HostFailed(f"HTTP {status}")

    def _note_retry(
        self, why: str, retry_after: float | None, slowdown: bool, attempt: int
    ) -> None:
        with self.lock:
            self.retries += 1
            self.last_error = why
            stalled = time.monotonic() - self.last_progress
        if stalled > self.retry.window:
            raise HostFailed(f"no progress for {stalled:.0f}s (last error: {why})")
        delay = self.retry.delay(attempt, retry_after)
        if slowdown:
            self.throttle.slowdown(delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if self.abort.is_set():
                raise Interrupted("aborted")
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))



# --------------------------------------------------------------------------------------------
# The public engine


class Downloader:
    """Downloads one file from a list of URLs (hosts or mirrors, in order) into a final path."""

    def __init__(self, options: DownloadOptions | None = None) -> None:
        self.opts = options or DownloadOptions()
        self._session = make_session(2)

    def close(self) -> None:
        self._session.close()

    def _log(self, msg: str) -> None:
        if self.opts.log:
            self.opts.log(msg)

    # -- probe ----------------------------------------------------------------------------
    def probe(self, url: str) -> RemoteObject:
        """HEAD the object (with a few quick retries); raise HostFailed when it cannot be had."""
        last = ""
        for attempt in range(self.opts.retry.probe_attempts):
            try:
                resp = self._session.head(
                    url, timeout=self.opts.timeouts.as_tuple(), allow_redirects=True
                )
            except _REDIRECT_ERRORS as exc:
                raise HostFailed(_describe(exc)) from None
            except _NETWORK_ERRORS as exc:
                last = _describe(exc)
                if "DNS" in last or isinstance(exc, requests.exceptions.SSLError):
                    break  # retrying cannot fix a missing name or a bad certificate
            else:
                if resp.status_code in (405, 501):
                    return self._probe_get(url)
                if resp.status_code == 200:
                    return self._remote_from(url, resp, resp.headers.get("Content-Length"))
                if resp.status_code in (429, 503) or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    time.sleep(self.opts.retry.delay(attempt, _retry_after(resp)))
                    continue
                raise HostFailed(f"HTTP {resp.status_code}")
            time.sleep(self.opts.retry.delay(attempt))
        raise HostFailed(last or "no answer")

    def _probe_get(self, url: str) -> RemoteObject:
        with self._session.get(
            url, headers={"Range": "bytes=0-0"}, stream=True, timeout=self.opts.timeouts.as_tuple()
        ) as resp:
            if resp.status_code == 206:
                m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
                total = m.group(3) if m else None
                return self._remote_from(url, resp, total if total != "*" else None)
            if resp.status_code == 200:
                return self._remote_from(url, resp, resp.headers.get("Content-Length"))
            raise HostFailed(f"HTTP {resp.status_code}")

    def _remote_from(self, url: str, resp: requests.Response, length: str | None) -> RemoteObject:
        size = header_int(length)
        remote = RemoteObject(
            url=url,
            size=size,
            etag=normalize_etag(resp.headers.get("ETag")),
            last_modified=resp.headers.get("Last-Modified"),
            validator=resp.headers.get("ETag"),
            content_encoding=resp.headers.get("Content-Encoding"),
        )
        if size and remote.etag and etag_kind(remote.etag) == "multipart":
            self._find_part_size(remote)
        return remote

    def _find_part_size(self, remote: RemoteObject) -> None:
        """The part size the server states (``HEAD ?partNumber=1``), else the candidates that
        fit (``hashing.part_size_candidates``): the first is hashed while downloading, the
        others only if it does not reproduce the ETag. A stated size must cut the object into
        exactly the ETag's part count (at most 10,000: ``etag_kind``), so what a server claims
        can never make us keep more than 10,000 part digests."""
        assert remote.size is not None and remote.etag is not None
        n = multipart_count(remote.etag)
        sep = "&" if "?" in remote.url else "?"
        try:
            resp = self._session.head(
                remote.url + sep + "partNumber=1", timeout=self.opts.timeouts.as_tuple()
            )
            length = resp.headers.get("Content-Length", "")
            if resp.status_code in (200, 206) and header_int(length) is not None:
                p = int(length)
                if p > 0 and math.ceil(remote.size / p) == n and (n > 1 or p == remote.size):
                    remote.part_size, remote.part_size_source = p, "server"
                    return
        except _NETWORK_ERRORS:
            pass
        remote.part_sizes = tuple(part_size_candidates(remote.size, n))
        if remote.part_sizes:
            remote.part_size, remote.part_size_source = remote.part_sizes[0], "guess"

    # -- download -------------------------------------------------------------------------
    def download(
        self,
        name: str,
        urls: list[str],
        partial: Path,
        state_path: Path,
        final: Path,
        *,
        expected_size: int | None = None,
        expected_etag: str | None = None,
        expected_sha256: str | None = None,
        observer: TransferObserver | None = None,
        accept: Accept | None = None,
    ) -> DownloadResult:
        """Fetch ``name`` from the first URL that works; verified bytes land at ``final``.

        ``observer`` watches ranged transfers (not single streams or ``file://`` copies).
        ``accept(path)`` checks the verified bytes before they land (``plausible``): a reason
        it returns fails that host, and the next one is tried."""
        failures: list[str] = []
        verify_failures: list[str] = []
        t0 = time.monotonic()
        for url in urls:
            try:
                if url.startswith("file://"):
                    return self._copy_local(
                        name, url, partial, final, expected_size, expected_sha256, failures, t0,
                        accept,
                    )
                return self._download_from(
                    name, url, partial, state_path, final,
                    expected_size, expected_etag, expected_sha256, failures, t0, observer,
                    accept,
                )
            except HostFailed as exc:
                failures.append(f"{url}: {exc}")
                more = "; trying the next host" if url != urls[-1] else ""
                self._log(f"{name}: {url} failed: {exc}{more}")
            except VerificationError as exc:
                verify_failures.append(f"{url}: {exc.message}")
                failures.append(f"{url}: {exc.message}")
                self._log(f"{name}: {exc.message}")
        if verify_failures and len(verify_failures) == len(failures):
            raise VerificationError(
                f"{name}: downloaded bytes failed verification ({'; '.join(verify_failures)})",
                "the source serves different data than expected; check the mirror or manifest",
            )
        raise DownloadError(
            f"{name}: every host failed ({'; '.join(failures)})",
            "check the network or the mirror, then run the same command again to resume",
        )

    def _download_from(
        self,
        name: str,
        url: str,
        partial: Path,
        state_path: Path,
        final: Path,
        expected_size: int | None,
        expected_etag: str | None,
        expected_sha256: str | None,
        failures: list[str],
        t0: float,
        observer: TransferObserver | None = None,
        accept: Accept | None = None,
    ) -> DownloadResult:
        restarts = 0
        total_transferred = 0
        total_retries = 0
        while True:
            remote = self.probe(url)
            if expected_size is not None and remote.size not in (None, expected_size):
                raise HostFailed(
                    f"serves {remote.size} bytes but the manifest says {expected_size}"
                )
            if expected_etag and remote.etag and remote.etag != expected_etag:
                raise HostFailed(
                    f"serves ETag {remote.etag} but the manifest pins {expected_etag}"
                )
            encoded = encoding_problem(remote.content_encoding)
            if encoded:
                raise HostFailed(encoded)
            bar = self._bar(name, remote.size)
            try:
                if remote.size is None:
                    sha, md5, mp, n, r = self._single_stream(remote, partial, bar, expected_size)
                    resumed = 0
                    transfer = None
                else:
                    transfer = _Transfer(self.opts, remote, partial, state_path, bar, observer)
                    try:
                        sha, md5, mp = transfer.run()
                    except _RangesIgnored:
                        transfer._close()
                        self._discard(partial, state_path, observer)
                        self._log(f"{name}: {url} ignores byte ranges; using one plain stream")
                        sha, md5, mp, n, r = self._single_stream(
                            remote, partial, bar, expected_size
                        )
                        total_transferred += transfer.transferred
                        total_retries += transfer.retries
                        transfer = None
                        resumed = 0
                    else:
                        n, r = transfer.transferred, transfer.retries
                        resumed = transfer.resumed_bytes
                total_transferred += n
                total_retries += r
            except ObjectChanged as exc:
                if bar is not None:
                    bar.close()
                restarts += 1
                self._discard(partial, state_path, observer)
                if restarts > self.opts.retry.object_restarts:
                    raise HostFailed(f"the object keeps changing ({exc.message})") from None
                self._log(f"{name}: {exc.message}; the remote file changed, starting over")
                continue
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
            if bar is not None:
                bar.close()
            size = partial.stat().st_size
            check = self._verify(name, remote, size, sha, md5, mp, expected_sha256, partial)
            repaired: list[list[int]] = []
            if check.startswith("FAILED") and remote.size in (None, size):
                ranged = transfer is not None
                if transfer is not None:
                    transfer.finish()
                    transfer = None
                if observer is not None:
                    observer.discard()  # what was unpacked came from damaged bytes
                try:
                    sha, md5, mp, n, repaired = self._repair(
                        name, remote, partial, expected_size, expected_sha256, check, ranged
                    )
                except ObjectChanged as exc:
                    self._discard(partial, state_path, observer)
                    restarts += 1
                    if restarts > self.opts.retry.object_restarts:
                        raise HostFailed(f"the object keeps changing ({exc.message})") from None
                    continue
                except VerificationError:
                    self._discard(partial, state_path, observer)
                    raise
                total_transferred += n
                check = self._verify(name, remote, size, sha, md5, mp, expected_sha256, partial)
            if check.startswith("FAILED"):
                self._discard(partial, state_path, observer)
                raise VerificationError(f"{name} from {url}: {check[len('FAILED: '):]}")
            if accept is not None:
                why = accept(partial)
                if why:
                    self._discard(partial, state_path, observer)
                    raise HostFailed(why)
            if transfer is not None:
                transfer.finish()
            self._land(partial, final)
            for p in (state_path, *_repair_paths(partial)):  # (a repair's leftovers too)
                with contextlib.suppress(OSError):
                    remove_file(p)
            remove_stale_temps(state_path)  # a kill while the state was being rewritten
            return DownloadResult(
                name=name,
                path=str(final),
                url=url,
                size=size,
                etag=remote.etag,
                sha256=sha,
                md5=md5,
                etag_check=check,
                bytes_transferred=total_transferred,
                seconds=round(time.monotonic() - t0, 3),
                retries=total_retries,
                status="resumed" if resumed else "downloaded",
                failed_hosts=list(failures),
                repaired=repaired,
            )

    def _repair(
        self,
        name: str,
        remote: RemoteObject,
        partial: Path,
        expected_size: int | None,
        expected_sha256: str | None,
        why: str,
        ranged: bool = True,
    ) -> tuple[str, str | None, str | None, int, list[list[int]]]:
        """A content hash failed: fetch a second copy and keep the bytes that match (see
        ``repair``). Returns the repaired file's digests, the bytes the second copy cost and
        the ranges taken from it; raises VerificationError when nothing matches."""
        content = content_check(remote, expected_sha256)
        failed = f"{name} from {remote.url}: {why[len('FAILED: '):]}"
        if not content.usable:
            raise VerificationError(failed)
        second, second_state = _repair_paths(partial)
        self._log(f"{name}: {why[len('FAILED: '):]}; fetching a second copy to find the "
                  "damaged bytes")
        try:
            transferred = self._second_copy(remote, second, second_state, expected_size, ranged)
        except ObjectChanged:
            self._discard(second, second_state)
            raise
        # (interrupted or a failed host: the second copy stays, a later run resumes it)
        try:
            result = repair(partial, second, content)
        except RepairFailed as exc:
            self._discard(second, second_state)
            raise VerificationError(f"{failed}; {exc}") from None
        except OSError as exc:
            raise disk_error(second, exc) from None
        self._discard(second, second_state)
        self._log(f"{name}: repaired {len(result.replaced)} damaged range(s) from the second "
                  "copy")
        sha, md5, mp = _hash_file(partial, remote.part_size,
                                  want_md5=etag_kind(remote.etag) == "md5")
        return sha, md5, mp, transferred, result.replaced

    def _second_copy(
        self, remote: RemoteObject, path: Path, state: Path, expected_size: int | None,
        ranged: bool = True,
    ) -> int:
        """Download the object once more into ``path`` (ranged, else as the first copy came:
        one plain stream); the bytes it cost."""
        if ranged and remote.size is not None:
            transfer = _Transfer(self.opts, remote, path, state, None, None)
            try:
                transfer.run()
                transfer.finish()
                return transfer.transferred
            except _RangesIgnored:
                transfer._close()
                done = transfer.transferred
            finally:
                transfer._close()
        else:
            done = 0
        _, _, _, n, _ = self._single_stream(remote, path, None, expected_size)
        return done + n

    def _verify(
        self,
        name: str,
        remote: RemoteObject,
        size: int,
        sha: str,
        md5: str | None,
        mp: str | None,
        expected_sha256: str | None,
        path: Path | None = None,
    ) -> str:
        """``etag_check``: what proved the bytes, "unverifiable: <why>" when nothing could
        (the server offers no content hash), or "FAILED: <why>" (then ``repair`` may help).

        A multipart ETag whose part size the server does not state is checked with the part
        sizes that fit (``remote.part_sizes``; the others than the first cost a pass over
        ``path``): one that reproduces the ETag proves the bytes, none is a mismatch.
        """
        if remote.size is not None and size != remote.size:
            return f"FAILED: size {size} differs from the server's {remote.size}"
        if expected_sha256 and sha != expected_sha256:
            return f"FAILED: sha256 {sha} differs from the manifest's {expected_sha256}"
        kind = etag_kind(remote.etag)
        if kind == "md5":
            if md5 != remote.etag:
                return f"FAILED: MD5 {md5} differs from the ETag {remote.etag}"
            return "md5"
        if kind == "multipart":
            assert remote.etag is not None
            if remote.part_size_source == "server":
                if mp == remote.etag:
                    return "multipart"
                return f"FAILED: multipart MD5 {mp} differs from the ETag {remote.etag}"
            found = remote.part_size if mp == remote.etag else None
            rest = [p for p in remote.part_sizes if p != remote.part_size]
            if found is None and rest and path is not None:
                found = matching_part_size(path, remote.etag, rest)
            if found is not None:
                remote.part_size = found
                return f"multipart (part size {found} bytes, found from the ETag)"
            if expected_sha256:
                return ("sha256 (the multipart ETag is reproduced by no part size tried; "
                        "sha256 matches the manifest)")
            tried = ", ".join(str(p) for p in remote.part_sizes) or "none fits"
            return (f"FAILED: the multipart ETag {remote.etag} is reproduced by no part size "
                    f"(tried: {tried})")
        note = pin_note(remote.etag, remote.last_modified)
        note = f"; {note}" if note else ""
        if remote.etag and expected_sha256:
            return (
                "unverifiable: the server's ETag is not a content hash; "
                f"sha256 matches the manifest{note}"
            )
        if expected_sha256:
            return "sha256"
        return f"unverifiable: the server's ETag is not a content hash{note}"

    def _single_stream(
        self, remote: RemoteObject, partial: Path, bar: Any, expected_size: int | None
    ) -> tuple[str, str | None, str | None, int, int]:
        """For servers without byte ranges: one GET, restarted from zero on failure.

        Progress is a byte beyond the best attempt so far (at the lowest speed or faster), not
        a byte received: a server that drops every connection at the same point restarts us
        from zero forever, yet each attempt "receives". The host is given up after the retry
        window without such a byte, plus the time the best attempt took to get that far (a
        restart of a big file must be allowed to catch up).
        """
        transferred = retries = attempt = 0
        best = 0
        best_took = 0.0
        last_progress = time.monotonic()
        kind = etag_kind(remote.etag)
        timeouts = self.opts.timeouts
        while True:
            sha, md5 = hashlib.sha256(), hashlib.md5()
            # A multipart ETag is checked from per-part MD5s here too, as in the follower.
            parts = None
            if kind == "multipart" and remote.part_size:
                parts = MultipartHasher(remote.part_size)
            written = 0
            guard = SpeedGuard(timeouts.lowest_speed, timeouts.speed_time)
            began = guard.start
            try:
                with self._session.get(
                    remote.url, stream=True, timeout=self.opts.timeouts.as_tuple()
                ) as resp:
                    if resp.status_code in (429, 503) or resp.status_code >= 500:
                        raise _Retryable(f"HTTP {resp.status_code}", _retry_after(resp))
                    if resp.status_code != 200:
                        raise HostFailed(f"HTTP {resp.status_code}")
                    encoded = encoding_problem(resp.headers.get("Content-Encoding"))
                    if encoded:
                        raise HostFailed(encoded)
                    etag = normalize_etag(resp.headers.get("ETag"))
                    if remote.etag and etag and etag != remote.etag:
                        raise ObjectChanged(f"ETag changed from {remote.etag} to {etag}")
                    length = resp.headers.get("Content-Length")
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        fh = os.fdopen(open_nofollow(partial, _TRUNCATE), "wb")  # noqa: SIM115
                    except OSError as exc:
                        raise disk_error(partial, exc) from None
                    with fh:
                        if bar is not None:
                            bar.reset(total=header_int(length))
                        while True:
                            block = read_block(resp.raw, BLOCK, guard)
                            if not block:
                                break
                            try:
                                fh.write(block)
                            except OSError as exc:
                                raise disk_error(partial, exc) from None
                            sha.update(block)
                            if kind == "md5":
                                md5.update(block)
                            if parts is not None:
                                parts.update(block)
                            written += len(block)
                            transferred += len(block)
                            if written > best and guard.healthy():
                                best = written
                                last_progress = time.monotonic()
                                best_took = last_progress - began
                            if bar is not None:
                                bar.update(len(block))
                            guard.check()
                        try:
                            fh.flush()
                            os.fsync(fh.fileno())
                        except OSError as exc:
                            raise disk_error(partial, exc) from None
                    if header_int(length) not in (None, written):
                        raise _Retryable("connection closed before the body was complete")
                    if expected_size is not None and written != expected_size:
                        raise HostFailed(
                            f"sent {written} bytes but the manifest says {expected_size}"
                        )
                    if remote.size is None:
                        remote.size = written
                    md5_hex = md5.hexdigest() if kind == "md5" else None
                    mp = parts.hexdigest() if parts is not None else None
                    return sha.hexdigest(), md5_hex, mp, transferred, retries
            except _REDIRECT_ERRORS as exc:
                raise HostFailed(_describe(exc)) from None
            except (_Retryable, TooSlow, *_NETWORK_ERRORS) as exc:
                retries += 1
                why = str(exc) if isinstance(exc, _Retryable | TooSlow) else _describe(exc)
                if time.monotonic() - last_progress > self.opts.retry.window + best_took:
                    if not best:
                        raise HostFailed(f"no progress (last error: {why})") from None
                    of = f" of {remote.size}" if remote.size is not None else ""
                    raise HostFailed(
                        "the server neither resumes nor completes a transfer (no byte ranges, "
                        f"and no attempt got past byte {best}{of} for "
                        f"{self.opts.retry.window:g} s; last error: {why})"
                    ) from None
                ra = exc.retry_after if isinstance(exc, _Retryable) else None
                time.sleep(self.opts.retry.delay(attempt, ra))
                attempt += 1

    def _copy_local(
        self,
        name: str,
        url: str,
        partial: Path,
        final: Path,
        expected_size: int | None,
        expected_sha256: str | None,
        failures: list[str],
        t0: float,
        accept: Accept | None = None,
    ) -> DownloadResult:
        src = Path(unquote(urlsplit(url).path))
        try:
            size = src.stat().st_size
        except OSError as exc:
            raise HostFailed(exc.strerror or str(exc)) from None
        if expected_size is not None and size != expected_size:
            raise HostFailed(f"has {size} bytes but the manifest says {expected_size}")
        sha = hashlib.sha256()
        partial.parent.mkdir(parents=True, exist_ok=True)
        bar = self._bar(name, size)
        try:
            with open(src, "rb") as fin, os.fdopen(open_nofollow(partial, _TRUNCATE), "wb") as fout:
                while True:
                    block = fin.read(4 * BLOCK)
                    if not block:
                        break
                    fout.write(block)
                    sha.update(block)
                    if bar is not None:
                        bar.update(len(block))
                fout.flush()
                os.fsync(fout.fileno())
        except OSError as exc:
            if exc.filename == str(src) or not partial.exists():
                raise HostFailed(exc.strerror or str(exc)) from None
            raise disk_error(partial, exc) from None
        finally:
            if bar is not None:
                bar.close()
        digest = sha.hexdigest()
        if expected_sha256 and digest != expected_sha256:
            with contextlib.suppress(OSError):
                remove_file(partial)
            raise VerificationError(f"{name} from {url}: sha256 differs from the manifest's")
        why = accept(partial) if accept is not None else None
        if why:
            with contextlib.suppress(OSError):
                remove_file(partial)
            raise HostFailed(why)
        self._land(partial, final)
        return DownloadResult(
            name=name, path=str(final), url=url, size=size, etag=None, sha256=digest, md5=None,
            etag_check="sha256" if expected_sha256 else "unverifiable: local mirror, no checksum",
            bytes_transferred=size, seconds=round(time.monotonic() - t0, 3), retries=0,
            status="downloaded", failed_hosts=list(failures),
        )

    def adopt(
        self,
        name: str,
        urls: list[str],
        final: Path,
        *,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        accept: Accept | None = None,
    ) -> DownloadResult | None:
        """Check a file already at ``final`` (put there by hand, or records lost) against the
        first reachable host's size and ETag; return a result if it verifies, else None.

        This saves a user who already has a 23 GB zip from wget a second download: one local
        hashing pass instead. Only a content-hash ETag or the manifest's sha256 can vouch for
        the file; with neither, it is not trusted.
        """
        t0 = time.monotonic()
        try:
            size = final.stat().st_size
        except OSError:
            return None
        if expected_size is not None and size != expected_size:
            return None
        if accept is not None and accept(final):
            return None
        for url in urls:
            if url.startswith("file://"):
                continue
            try:
                remote = self.probe(url)
            except HostFailed:
                continue
            if remote.size is not None and remote.size != size:
                return None
            kind = etag_kind(remote.etag)
            if kind == "opaque" and not expected_sha256:
                return None
            sha, md5, mp = _hash_file(final, remote.part_size, want_md5=kind == "md5")
            check = self._verify(name, remote, size, sha, md5, mp, expected_sha256, final)
            trusted = not check.startswith(("FAILED", "unverifiable"))
            if not trusted:
                return None
            return DownloadResult(
                name=name, path=str(final), url=url, size=size, etag=remote.etag, sha256=sha,
                md5=md5, etag_check=check, bytes_transferred=0,
                seconds=round(time.monotonic() - t0, 3), retries=0, status="adopted",
            )
        return None

    def _land(self, partial: Path, final: Path) -> None:
        try:
            move_into_place(partial, final)
        except OSError as exc:
            raise disk_error(final, exc) from None

    @staticmethod
    def _discard(
        partial: Path, state_path: Path, observer: TransferObserver | None = None
    ) -> None:
        for p in (partial, state_path):
            with contextlib.suppress(OSError):
                remove_file(p)
        if observer is not None:
            observer.discard()

    def _bar(self, name: str, size: int | None) -> Any:
        if not self.opts.progress:
            return None
        return progress_bar(size, name, leave=True)


def _repair_paths(partial: Path) -> tuple[Path, Path]:
    """Where a repair keeps its second copy and that copy's transfer state."""
    return (partial.with_name(partial.name + ".repair"),
            partial.with_name(partial.name + ".repair.state.json"))


def content_check(remote: RemoteObject, expected_sha256: str | None) -> ContentCheck:
    """The content hashes a repair must reproduce: every one that proves the bytes. A
    multipart ETag whose part size the server did not state counts only without a sha256
    (then any part size that fits may reproduce it)."""
    kind = etag_kind(remote.etag)
    multipart, sizes = None, ()
    if kind == "multipart" and remote.part_size_source == "server" and remote.part_size:
        multipart, sizes = remote.etag, (remote.part_size,)
    elif kind == "multipart" and not expected_sha256:
        multipart, sizes = remote.etag, remote.part_sizes
    return ContentCheck(
        sha256=expected_sha256,
        md5=remote.etag if kind == "md5" else None,
        multipart=multipart,
        part_sizes=tuple(sizes),
    )


def _hash_file(
    path: Path, part_size: int | None, want_md5: bool
) -> tuple[str, str | None, str | None]:
    """The same digests the follower computes during a download, from a file on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        hashers = _Hashers(fd, size, part_size, want_md5)
        hashers.advance(size)
        hashers.start()
        error = hashers.join()
        if error is not None:
            raise error
        return hashers.digests()
    finally:
        os.close(fd)
