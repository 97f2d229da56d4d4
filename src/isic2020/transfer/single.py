"""One plain stream, for servers without byte ranges (or without a size), and file:// copies.

A plain GET cannot resume: a failed attempt restarts from zero. Progress is therefore a byte
beyond the best attempt so far (at the lowest speed or faster), not a byte received: a server
that drops every connection at the same point would otherwise restart us forever, yet each
attempt "receives". The host is given up after the retry window without such a byte, plus the
time the best attempt took to get that far (a restart of a big file must be allowed to catch
up). The digests are computed from the blocks as they are written (no follower: one pass).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from isic2020.catalog.plausible import encoding_problem
from isic2020.errors import ObjectChanged, VerificationError
from isic2020.store.fsutil import disk_error, open_nofollow, remove_file
from isic2020.store.libc import start_writeback
from isic2020.transfer.body import BodyReader
from isic2020.transfer.digests import MultipartHasher, etag_kind, normalize_etag
from isic2020.transfer.http import header_int
from isic2020.transfer.localfile import file_path
from isic2020.transfer.model import BLOCK, WRITEBACK_STEP, DownloadOptions, RemoteObject
from isic2020.transfer.retry import (
    HostFailed,
    Retryable,
    describe,
    network_errors,
    redirect_errors,
    retry_after,
)
from isic2020.transfer.speed import SpeedGuard, TooSlow, read_into

if TYPE_CHECKING:
    import requests

TRUNCATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # partial files, opened with open_nofollow


class Streamed(NamedTuple):
    """A finished plain stream: its digests, the bytes it cost, the retries it took."""

    sha256: str
    md5: str | None
    multipart: str | None
    transferred: int
    retries: int


class _Writeback:
    """Starts the disk writing of a file written from its start, every ``WRITEBACK_STEP``
    bytes (see ``store.libc.start_writeback``: the closing fsync then waits for little)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.queued = 0

    def wrote(self, end: int) -> None:
        if end - self.queued >= WRITEBACK_STEP:
            start_writeback(self.fd, self.queued, end - self.queued)
            self.queued = end


class _Digests:
    """The hashes one attempt feeds: SHA-256 always, the MD5s the ETag can check."""

    def __init__(self, remote: RemoteObject) -> None:
        self.kind = etag_kind(remote.etag)
        self.sha, self.md5 = hashlib.sha256(), hashlib.md5()
        self.parts = None
        if self.kind == "multipart" and remote.part_size:
            self.parts = MultipartHasher(remote.part_size)

    def update(self, block: bytes) -> None:
        self.sha.update(block)
        if self.kind == "md5":
            self.md5.update(block)
        if self.parts is not None:
            self.parts.update(block)


