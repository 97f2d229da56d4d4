"""What a download is asked to do, what a probe finds, and what a download reports.

Records only: no I/O here. ``DownloadResult``'s fields are ``fetch --json``'s per-file keys,
so they are part of the public interface and never renamed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.transfer.http import Timeouts
from isic2020.transfer.retry import RetryPolicy

MiB = 1 << 20
# 16: on S3-like servers that cap each stream, time falls linearly up to 16 connections
# (as with aria2c's -x16; measured in benchmarks/RESULTS.md, row 1).
DEFAULT_CONNECTIONS = 16
#: The most connections an adaptive download runs (``$ISIC2020_MAX_CONNECTIONS``): far below
#: what S3 allows one prefix (see README, "Connections").
MAX_CONNECTIONS = 64
DEFAULT_CHUNK = 8 * MiB
#: Bytes per read of a plain stream and per hashing step.
BLOCK = 1 * MiB
#: Bytes per socket read of a ranged body: each connection holds about twice this
#: (http.client's buffer and the block), so 16 connections at 1 MiB cost ~30 MB more.
READ_BLOCK = 256 * 1024
#: Bytes a sequential writer lets pile up before it asks the kernel to start writing them
#: to disk (``store.libc.start_writeback``): the final fsync then waits for this little.
WRITEBACK_STEP = 8 * MiB

Log = Callable[[str], None]
#: A last check of verified bytes before they land: a reason to refuse them, or None.
Accept = Callable[[Path], "str | None"]


@dataclass
class DownloadOptions:
    """How to download: connections (the pool's threads and the throttle's ceiling; the
    start when ``max_connections`` is above it, and the pool adds more while the aggregate
    rate rises: see ``adaptive``), bytes per ranged request (a base that ``plan_chunk``
    adjusts), timeouts, retry policy."""

    connections: int = DEFAULT_CONNECTIONS
    #: Up to this many connections when the rate keeps rising (None: exactly ``connections``).
    max_connections: int | None = None
    chunk_size: int = DEFAULT_CHUNK
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress: bool = False
    log: Log | None = None


@dataclass
class RemoteObject:
    """One object as a probe found it. ``size`` None: the server states none (a plain stream
    then); ``etag`` is normalized (quotes stripped), ``validator`` the header as sent."""

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    part_size: int | None = None
    part_size_source: str | None = None  # "server" or "guess"
    #: Multipart ETag, part size not stated: the sizes that fit, tried in order (``digests``).
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
