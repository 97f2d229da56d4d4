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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from isic2020.archive.members import (
    DEFAULT_MAX_GAP,
    DEFAULT_MAX_SPAN,
    FetchMembersResult,
    Log,
    fetch_members,
)
from isic2020.archive.remote import DEFAULT_CONNECTIONS, RemoteZip, open_remote
from isic2020.archive.zipformat import Entry as RemoteMember
from isic2020.errors import (
    DiskError,
    DownloadError,
    Interrupted,
    ObjectChanged,
    UsageError,
    VerificationError,
)
from isic2020.store.fsutil import remove_file
from isic2020.transfer.http import Timeouts
from isic2020.transfer.retry import RetryPolicy


def fetch_remote_members(
    urls: Sequence[str],
    choose: Callable[[RemoteZip], Sequence[RemoteMember]],
    dest: Callable[[RemoteMember], Path],
    *,
    cache: Path | None = None,
    expected_etag: str | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    max_connections: int | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    log: Log | None = None,
    progress: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
) -> tuple[RemoteZip, FetchMembersResult]:
    """Open the archive at the first URL that works and fetch ``choose(remote)`` into place.

    A host that fails (after its retry window) hands over to the next URL (same object:
    the directory is keyed by ETag); a changed object drops the cached directory, re-reads it
    and goes on with ``check_existing="crc"`` so no file of the old version is trusted by size
    alone. ``file://`` URLs are not served by ranges and are skipped.
    """
    retry = retry or RetryPolicy()
    failures: list[str] = []
    damaged: list[str] = []
    restarts = 0
    rereads: dict[str, int] = {}  # url -> directories read again after a damaged member
    check: Literal["size", "crc"] = "size"
    i = 0
    http_urls = [u for u in urls if not u.startswith("file://")]
    if not http_urls:
        raise UsageError(
            "direct and partial fetch need an http(s) URL (file:// mirrors have no byte ranges)",
            "fetch the whole archive instead",
        )
    while i < len(http_urls):
        url = http_urls[i]
        try:
            remote = open_remote(url, cache, timeouts=timeouts, retry=retry,
                                 expected_etag=expected_etag, connections=connections)
            chosen = choose(remote)
            res = fetch_members(remote, chosen, dest, connections=connections,
                                max_connections=max_connections,
                                timeouts=timeouts, retry=retry, log=log, progress=progress,
                                check_existing=check, max_gap=max_gap, max_span=max_span)
            return remote, res
        except ObjectChanged as exc:
            restarts += 1
            _drop(cache)
            if expected_etag or restarts > retry.object_restarts:
                failures.append(f"{url}: {exc.message}")
                i += 1
                continue
            check = "crc"
            if log is not None:
                log(f"{exc.message}; the archive changed, reading its directory again")
        except (DiskError, Interrupted):
            raise
        except VerificationError as exc:
            # A directory has no checksum: one damaged in transit disagrees with a member's
            # local header (name, method) or CRC/size. Never keep it: drop the cache and read
            # the directory once more from this host before blaming the archive.
            _drop(cache)
            if rereads.get(url, 0) < 1:
                rereads[url] = rereads.get(url, 0) + 1
                if log is not None:
                    log(f"{exc.message}; reading the archive's directory again")
                continue
            _failed(exc, url, failures, damaged, log, i + 1 < len(http_urls))
            i += 1
        except DownloadError as exc:
            _failed(exc, url, failures, damaged, log, i + 1 < len(http_urls))
            i += 1
    raise _all_failed(failures, damaged)


def _drop(cache: Path | None) -> None:
    """Remove the cached directory (a changed object, or one that cannot be trusted)."""
    if cache is not None:
        with contextlib.suppress(OSError):
            remove_file(cache)


def _failed(exc: DownloadError | VerificationError, url: str, failures: list[str],
            damaged: list[str], log: Log | None, more: bool) -> None:
    """Record a host's failure (a damaged archive also in ``damaged``) and say so."""
    failures.append(f"{url}: {exc.message}")
    if isinstance(exc, VerificationError):
        damaged.append(f"{url}: {exc.message}")
    if log is not None and more:
        log(f"{exc.message}; trying the next host")


def _all_failed(failures: list[str], damaged: list[str]) -> VerificationError | DownloadError:
    """Every host failed: a verification error when each served a damaged archive."""
    if damaged and len(damaged) == len(failures):
        return VerificationError(
            "; ".join(damaged),
            "the servers' archive is damaged or not the official one; try another --mirror",
        )
    return DownloadError(
        f"every host failed ({'; '.join(failures)})",
        "check the network or the mirror, then run the same command again to resume",
    )