class SingleStream:
    """One plain GET of ``remote`` into ``partial``, restarted from zero on failure.

    Invariants: ``best`` is the most bytes an attempt wrote at a healthy rate, reached
    ``best_took`` seconds into that attempt, last raised at ``last_progress``; ``transferred``
    counts every byte received over all attempts. A result means the whole body is written,
    fsynced and of the length the server (and the manifest) stated.
    """

    def __init__(
        self,
        session: requests.Session,
        opts: DownloadOptions,
        remote: RemoteObject,
        partial: Path,
        bar: Any,
        expected_size: int | None,
    ) -> None:
        self.session = session
        self.opts = opts
        self.remote = remote
        self.partial = partial
        self.bar = bar
        self.expected_size = expected_size
        self.transferred = self.retries = 0
        self.best = 0
        self.best_took = 0.0
        self.last_progress = time.monotonic()

    def run(self) -> Streamed:
        attempt = 0
        while True:
            try:
                return self._attempt()
            except redirect_errors() as exc:
                raise HostFailed(describe(exc)) from None
            except (Retryable, TooSlow, *network_errors()) as exc:
                self.retries += 1
                why = str(exc) if isinstance(exc, Retryable | TooSlow) else describe(exc)
                self._give_up_after(why)
                ra = exc.retry_after if isinstance(exc, Retryable) else None
                time.sleep(self.opts.retry.delay(attempt, ra))
                attempt += 1

    def _give_up_after(self, why: str) -> None:
        window = self.opts.retry.window
        if time.monotonic() - self.last_progress <= window + self.best_took:
            return
        if not self.best:
            raise HostFailed(f"no progress (last error: {why})") from None
        of = f" of {self.remote.size}" if self.remote.size is not None else ""
        raise HostFailed(
            "the server neither resumes nor completes a transfer (no byte ranges, "
            f"and no attempt got past byte {self.best}{of} for {window:g} s; "
            f"last error: {why})"
        ) from None

    def _attempt(self) -> Streamed:
        remote = self.remote
        digests = _Digests(remote)
        with self.session.get(
            remote.url, stream=True, timeout=self.opts.timeouts.as_tuple()
        ) as resp:
            self._check(resp)
            length = header_int(resp.headers.get("Content-Length"))
            written = self._write(resp, length, digests)
        if length not in (None, written):
            raise Retryable("connection closed before the body was complete")
        if self.expected_size is not None and written != self.expected_size:
            raise HostFailed(f"sent {written} bytes but the manifest says {self.expected_size}")
        if remote.size is None:
            remote.size = written
        md5_hex = digests.md5.hexdigest() if digests.kind == "md5" else None
        mp = digests.parts.hexdigest() if digests.parts is not None else None
        return Streamed(digests.sha.hexdigest(), md5_hex, mp, self.transferred, self.retries)

    def _check(self, resp: requests.Response) -> None:
        if resp.status_code in (429, 503) or resp.status_code >= 500:
            raise Retryable(f"HTTP {resp.status_code}", retry_after(resp))
        if resp.status_code != 200:
            raise HostFailed(f"HTTP {resp.status_code}")
        encoded = encoding_problem(resp.headers.get("Content-Encoding"))
        if encoded:
            raise HostFailed(encoded)
        etag = normalize_etag(resp.headers.get("ETag"))
        if self.remote.etag and etag and etag != self.remote.etag:
            raise ObjectChanged(f"ETag changed from {self.remote.etag} to {etag}")

    def _write(self, resp: requests.Response, length: int | None, digests: _Digests) -> int:
        """The body into the (truncated) partial file, fsynced; the bytes written."""
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = os.fdopen(open_nofollow(self.partial, TRUNCATE), "wb")  # noqa: SIM115
        except OSError as exc:
            raise disk_error(exc, self.partial) from None
        timeouts = self.opts.timeouts
        guard = SpeedGuard(timeouts.lowest_speed, timeouts.speed_time,
                           rate_limit=timeouts.rate_limit)
        began = guard.start
        written = 0
        with fh:
            if self.bar is not None:
                self.bar.reset(total=length)
            writeback = _Writeback(fh.fileno())
            body = BodyReader(resp.raw)
            buffer = memoryview(bytearray(BLOCK))
            while n := read_into(body, buffer, guard):
                block = buffer[:n]
                try:
                    fh.write(block)
                except OSError as exc:
                    raise disk_error(exc, self.partial) from None
                digests.update(block)
                written += len(block)
                writeback.wrote(written)
                self.transferred += len(block)
                if written > self.best and guard.healthy():
                    self.best = written
                    self.last_progress = time.monotonic()
                    self.best_took = self.last_progress - began
                if self.bar is not None:
                    self.bar.update(len(block))
                guard.check()
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise disk_error(exc, self.partial) from None
        return written


class LocalCopy(NamedTuple):
    """A ``file://`` mirror's file copied into the partial file, and its sha256."""

    size: int
    sha256: str


def copy_local(
    name: str,
    url: str,
    partial: Path,
    expected_size: int | None,
    expected_sha256: str | None,
    make_bar: Callable[[int], Any],
) -> LocalCopy:
    """Copy a ``file://`` mirror's file into ``partial``, hashing it; HostFailed when the
    source cannot be read, VerificationError when its sha256 is not the manifest's (nothing
    is left at ``partial`` then)."""
    src = file_path(url)
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise HostFailed(exc.strerror or str(exc)) from None
    if expected_size is not None and size != expected_size:
        raise HostFailed(f"has {size} bytes but the manifest says {expected_size}")
    sha = hashlib.sha256()
    partial.parent.mkdir(parents=True, exist_ok=True)
    bar = make_bar(size)
    try:
        with open(src, "rb") as fin, os.fdopen(open_nofollow(partial, TRUNCATE), "wb") as fout:
            writeback, copied = _Writeback(fout.fileno()), 0
            while block := fin.read(4 * BLOCK):
                fout.write(block)
                sha.update(block)
                copied += len(block)
                writeback.wrote(copied)
                if bar is not None:
                    bar.update(len(block))
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        if exc.filename == str(src) or not partial.exists():
            raise HostFailed(exc.strerror or str(exc)) from None
        raise disk_error(exc, partial) from None
    finally:
        if bar is not None:
            bar.close()
    digest = sha.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        with contextlib.suppress(OSError):
            remove_file(partial)
        raise VerificationError(f"{name} from {url}: sha256 differs from the manifest's")
    return LocalCopy(size, digest)
