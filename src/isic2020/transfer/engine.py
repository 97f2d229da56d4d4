"""The download engine's public entry: one object from a list of URLs, verified, then landed.

How a file travels (every step is there for a failure we have seen or expect):

1. **Probe** (``probe.py``): size, ETag, Last-Modified, the part size of a multipart ETag. A
   host that serves another size or ETag than the manifest pins, or an encoded body, is failed.
2. **Transfer**: ranged (``ranged.py``: a preallocated partial file in
   ``DATA/.isic2020/partial/``, its state file of written intervals, checkpoints after an
   ``fdatasync`` only, the chunks over ``pool.py``'s connections through ``ranges.py``'s strict
   client), or one plain stream (``single.py``) for a server without a size or without byte
   ranges. A changed object starts over cleanly (at most ``RetryPolicy.object_restarts``
   times); a host given up (``retry.HostFailed``) hands over to the next URL, keeping the
   partial file when it serves the same object.
3. **Hash while downloading** (``hashers.py``), so verification needs no second pass.
4. **Verify, then land** (``verdict.py``): size, the S3 ETag when it is a content hash, the
   manifest's sha256 when known; a content hash that does not match is repaired from a second
   copy (``repair.py``); the caller's content checks (``accept``) run last. Only then is the
   partial file fsynced and renamed to its final path, and its state removed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isic2020.catalog.plausible import encoding_problem
from isic2020.errors import (
    ObjectChanged,
    VerificationError,
    host_line,
    hosts_failed,
)
from isic2020.report import progress_bar
from isic2020.store.fsutil import disk_error, move_into_place, remove_file
from isic2020.store.records import remove_stale_temps
from isic2020.transfer.digests import etag_kind
from isic2020.transfer.hashers import hash_file
from isic2020.transfer.http import make_session
from isic2020.transfer.localfile import is_file_url
from isic2020.transfer.model import (
    Accept,
    DownloadOptions,
    DownloadResult,
    RemoteObject,
)
from isic2020.transfer.observer import TransferObserver
from isic2020.transfer.probe import Prober
from isic2020.transfer.ranged import RangedTransfer
from isic2020.transfer.ranges import RangesIgnored
from isic2020.transfer.repair import RepairFailed, repair
from isic2020.transfer.retry import HostFailed
from isic2020.transfer.single import SingleStream, Streamed, copy_local
from isic2020.transfer.verdict import content_check, etag_check, failed, reason

if TYPE_CHECKING:
    import requests

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Target:
    """One ``download`` call: what is wanted, where it goes, what it must match."""

    name: str
    partial: Path
    state_path: Path
    final: Path
    expected_size: int | None
    expected_etag: str | None
    expected_sha256: str | None
    observer: TransferObserver | None
    accept: Accept | None


@dataclass
class _Got:
    """The digests of the bytes in the partial file, and the ranged transfer that wrote them
    (None for a plain stream, or once a repair replaced its file)."""

    sha: str
    md5: str | None
    mp: str | None
    resumed: int = 0
    transfer: RangedTransfer | None = None


@dataclass
class _Tally:
    """What every attempt at one URL cost: body bytes received and retries, summed."""

    transferred: int = 0
    retries: int = 0


class Downloader:
    """Downloads one file from a list of URLs (hosts or mirrors, in order) into a final path.

    Invariants: nothing lands at a final path unverified; a failed host leaves the partial
    file for the next host (or a later run) unless its bytes were proven wrong or the object
    changed; the probe session is the downloader's own (:meth:`close` ends it), every ranged
    connection has its own.
    """

    def __init__(self, options: DownloadOptions | None = None) -> None:
        self.opts = options or DownloadOptions()
        self._own: requests.Session | None = None

    @property
    def _session(self) -> requests.Session:
        """Made by the first request (a run that asks no server never imports requests)."""
        if self._own is None:
            self._own = make_session(2)
        return self._own

    def close(self) -> None:
        if self._own is not None:
            self._own.close()

    def _log(self, msg: str) -> None:
        if self.opts.log:
            self.opts.log(msg)

    def probe(self, url: str) -> RemoteObject:
        """HEAD the object (with a few quick retries); raise HostFailed when it cannot be had."""
        return Prober(self._session, self.opts.timeouts, self.opts.retry).probe(url)

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
        target = _Target(name, partial, state_path, final, expected_size, expected_etag,
                         expected_sha256, observer, accept)
        failures: list[str] = []
        verify_failures: list[str] = []
        t0 = time.monotonic()
        for url in urls:
            try:
                if is_file_url(url):
                    return self._copy_local(target, url, failures, t0)
                return self._download_from(target, url, failures, t0)
            except HostFailed as exc:
                failures.append(host_line(url, str(exc)))
                more = "; trying the next host" if url != urls[-1] else ""
                self._log(f"{name}: {url} failed: {exc}{more}")
            except VerificationError as exc:
                verify_failures.append(f"{url}: {exc.message}")
                failures.append(host_line(url, exc.message))
                self._log(f"{name}: {exc.message}")
        if verify_failures and len(verify_failures) == len(failures):
            raise VerificationError(
                f"{name}: downloaded bytes failed verification ({'; '.join(verify_failures)})",
                "the source serves different data than expected; check the mirror or manifest",
            )
        raise hosts_failed(f"{name}: every host failed", failures)

    def _download_from(
        self, t: _Target, url: str, failures: list[str], t0: float
    ) -> DownloadResult:
        restarts = 0
        tally = _Tally()
        while True:
            remote = self._preflight(t, url)
            _LOG.debug("%s: from %s (%s bytes, ETag %s, %s)", t.name, url, remote.size,
                       remote.etag, "ranged" if remote.size is not None else "one stream")
            try:
                got = self._fetch(t, remote, tally)
                size = t.partial.stat().st_size
                check = etag_check(remote, size, got.sha, got.md5, got.mp, t.expected_sha256,
                                   t.partial)
                repaired: list[list[int]] = []
                if failed(check) and remote.size in (None, size):
                    check, repaired = self._mend(t, remote, got, check, size, tally)
            except ObjectChanged as exc:
                restarts += 1
                self._discard(t.partial, t.state_path, t.observer)
                if restarts > self.opts.retry.object_restarts:
                    raise HostFailed(f"the object keeps changing ({exc.message})") from None
                self._log(f"{t.name}: {exc.message}; the remote file changed, starting over")
                continue
            self._accept(t, url, check)
            if got.transfer is not None:
                got.transfer.finish()
            self._land(t.partial, t.final)
            for p in (t.state_path, *_repair_paths(t.partial)):  # (a repair's leftovers too)
                with contextlib.suppress(OSError):
                    remove_file(p)
            remove_stale_temps(t.state_path)  # a kill while the state was being rewritten
            return DownloadResult(
                name=t.name, path=str(t.final), url=url, size=size, etag=remote.etag,
                sha256=got.sha, md5=got.md5, etag_check=check,
                bytes_transferred=tally.transferred, seconds=round(time.monotonic() - t0, 3),
                retries=tally.retries, status="resumed" if got.resumed else "downloaded",
                failed_hosts=list(failures), repaired=repaired,
            )

    def _preflight(self, t: _Target, url: str) -> RemoteObject:
        """Probe ``url``; HostFailed when it serves another object than the manifest pins."""
        remote = self.probe(url)
        if t.expected_size is not None and remote.size not in (None, t.expected_size):
            raise HostFailed(f"serves {remote.size} bytes but the manifest says {t.expected_size}")
        if t.expected_etag and remote.etag and remote.etag != t.expected_etag:
            raise HostFailed(f"serves ETag {remote.etag} but the manifest pins {t.expected_etag}")
        encoded = encoding_problem(remote.content_encoding)
        if encoded:
            raise HostFailed(encoded)
        return remote

    def _fetch(self, t: _Target, remote: RemoteObject, tally: _Tally) -> _Got:
        """The bytes into the partial file: ranged when the size is known, else (or when the
        server ignores ranges) one plain stream."""
        bar = self._bar(t.name, remote.size)
        try:
            if remote.size is None:
                return self._streamed(self._stream(remote, t.partial, bar, t.expected_size),
                                      tally)
            transfer = RangedTransfer(self.opts, remote, t.partial, t.state_path, bar,
                                      t.observer, name=t.name)
            try:
                sha, md5, mp = transfer.run()
            except RangesIgnored:
                transfer.close()
                self._discard(t.partial, t.state_path, t.observer)
                self._log(f"{t.name}: {remote.url} ignores byte ranges; using one plain stream")
                streamed = self._stream(remote, t.partial, bar, t.expected_size)
                tally.transferred += transfer.transferred
                tally.retries += transfer.retries
                return self._streamed(streamed, tally)
            tally.transferred += transfer.transferred
            tally.retries += transfer.retries
            return _Got(sha, md5, mp, transfer.resumed_bytes, transfer)
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _streamed(s: Streamed, tally: _Tally) -> _Got:
        tally.transferred += s.transferred
        tally.retries += s.retries
        return _Got(s.sha256, s.md5, s.multipart)

    def _stream(
        self, remote: RemoteObject, partial: Path, bar: Any, expected_size: int | None
    ) -> Streamed:
        return SingleStream(self._session, self.opts, remote, partial, bar, expected_size).run()

    def _accept(self, t: _Target, url: str, check: str) -> None:
        """The last word before landing: the verdict, then the caller's content checks."""
        if failed(check):
            self._discard(t.partial, t.state_path, t.observer)
            raise VerificationError(f"{t.name} from {url}: {reason(check)}")
        if t.accept is not None:
            why = t.accept(t.partial)
            if why:
                self._discard(t.partial, t.state_path, t.observer)
                raise HostFailed(why)

    # -- repair ---------------------------------------------------------------------------
    def _mend(
        self, t: _Target, remote: RemoteObject, got: _Got, check: str, size: int, tally: _Tally
    ) -> tuple[str, list[list[int]]]:
        """A content hash failed: repair the partial file from a second copy (``got`` takes
        the repaired file's digests); the new verdict and the ranges replaced."""
        ranged = got.transfer is not None
        if got.transfer is not None:
            got.transfer.keep()  # an interrupted repair resumes with the whole first copy
            got.transfer = None
        if t.observer is not None:
            t.observer.discard()  # what was unpacked came from damaged bytes
        try:
            got.sha, got.md5, got.mp, n, repaired = self._repair(
                t.name, remote, t.partial, t.expected_size, t.expected_sha256, check, ranged
            )
        except VerificationError:
            self._discard(t.partial, t.state_path, t.observer)
            raise
        tally.transferred += n
        check = etag_check(remote, size, got.sha, got.md5, got.mp, t.expected_sha256, t.partial)
        return check, repaired

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
        """Fetch a second copy and keep the bytes that match (see ``repair``). Returns the
        repaired file's digests, the bytes the second copy cost and the ranges taken from
        it; raises VerificationError when nothing matches."""
        content = content_check(remote, expected_sha256)
        failure = f"{name} from {remote.url}: {reason(why)}"
        if not content.usable:
            raise VerificationError(failure)
        second, second_state = _repair_paths(partial)
        self._log(f"{name}: {reason(why)}; fetching a second copy to find the damaged bytes")
        transferred = 0
        while True:
            try:
                n, resumed = self._second_copy(remote, second, second_state, expected_size,
                                               ranged)
            except ObjectChanged:
                self._discard(second, second_state)
                raise
            # (interrupted or a failed host: the second copy stays, a later run resumes it)
            transferred += n
            try:
                result = repair(partial, second, content)
                break
            except RepairFailed as exc:
                self._discard(second, second_state)
                if not resumed:
                    raise VerificationError(f"{failure}; {exc}") from None
                # Part of that copy was kept by an earlier run: no hash ever proved those
                # bytes (they may carry the same damage as the first copy). One fresh copy.
                self._log(f"{name}: {exc}; fetching a fresh second copy")
            except OSError as exc:
                raise disk_error(exc, second) from None
        self._discard(second, second_state)
        self._log(f"{name}: repaired {len(result.replaced)} damaged range(s) from the second "
                  "copy")
        sha, md5, mp = hash_file(partial, remote.part_size,
                                 want_md5=etag_kind(remote.etag) == "md5")
        return sha, md5, mp, transferred, result.replaced

    def _second_copy(
        self, remote: RemoteObject, path: Path, state: Path, expected_size: int | None,
        ranged: bool = True,
    ) -> tuple[int, int]:
        """Download the object once more into ``path`` (ranged, else as the first copy came:
        one plain stream); the bytes it cost, and the bytes resumed from an earlier run."""
        done = 0
        if ranged and remote.size is not None:
            transfer = RangedTransfer(self.opts, remote, path, state, None, None)
            try:
                transfer.run()
                transfer.finish()
                return transfer.transferred, transfer.resumed_bytes
            except RangesIgnored:
                done = transfer.transferred
            finally:
                transfer.close()
            self._discard(path, state)  # the stream rewrites the file: that state lies now
        return done + self._stream(remote, path, None, expected_size).transferred, 0

    # -- local files ----------------------------------------------------------------------
    def _copy_local(
        self, t: _Target, url: str, failures: list[str], t0: float
    ) -> DownloadResult:
        copied = copy_local(t.name, url, t.partial, t.expected_size, t.expected_sha256,
                            lambda size: self._bar(t.name, size))
        why = t.accept(t.partial) if t.accept is not None else None
        if why:
            with contextlib.suppress(OSError):
                remove_file(t.partial)
            raise HostFailed(why)
        self._land(t.partial, t.final)
        return DownloadResult(
            name=t.name, path=str(t.final), url=url, size=copied.size, etag=None,
            sha256=copied.sha256, md5=None,
            etag_check=("sha256" if t.expected_sha256
                        else "unverifiable: local mirror, no checksum"),
            bytes_transferred=copied.size, seconds=round(time.monotonic() - t0, 3), retries=0,
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
            if is_file_url(url):
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
            sha, md5, mp = hash_file(final, remote.part_size, want_md5=kind == "md5")
            check = etag_check(remote, size, sha, md5, mp, expected_sha256, final)
            if check.startswith(("FAILED", "unverifiable")):
                return None
            return DownloadResult(
                name=name, path=str(final), url=url, size=size, etag=remote.etag, sha256=sha,
                md5=md5, etag_check=check, bytes_transferred=0,
                seconds=round(time.monotonic() - t0, 3), retries=0, status="adopted",
            )
        return None

    # -- small pieces ---------------------------------------------------------------------
    def _land(self, partial: Path, final: Path) -> None:
        try:
            move_into_place(partial, final)
        except OSError as exc:
            raise disk_error(exc, final) from None

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
