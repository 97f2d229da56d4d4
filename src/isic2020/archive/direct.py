"""The whole job for one remote archive: open it at the first host that works, fetch the
chosen members into place, fail over and re-read its directory when it changed.

Invariants: a host that fails (after its retry window) hands over to the next URL (same
object: the directory is keyed by ETag); a changed object drops the cached directory,
re-reads it and goes on with ``check_existing="crc"``, so no file of the old version is
trusted by size alone; disk errors and interruptions end the job at once (another host cannot
help). When every host served a damaged archive the error is a verification error (exit 1),
else a download error (exit 3).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from isic2020.archive.members import (
    Dest,
    FetchMembersResult,
    Log,
    MemberFetchOptions,
    fetch_members,
)
from isic2020.archive.remote import (
    RangesNotServed,
    RemoteZip,
    open_remote,
    save_cached,
)
from isic2020.archive.zipformat import Entry as RemoteMember
from isic2020.errors import (
    DiskError,
    DownloadError,
    Interrupted,
    ObjectChanged,
    UsageError,
    VerificationError,
    host_line,
    hosts_failed,
)
from isic2020.store.fsutil import remove_file
from isic2020.transfer.retry import RetryPolicy

_LOG = logging.getLogger(__name__)


def fetch_remote_members(
    urls: Sequence[str],
    choose: Callable[[RemoteZip], Sequence[RemoteMember]],
    dest: Dest,
    options: MemberFetchOptions | None = None,
    *,
    cache: Path | None = None,
    expected_etag: str | None = None,
    confirm: Callable[[RemoteZip], None] | None = None,
    **keywords: Any,
) -> tuple[RemoteZip, FetchMembersResult]:
    """Open the archive at the first URL that works and fetch ``choose(remote)`` into place.

    ``options`` (:class:`~isic2020.archive.members.MemberFetchOptions`), whose fields are also
    keywords (a keyword replaces that field). A host that fails (after its retry window)
    hands over to the next URL (same object: the directory is keyed by ETag); a changed object
    drops the cached directory, re-reads it and goes on with ``check_existing="crc"`` so no
    file of the old version is trusted by size alone. A ``file://`` URL is read in place by
    offset (never copied whole).

    ``confirm(remote)`` runs once the chosen members are in place and may raise
    :class:`VerificationError` to doubt the directory (it lacks what the metadata lists): the
    directory is then dropped and read again once, like one a member disagreed with, and the
    members are chosen again (those already in place are skipped by size; the report counts
    both passes). Why afterwards: such a check waits for the metadata CSVs, the members need
    not, and every member written was proven by its own CRC-32 either way.
    """
    opts = (options or MemberFetchOptions()).but(**keywords)
    retry = opts.retry or RetryPolicy()
    opts = opts.but(retry=retry)
    log = opts.log
    failures: list[str] = []
    damaged: list[str] = []
    no_ranges: list[str] = []  # hosts that serve no byte ranges
    no_ranges_hint = ""
    restarts = 0
    rereads: dict[str, int] = {}  # url -> directories read again after a damaged member
    check: Literal["size", "crc"] = "size"
    i = 0
    http_urls = list(urls)
    if not http_urls:
        raise UsageError("no URL for this archive", "give a --mirror or fix the manifest")
    earlier: list[FetchMembersResult] = []  # passes whose directory ``confirm`` doubted
    while i < len(http_urls):
        url = http_urls[i]
        res: FetchMembersResult | None = None
        try:
            remote = open_remote(url, cache, timeouts=opts.timeouts, retry=retry,
                                 expected_etag=expected_etag, connections=opts.connections,
                                 save=False)
            chosen = choose(remote)
            _LOG.debug("%s: %d members from %s (directory %s)", remote.name, len(chosen), url,
                       "cached" if remote.from_cache else f"read, {remote.bytes_read} bytes")
            res = fetch_members(remote, chosen, dest, opts, check_existing=check,
                                started=_saver(cache, remote))
            if confirm is not None:
                confirm(remote)
            for prev in earlier:
                res.fold_in(prev)
            return remote, res
        except ObjectChanged as exc:
            restarts += 1
            _drop(cache)
            if expected_etag or restarts > retry.object_restarts:
                failures.append(host_line(url, exc.message))
                i += 1
                continue
            check = "crc"
            if log is not None:
                log(f"{exc.message}; the archive changed, reading its directory again")
        except (DiskError, Interrupted):
            raise
        except VerificationError as exc:
            # A directory has no checksum: one damaged in transit disagrees with a member's
            # local header (name, method) or CRC/size, or lacks images (``confirm``). Never
            # keep it: drop the cache and read the directory once more from this host before
            # blaming the archive.
            if res is not None:
                earlier.append(res)
            _drop(cache)
            if rereads.get(url, 0) < 1:
                rereads[url] = rereads.get(url, 0) + 1
                if log is not None:
                    log(f"{exc.message}; reading the archive's directory again")
                continue
            _failed(exc, url, failures, damaged, log, i + 1 < len(http_urls))
            i += 1
        except DownloadError as exc:
            if isinstance(exc, RangesNotServed):
                no_ranges.append(exc.message)
                no_ranges_hint = exc.hint or ""
            _failed(exc, url, failures, damaged, log, i + 1 < len(http_urls))
            i += 1
    raise _all_failed(failures, damaged, no_ranges, no_ranges_hint,
                      http_urls[0].rsplit("/", 1)[-1].split("?")[0])


def _saver(cache: Path | None, remote: RemoteZip) -> Callable[[], None] | None:
    """Saving a directory just read, for :func:`fetch_members` to run once the members
    download: encoding it takes as long as the plan, and its first byte need not wait (a run
    that stops before then reads the directory again; one the rules refuse saves nothing)."""
    if cache is None or remote.from_cache or remote.cache_key is None:
        return None
    return functools.partial(save_cached, cache, remote)


def _drop(cache: Path | None) -> None:
    """Remove the cached directory (a changed object, or one that cannot be trusted)."""
    if cache is not None:
        with contextlib.suppress(OSError):
            remove_file(cache)


def _failed(exc: DownloadError | VerificationError, url: str, failures: list[str],
            damaged: list[str], log: Log | None, more: bool) -> None:
    """Record a host's failure (a damaged archive also in ``damaged``) and say so."""
    failures.append(host_line(url, exc.message))
    if isinstance(exc, VerificationError):
        damaged.append(host_line(url, exc.message))
    if log is not None and more:
        log(f"{exc.message}; trying the next host")


def _all_failed(failures: list[str], damaged: list[str], no_ranges: list[str],
                no_ranges_hint: str, name: str) -> VerificationError | DownloadError:
    """Every host failed: a verification error when each served a damaged archive, a
    :class:`RangesNotServed` when none serves byte ranges."""
    if no_ranges and len(no_ranges) == len(failures):
        return RangesNotServed(f"{name}: every host failed: {'; '.join(no_ranges)}",
                               no_ranges_hint)
    if damaged and len(damaged) == len(failures):
        return VerificationError(
            "; ".join(damaged),
            "the servers' archive is damaged or not the official one; try another --mirror",
        )
    return hosts_failed(f"{name}: every host failed", failures)
