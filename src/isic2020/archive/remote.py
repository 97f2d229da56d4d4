"""A zip on an HTTP server, read without downloading it: its central directory, then members.

Why: a zip's central directory (CD) sits at its end and gives every member's name, sizes, CRC-32
and byte offset; S3 serves byte ranges. So ``isic2020`` can list a 23 GB archive for the cost of
its ~3 MB directory (``inspect``), fetch only the images a user chose (subsets), or unpack a
whole split straight from the server into the layout without ever storing the zip (``--direct``:
disk 1x instead of 2x, no separate extraction pass).

How, and the failure each step is there for:

* **One object, pinned.** A ``HEAD`` gives size and ETag; every ranged GET after it carries
  ``If-Match`` (``If-Unmodified-Since`` without an ETag) and must answer 206 with exactly the
  ``Content-Range`` asked for. A changed object (412, new ETag, new size) raises
  :class:`~isic2020.errors.ObjectChanged`: offsets from one version must never be applied to
  another. Breaks, 5xx, 429/503 (``Retry-After``) are retried from the byte where they broke,
  with the engine's backoff and its bounded no-progress window (``RetryPolicy``), exactly as
  ``download.py`` does for whole files.
* **The end records.** One ranged GET of the tail (64 KiB + the fixed records: room for the
  longest zip comment) finds the end-of-central-directory record; when a field is saturated
  (0xFFFF / 0xFFFFFFFF) the ZIP64 locator and ZIP64 end record give the real values. The
  claim is checked (``zipend``: at most ``MAX_CD_BYTES``, entries that fit, a directory that
  ends where the end records begin) before any buffer is sized from it. The rest
  of the CD (bytes already in the tail are not asked for twice) is read in one piece per
  connection (at least ``CD_MIN_PIECE``), all at once, each on its own connection: a server
  that caps each stream (S3; nginx's ``limit_rate`` in benchmark row 8) served the 2.3 MB
  directory in ~1.2 s as one request, ~0.1 s as nine. The pieces land in one buffer that is
  then parsed, ZIP64 extra fields (0x0001) included. Counts and lengths must add up exactly
  or the archive is refused: a half-parsed directory would silently lose images.
* **Cached, keyed by ETag and size.** ``DATA/.isic2020/remote/<archive>.json.gz``; a different
  ETag (or size) is a different object and invalidates it, so a re-published archive is re-read.
* **Members by byte span.** A member's span runs from its local header to the next member's
  local header (or the CD): local header, name, extra, data and data descriptor. Spans of chosen
  members are coalesced when the bytes between them are few (``max_gap``) *and* the waste stays
  under ``max_waste`` of the useful bytes, so a scattered subset never costs more than ~5% over
  its own compressed bytes, while runs of neighbours go in one request (``max_span`` caps a
  request so a retry or a kill loses little).
* **Streamed, checked, then renamed.** Each span is consumed as it arrives: the *local* header
  is parsed (its name and extra lengths can differ from the CD's), data is inflated (raw
  deflate) or copied (stored), never more than the declared size, CRC-32 and size are checked
  against the CD, and only then does the file get its final name (written under a hidden
  temporary name next to it, then renamed). A damaged member raises
  :class:`~isic2020.errors.VerificationError` naming it.
* **Unpacking hidden behind the download** (``--direct``: 33,126 members of ~20 KB in 20 s).
  The plan (final paths, what is already there, spans) is made while the first spans download.
  The downloading threads only download: they hand each block to one of ``UNPACKERS`` threads
  (see :class:`_Unpackers` for why and the numbers), through small bounded queues, so memory
  stays flat (blocks in flight and queued, whatever the span or member size). A member wholly
  inside a block is written with one inflate call, one CRC-32, ``os.open``, one write loop and
  a rename (no file object, no ``Path``: per member, Python time holds the GIL); one cut by a
  block's end is streamed ``OUT_BLOCK`` at a time. The filesystem is flushed in the background
  while writing (``extract``'s ``Flusher``), so the flush that must precede any record of
  completion is ~0.02 s instead of ~1 s of ``os.sync``. Benchmark row 8 (654 MB, 16
  connections at 2 MiB/s): 25.5 s -> 23.2 s of wall time against 21.0 s for the download
  alone, most of what remains being the final ``verify`` of ``fetch``.
* **Resumable.** A member already at its final path with the CD's size is skipped, the same rule
  as ``extract``: only verified files ever reach a final path, so a killed run loses at most the
  members in flight. The trade-off: a file of the right size damaged *afterwards* is not
  noticed here (``verify`` notices it); ``check_existing="crc"`` re-reads every present file
  to compare its CRC-32 (local disk speed) and is what to use after the object changed.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import struct
import threading
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from queue import Full, Queue
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote, urlsplit

import requests

from isic2020.archive.local import (
    IMAGE_RE,
    MAX_MEMBER_BYTES,
    MAX_RATIO,
    O_CLOEXEC,
    RATIO_FLOOR,
    Flusher,
    disk_error,
    file_mode,
    present_files,
    unsafe_reason,
    write_all,
)
from isic2020.archive.zipformat import TAIL_BYTES, BadEndRecords, end_records
from isic2020.catalog.manifest import EXTENSIONS
from isic2020.errors import (
    DiskError,
    DownloadError,
    Interrupted,
    ObjectChanged,
    UsageError,
    VerificationError,
)
from isic2020.report import human_size, progress_bar
from isic2020.store.fsutil import atomic_write, open_nofollow, remove_file, temp_name
from isic2020.transfer.digests import normalize_etag
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts, make_session
from isic2020.transfer.model import READ_BLOCK, DownloadOptions
from isic2020.transfer.ranges import RangeClient
from isic2020.transfer.retry import HostFailed, RetryPolicy
from isic2020.transfer.throttle import Throttle

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 1 * MiB
#: The directory is read in pieces of at least this much over parallel connections.
CD_MIN_PIECE = 256 * KiB
DEFAULT_MAX_GAP = 64 * KiB
DEFAULT_MAX_SPAN = 8 * MiB
DEFAULT_MAX_WASTE = 0.05
DEFAULT_CONNECTIONS = 8
#: Inflate output per call for a member streamed across blocks (memory per connection).
OUT_BLOCK = 256 * KiB
#: Threads that unpack what the downloading threads fetch (see ``_Unpackers``), and the
#: blocks each may have waiting.
UNPACKERS = 2
UNPACK_QUEUE = 8
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC
CACHE_VERSION = 1
CACHE_BATCH = 1024

_EOCD = struct.Struct("<4s4H2LH")
_CDH = struct.Struct("<4s4B4HL2L5H2L")
_CDH_SIG = b"PK\x01\x02"
_LFH = struct.Struct("<4s2B4HL2L2H")
_LFH_SIG = b"PK\x03\x04"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Data


class _EntryView(NamedTuple):
    """What ``extract.unsafe_reason`` reads of a ``ZipInfo``."""

    filename: str
    external_attr: int
    create_system: int


@dataclass(slots=True)
class RemoteMember:
    """One central-directory entry: what is needed to fetch, place and check the member.

    Slotted: the real training zip has 33,126 of them, alive for the whole fetch (a third of
    the memory a ``__dict__`` per entry costs)."""

    name: str
    compressed_size: int
    file_size: int
    crc: int
    header_offset: int
    method: int
    flags: int
    external_attr: int = 0
    create_system: int = 0

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def zipinfo(self) -> zipfile.ZipInfo:
        """A ``ZipInfo`` carrying the fields ``extract.unsafe_reason`` looks at."""
        info = zipfile.ZipInfo(self.name)
        info.external_attr = self.external_attr
        info.create_system = self.create_system
        info.file_size = self.file_size
        info.compress_size = self.compressed_size
        info.CRC = self.crc
        return info

    def unsafe_reason(self) -> str | None:
        """Why this entry must never be written anywhere (the rules of ``extract``), or None.

        Given the three fields ``extract.unsafe_reason`` reads, as ``ZipInfo`` holds them (the
        name cut at a NUL), without building a ``ZipInfo`` per entry."""
        view = _EntryView(self.name.split("\x00", 1)[0], self.external_attr, self.create_system)
        return unsafe_reason(view)  # type: ignore[arg-type]

    def image_file_name(self, ext: str | None = None) -> str | None:
        """``ISIC_xxxxxxx.jpg`` for an image entry (wherever it stands), else None."""
        if self.is_dir:
            return None
        base = self.name.replace("\\", "/").rsplit("/", 1)[-1]
        m = IMAGE_RE.match(base)
        if not m or (ext is not None and m.group(2).lower() != ext):
            return None
        return f"ISIC_{m.group(1)}.{m.group(2).lower()}"


@dataclass
class RemoteZip:
    """An archive's central directory as read from the server (or the cache)."""

    url: str
    size: int
    etag: str | None
    members: list[RemoteMember]
    cd_offset: int
    cd_size: int
    bytes_read: int = 0  # body bytes this read cost (0 when it came from the cache)
    last_modified: str | None = None
    from_cache: bool = False
    retries: int = 0
    # ``members`` once every entry passed the unsafe check (it is ~7 us an entry: not twice)
    checked: list[RemoteMember] | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return unquote(urlsplit(self.url).path).rsplit("/", 1)[-1] or self.url

    @property
    def cache_key(self) -> str | None:
        return cache_key(self.etag, self.size, self.last_modified)

    def member_end(self) -> dict[int, int]:
        """header_offset -> where the member's bytes end (next local header, or the CD)."""
        offsets = sorted({m.header_offset for m in self.members})
        ends = {}
        for a, b in zip(offsets, [*offsets[1:], self.cd_offset]):
            ends[a] = b
        return ends


@dataclass(frozen=True)
class Span:
    """One ranged GET: ``[start, end)`` of the archive and the chosen members inside it."""

    start: int
    end: int
    members: tuple[RemoteMember, ...]

    @property
    def length(self) -> int:
        return self.end - self.start


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(etag: str | None, size: int, last_modified: str | None) -> str | None:
    """What identifies one version of the object; None when nothing does (then no cache)."""
    if etag:
        return f"etag:{etag}:size:{size}"
    if last_modified:
        return f"last-modified:{last_modified}:size:{size}"
    return None


def _damaged(archive: str, what: str) -> VerificationError:
    return VerificationError(
        f"{archive}: {what}",
        "the server's archive is damaged or not the official one; try another --mirror",
    )


# --------------------------------------------------------------------------------------------
# Strict ranged GETs with retries


def _host_failed(url: str, exc: HostFailed) -> DownloadError:
    return DownloadError(
        f"{url}: {exc}",
        "check the network or try another --mirror, then run the same command again",
    )


# --------------------------------------------------------------------------------------------
# The central directory


def probe(
    url: str, *, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None
) -> tuple[int, str | None, str | None]:
    """``(size, etag, last_modified)`` from a HEAD, retried like the engine's probe."""
    d = Downloader(DownloadOptions(timeouts=timeouts or Timeouts(), retry=retry or RetryPolicy()))
    try:
        remote = d.probe(url)
    except HostFailed as exc:
        raise _host_failed(url, exc) from None
    finally:
        d.close()
    if remote.size is None:
        raise DownloadError(
            f"{url}: the server does not say how large the archive is",
            "direct and partial fetch need a server with sizes and byte ranges; "
            "fetch the whole archive instead",
        )
    return remote.size, remote.etag, remote.last_modified


def read_central_directory(
    url: str,
    *,
    session: requests.Session | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    expected_etag: str | None = None,
    connections: int = DEFAULT_CONNECTIONS,
) -> RemoteZip:
    """Read and parse the remote zip's central directory with a few strict ranged GETs.

    The directory is read in pieces over up to ``connections`` connections at once (see
    :func:`_read_cd`). Raises ObjectChanged when the object is not (or stops being)
    ``expected_etag``, VerificationError when the end records or the directory are malformed,
    DownloadError when the host cannot serve it (after retries).
    """
    timeouts = timeouts or Timeouts()
    retry = retry or RetryPolicy()
    size, etag, last_modified = probe(url, timeouts=timeouts, retry=retry)
    expected = normalize_etag(expected_etag)
    if expected and etag != expected:
        raise ObjectChanged(f"{url}: ETag is {etag}, expected {expected}")
    return _read_directory(url, size, etag, last_modified, session=session, timeouts=timeouts,
                           retry=retry, connections=connections)


def _read_directory(
    url: str,
    size: int,
    etag: str | None,
    last_modified: str | None,
    *,
    session: requests.Session | None,
    timeouts: Timeouts,
    retry: RetryPolicy,
    connections: int,
) -> RemoteZip:
    """The directory of the object the caller's probe pinned (size, ETag, Last-Modified)."""
    own = session is None
    sess = session or make_session(2)
    client = RangeClient(url, size, etag, last_modified, timeouts=timeouts, retry=retry)
    try:
        remote = _read_cd(client, sess, url, size, connections)
    except HostFailed as exc:
        raise _host_failed(url, exc) from None
    finally:
        if own:
            sess.close()
    remote.etag, remote.last_modified = etag, last_modified
    remote.bytes_read, remote.retries = client.transferred, client.retries
    return remote


def _read_cd(
    client: RangeClient,
    session: requests.Session,
    url: str,
    size: int,
    connections: int = DEFAULT_CONNECTIONS,
) -> RemoteZip:
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
    if size < _EOCD.size:
        raise _damaged(name, f"{size} bytes is too small to be a zip")
    tail_start = max(0, size - TAIL_BYTES)
    tail = client.read(session, tail_start, size)
    cd_offset, cd_size, count = read_end_records(name, tail, tail_start, size, client, session)
    cd = bytearray(cd_size)  # at most zipend.MAX_CD_BYTES
    cd_end = cd_offset + cd_size
    head_end = min(cd_end, tail_start)  # the part the tail does not hold
    if cd_offset < head_end:
        pieces = _cd_pieces(cd_offset, head_end, connections)
        _read_pieces(client, session, pieces, memoryview(cd), cd_offset)
    if head_end < cd_end:
        cd[max(cd_offset, head_end) - cd_offset :] = tail[
            max(cd_offset, head_end) - tail_start : cd_end - tail_start
        ]
    members = parse_central_directory(cd, count, name)
    del cd
    for m in members:
        if m.header_offset + _LFH.size + m.compressed_size > cd_offset:
            raise _damaged(name, f"entry {m.name!r} points past the central directory")
    return RemoteZip(url, size, None, members, cd_offset, cd_size)


def _cd_pieces(start: int, end: int, connections: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into one piece per connection, none under ``CD_MIN_PIECE`` (a
    request costs a round trip; a per-stream cap makes one long request the slow way)."""
    n = end - start
    piece = max(CD_MIN_PIECE, -(-n // max(1, connections)))
    return [(a, min(a + piece, end)) for a in range(start, end, piece)]


def _read_pieces(
    client: RangeClient,
    session: requests.Session,
    pieces: list[tuple[int, int]],
    out: memoryview,
    base: int,
) -> None:
    """Read every piece into ``out[a - base : b - base]``: the first in this thread on
    ``session``, the others in threads with their own sessions. The first error stops them all
    and is raised here (a damaged directory or a changed object is the same error however it
    was read)."""
    errors: list[BaseException] = []

    def read(a: int, b: int, sess: requests.Session) -> None:
        pos = a - base

        def sink(block: bytes) -> None:
            nonlocal pos
            out[pos : pos + len(block)] = block
            pos += len(block)

        client.stream(sess, a, b, sink)

    def worker(a: int, b: int) -> None:
        sess = make_session(1)
        try:
            read(a, b, sess)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            errors.append(exc)
            client.abort.set()
        finally:
            sess.close()

    threads = [
        threading.Thread(target=worker, args=piece, name=f"isic2020-cd-{k}", daemon=True)
        for k, piece in enumerate(pieces[1:], 1)
    ]
    try:
        for t in threads:
            t.start()
        try:
            read(*pieces[0], session)
        except BaseException as exc:
            errors.insert(0, exc)
            client.abort.set()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.1)
    except BaseException:  # Ctrl-C while waiting: stop the others before it propagates
        client.abort.set()
        for t in threads:
            t.join(timeout=5)
        raise
    real = [e for e in errors if not isinstance(e, Interrupted)]
    if real or errors:
        raise (real or errors)[0]


def read_end_records(
    name: str,
    tail: bytes,
    tail_start: int,
    size: int,
    client: RangeClient,
    session: requests.Session,
) -> tuple[int, int, int]:
    """``(cd_offset, cd_size, entries)``, checked by :func:`zipend.end_records` (bounded size,
    entries that fit, a directory that ends where the end records begin)."""
    try:
        d = end_records(tail, tail_start, size, lambda a, b: client.read(session, a, b))
    except BadEndRecords as exc:
        raise _damaged(name, str(exc)) from None
    return d.offset, d.size, d.entries


def parse_central_directory(
    cd: bytes | bytearray, count: int, archive: str = "archive"
) -> list[RemoteMember]:
    """Every entry of a central directory (``count`` of them, filling ``cd`` exactly)."""
    members: list[RemoteMember] = []
    append = members.append
    unpack = _CDH.unpack_from
    pos = 0
    n = len(cd)
    while pos < n and len(members) < count:
        if pos + _CDH.size > n:
            raise _damaged(archive, f"central directory entry {len(members)} is truncated")
        (
            sig, _create_version, create_system, _extract_version, _reserved, flags, method,
            _t, _d, crc, csize, usize, name_len, extra_len, comment_len, disk, _internal,
            external, offset,
        ) = unpack(cd, pos)
        if sig != _CDH_SIG:
            raise _damaged(archive, f"bad central directory signature at entry {len(members)}")
        p = pos + _CDH.size
        pos = p + name_len + extra_len + comment_len
        if pos > n:
            raise _damaged(archive, f"central directory entry {len(members)} is truncated")
        name = _decode_name(cd[p : p + name_len], flags)
        if _U32 in (usize, csize, offset) or disk == _U16:
            extra = cd[p + name_len : p + name_len + extra_len]
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset, disk, archive, name)
        append(RemoteMember(name, csize, usize, crc, offset, method, flags, external,
                            create_system))
    if len(members) != count or pos != n:
        raise _damaged(
            archive,
            f"the central directory holds {len(members)} entries in {pos} bytes, the end record "
            f"says {count} entries in {n} bytes",
        )
    return members


def _decode_name(raw: bytes | bytearray, flags: int) -> str:
    """UTF-8 when the entry says so, else cp437 (of which ASCII, the usual case, is a part:
    decoded by the fast ASCII codec)."""
    if flags & 0x800:
        return raw.decode("utf-8")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _zip64_extra(
    extra: bytes, usize: int, csize: int, offset: int, disk: int, archive: str, name: str
) -> tuple[int, int, int]:
    """Replace the saturated fields from the ZIP64 extra field (0x0001), in the spec's order."""
    p = 0
    while p + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, p)
        body = extra[p + 4 : p + 4 + length]
        p += 4 + length
        if tag != 0x0001:
            continue
        q = 0
        try:
            if usize == _U32:
                (usize,) = struct.unpack_from("<Q", body, q)
                q += 8
            if csize == _U32:
                (csize,) = struct.unpack_from("<Q", body, q)
                q += 8
            if offset == _U32:
                (offset,) = struct.unpack_from("<Q", body, q)
                q += 8
        except struct.error:
            raise _damaged(archive, f"entry {name!r} has a truncated ZIP64 extra field") from None
        return usize, csize, offset
    if _U32 in (usize, csize, offset):
        raise _damaged(archive, f"entry {name!r} needs a ZIP64 extra field and has none")
    return usize, csize, offset


# --------------------------------------------------------------------------------------------
# Cache


def cache_path(state_dir: Path, archive: str) -> Path:
    """``DATA/.isic2020/remote/<archive>.json.gz``."""
    return Path(state_dir) / "remote" / f"{archive}.json.gz"


_MEMBER_FIELDS = [f.name for f in fields(RemoteMember)]


def save_cached(path: Path, remote: RemoteZip) -> None:
    """Store the directory (gzip'ed, one row per member: ~21 B a member for the real zip)."""
    try:
        atomic_write(Path(path), _cache_bytes(remote), durable=False)
    except OSError as exc:
        raise disk_error(exc, Path(path)) from None


def _cache_bytes(remote: RemoteZip) -> bytes:
    """The cache file's bytes, encoded and compressed ``CACHE_BATCH`` rows at a time: the
    whole document as Python lists plus its JSON text was ~17 MB at the peak of a fetch.
    Level 1: 0.03 s instead of 0.27 s (level 9) for 710 KB instead of 600 KB."""
    head = {
        "version": CACHE_VERSION,
        "key": remote.cache_key,
        "url": remote.url,
        "size": remote.size,
        "etag": remote.etag,
        "last_modified": remote.last_modified,
        "cd_offset": remote.cd_offset,
        "cd_size": remote.cd_size,
        "columns": _MEMBER_FIELDS,
    }
    z = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: the gzip container
    text = json.dumps(head, separators=(",", ":"))[:-1] + ',"members":['
    out = [z.compress(text.encode())]
    row = attrgetter(*_MEMBER_FIELDS)
    members = remote.members
    for i in range(0, len(members), CACHE_BATCH):
        rows = json.dumps([row(m) for m in members[i : i + CACHE_BATCH]], separators=(",", ":"))
        out.append(z.compress((("," if i else "") + rows[1:-1]).encode()))
    out.append(z.compress(b"]}"))
    out.append(z.flush())
    return b"".join(out)


def load_cached(path: Path, key: str | None) -> RemoteZip | None:
    """The cached directory when it was made for ``key`` (see :func:`cache_key`), else None."""
    if key is None:
        return None
    try:
        doc = json.loads(gzip.decompress(Path(path).read_bytes()))
        if doc.get("version") != CACHE_VERSION or doc.get("key") != key:
            return None
        cols = doc["columns"]
        members = [RemoteMember(**dict(zip(cols, row))) for row in doc["members"]]
        return RemoteZip(
            url=doc["url"], size=int(doc["size"]), etag=doc["etag"], members=members,
            cd_offset=int(doc["cd_offset"]), cd_size=int(doc["cd_size"]), bytes_read=0,
            last_modified=doc.get("last_modified"), from_cache=True,
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile):
        return None


def open_remote(
    url: str,
    cache: Path | None = None,
    *,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    expected_etag: str | None = None,
    connections: int = DEFAULT_CONNECTIONS,
    save: bool = True,
) -> RemoteZip:
    """The directory of the object now at ``url``: from ``cache`` when the ETag and size still
    match (one HEAD, no body bytes), else read from the server (over up to ``connections``
    connections) and cached (unless ``save`` is false: a dry run writes nothing)."""
    timeouts = timeouts or Timeouts()
    retry = retry or RetryPolicy()
    size, etag, last_modified = probe(url, timeouts=timeouts, retry=retry)
    if cache is not None:
        cached = load_cached(cache, cache_key(etag, size, last_modified))
        if cached is not None and (not expected_etag or cached.etag == expected_etag):
            cached.url = url
            return cached
    expected = normalize_etag(expected_etag)
    if expected and etag != expected:
        raise ObjectChanged(f"{url}: ETag is {etag}, expected {expected}")
    remote = _read_directory(url, size, etag, last_modified, session=None, timeouts=timeouts,
                             retry=retry, connections=connections)
    if save and cache is not None and remote.cache_key is not None:
        save_cached(cache, remote)
    return remote


# --------------------------------------------------------------------------------------------
# Selecting members


def unsafe_members(remote: RemoteZip) -> list[tuple[str, str]]:
    """``(name, why)`` for every entry ``extract`` would refuse."""
    out = []
    for m in remote.members:
        why = m.unsafe_reason()
        if why:
            out.append((m.name, why))
    return out


def image_members(remote: RemoteZip, fmt: str | None = None) -> dict[str, RemoteMember]:
    """``image_name`` (``ISIC_xxxxxxx``, as in the CSVs) -> its entry, by ``extract``'s rule.

    An image is any entry whose base name is ``ISIC_<7 digits>.jpg`` (``.dcm``), wherever it
    stands; ``fmt`` (``jpeg``, ``dicom``...) keeps only that extension. The archive is refused,
    as ``extract`` refuses it, when any entry is unsafe or two entries are the same image with
    different contents; identical duplicates keep the first.
    """
    bad = unsafe_members(remote)
    if bad:
        name, why = bad[0]
        raise _damaged(remote.name, f"entry {name!r} is unsafe ({why}); nothing was written")
    remote.checked = remote.members
    ext = EXTENSIONS[fmt] if fmt else None
    out: dict[str, RemoteMember] = {}
    for m in remote.members:
        fname = m.image_file_name(ext)
        if fname is None:
            continue
        key = fname.rsplit(".", 1)[0]
        prev = out.get(key)
        if prev is not None:
            if prev.crc != m.crc or prev.file_size != m.file_size:
                raise _damaged(
                    remote.name,
                    f"entries {prev.name!r} and {m.name!r} are both {fname} with different "
                    "contents",
                )
            continue
        out[key] = m
    return out


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
    joiner = _Coalescer(remote.member_end(), max_gap, max_span, max_waste)
    chosen = sorted({m.header_offset: m for m in members}.values(), key=lambda m: m.header_offset)
    spans = [s for s in map(joiner.add, chosen) if s is not None]
    last = joiner.finish()
    return [*spans, last] if last is not None else spans


class _Coalescer:
    """:func:`plan_ranges`' rule one member at a time, in archive order: a fetch can start on
    the first spans while the rest of a 33,126-member plan is still being made."""

    def __init__(self, ends: dict[int, int], max_gap: int, max_span: int, max_waste: float):
        self.ends = ends
        self.max_gap, self.max_span, self.max_waste = max_gap, max_span, max_waste
        self.cur: list[RemoteMember] = []
        self.start = self.end = self.wanted = 0

    def add(self, m: RemoteMember) -> Span | None:
        """Take the next member; the span it closed, if it closed one."""
        a, b = m.header_offset, self.ends[m.header_offset]
        if self.cur:
            gap = a - self.end
            waste = (self.end - self.start - self.wanted) + gap
            if (
                gap <= self.max_gap
                and b - self.start <= self.max_span
                and waste <= self.max_waste * (self.wanted + b - a)
            ):
                self.cur.append(m)
                self.end, self.wanted = b, self.wanted + (b - a)
                return None
        closed = self.finish()
        self.cur, self.start, self.end, self.wanted = [m], a, b, b - a
        return closed

    def finish(self) -> Span | None:
        """The span still open, if any."""
        if not self.cur:
            return None
        span = Span(self.start, self.end, tuple(self.cur))
        self.cur = []
        return span



# --------------------------------------------------------------------------------------------
# Fetching members


_SEEK, _HEADER, _DATA = 0, 1, 2


def _temp_path(final: str) -> str:
    head, tail = os.path.split(final)
    return os.path.join(head, temp_name(tail))


class _SpanWriter:
    """Consumes one span's bytes in order and turns its members into verified files.

    Fed by :meth:`RangeClient.stream`, which resumes after a break at the exact byte: the
    parser and the inflater never see a seam, so a retry costs no re-download of the member.

    Why two paths: ~50 typical 20 KB members arrive in one 1 MiB block, and every Python step
    per member holds the GIL that the other connections' threads need to read their sockets.
    A member wholly inside the block is checked, inflated (one call, bounded by the declared
    size), CRC-checked and only then written (one ``os.open``, one write loop, ``rename``: no
    file object, no ``Path``, no buffer of its own). A member cut by the block's end is
    streamed: header buffered, data inflated ``OUT_BLOCK`` at a time into its open file.
    """

    def __init__(self, archive: str, span: Span, finals: dict[int, str], mode: int) -> None:
        self.archive = archive
        self.pending = list(reversed(span.members))
        self.finals = finals
        self.mode = mode
        self.pos = span.start
        self.state = _SEEK
        self.buf = bytearray()
        self.need = _LFH.size
        self.member: RemoteMember | None = None
        self.left = 0
        self.inflater: Any = None
        self.fd = -1
        self.tmp: str | None = None
        self.crc = 0
        self.written = 0
        self.done = 0
        self.bytes_written = 0

    # -- the parser ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self.state == _SEEK:
                if not self.pending:
                    self.pos += n - i  # data descriptor, skipped members, trailing gap
                    return
                skip = min(n - i, self.pending[-1].header_offset - self.pos)
                i += skip
                self.pos += skip
                if i < n:  # at the next member's local header
                    used = self._whole(view, i)
                    i += used
                    self.pos += used
                    if not used:
                        self.state, self.need = _HEADER, _LFH.size
                        self.buf.clear()
            elif self.state == _HEADER:
                take = min(n - i, self.need - len(self.buf))
                self.buf += view[i : i + take]
                i += take
                self.pos += take
                if len(self.buf) == self.need:
                    self._header()
            else:
                take = min(n - i, self.left)
                self._data(view[i : i + take])
                i += take
                self.pos += take
                self.left -= take
                if self.left == 0:
                    self._finish()

    def _header_len(self, m: RemoteMember, buf: bytes | bytearray | memoryview, at: int) -> int:
        """The local header's full length (its name and extra lengths can differ from the
        directory's: ZIP64 extras), after checking its signature and method."""
        sig, _, _, _, method, _, _, _, _, _, name_len, extra_len = _LFH.unpack_from(buf, at)
        if sig != _LFH_SIG:
            raise self._bad(m, "no local file header where the central directory says")
        if method != m.method:
            raise self._bad(m, f"local header says method {method}, directory {m.method}")
        return _LFH.size + name_len + extra_len

    def _check_name(self, m: RemoteMember, buf: bytes | bytearray | memoryview, at: int) -> None:
        h = _LFH.unpack_from(buf, at)
        flags, name_len = h[3], h[10]
        raw = bytes(buf[at + _LFH.size : at + _LFH.size + name_len])
        local = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if local != m.name:
            raise self._bad(m, f"local header names it {local!r}")

    def _check_method(self, m: RemoteMember) -> None:
        if m.flags & 0x1:
            raise self._bad(m, "it is encrypted")
        if m.method == zipfile.ZIP_STORED:
            if m.compressed_size != m.file_size:
                raise self._bad(m, "stored with different compressed and file sizes")
        elif m.method != zipfile.ZIP_DEFLATED:
            raise self._bad(m, f"compression method {m.method} is not supported")

    # -- a member wholly inside the block --------------------------------------------------
    def _whole(self, view: memoryview, i: int) -> int:
        """Write the member whose local header starts at ``view[i]`` if all of it is there;
        the bytes used (0: it is not, stream it)."""
        if len(view) - i < _LFH.size:
            return 0
        m = self.pending[-1]
        hlen = self._header_len(m, view, i)
        end = i + hlen + m.compressed_size
        if end > len(view):
            return 0
        self._check_name(m, view, i)
        self.pending.pop()
        self._check_method(m)
        data = self._inflate_whole(m, view[i + hlen : end])
        self._write_file(m, data)
        return end - i

    def _inflate_whole(self, m: RemoteMember, raw: memoryview) -> bytes | memoryview:
        if m.method == zipfile.ZIP_STORED:
            data: bytes | memoryview = raw
        else:
            d = zlib.decompressobj(-15)
            try:
                data = d.decompress(raw, m.file_size + 1)
            except zlib.error as exc:
                raise self._bad(m, f"its data does not inflate ({exc})") from None
            if len(data) > m.file_size:
                raise self._bad(m, "it inflates to more than its declared size")
            if not d.eof:
                raise self._bad(m, "its deflate stream is truncated")
        if len(data) != m.file_size:
            raise self._bad(m, f"it inflates to {len(data)} bytes, not {m.file_size}")
        crc = zlib.crc32(data)
        if crc != m.crc:
            raise self._bad(m, f"CRC-32 {crc:08x} differs from the directory's {m.crc:08x}")
        return data

    def _write_file(self, m: RemoteMember, data: bytes | memoryview) -> None:
        """``data`` (already checked) to the temporary name, then renamed to the final one."""
        final = self.finals[m.header_offset]
        tmp = _temp_path(final)
        fd = -1
        try:
            fd = open_nofollow(tmp, _CREATE, self.mode)
            if data:
                write_all(fd, data)
            os.close(fd)
            fd = -1
            os.replace(tmp, final)
        except BaseException as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise disk_error(exc, Path(final)) from None
            raise
        self.done += 1
        self.bytes_written += m.file_size

    # -- a member cut by the end of a block: streamed --------------------------------------
    def _header(self) -> None:
        m = self.pending[-1]
        if self.need == _LFH.size:
            self.need = self._header_len(m, self.buf, 0)
            if len(self.buf) < self.need:
                return
        self._check_name(m, self.buf, 0)
        self._begin(m)

    def _begin(self, m: RemoteMember) -> None:
        self.pending.pop()
        self._check_method(m)
        self.member = m
        self.left = m.compressed_size
        self.crc = self.written = 0
        self.inflater = zlib.decompressobj(-15) if m.method == zipfile.ZIP_DEFLATED else None
        final = self.finals[m.header_offset]
        self.tmp = _temp_path(final)
        try:
            self.fd = open_nofollow(self.tmp, _CREATE, self.mode)
        except OSError as exc:
            self.tmp = None
            raise disk_error(exc, Path(final)) from None
        self.state = _DATA
        if self.left == 0:
            self._finish()

    def _data(self, chunk: memoryview) -> None:
        d = self.inflater
        if d is None:
            self._emit(chunk)
            return
        try:
            self._emit(d.decompress(chunk, OUT_BLOCK))
            while d.unconsumed_tail:
                self._emit(d.decompress(d.unconsumed_tail, OUT_BLOCK))
        except zlib.error as exc:
            assert self.member is not None
            raise self._bad(self.member, f"its data does not inflate ({exc})") from None

    def _emit(self, data: bytes | memoryview) -> None:
        if not data:
            return
        m = self.member
        assert m is not None
        if self.written + len(data) > m.file_size:
            raise self._bad(m, "it inflates to more than its declared size")
        self.crc = zlib.crc32(data, self.crc)
        self.written += len(data)
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise disk_error(exc, Path(self.finals[m.header_offset])) from None

    def _finish(self) -> None:
        m = self.member
        assert m is not None and self.tmp is not None
        if self.inflater is not None:
            try:
                self._emit(self.inflater.flush())
            except zlib.error as exc:
                raise self._bad(m, f"its data does not inflate ({exc})") from None
            if not self.inflater.eof:
                raise self._bad(m, "its deflate stream is truncated")
        if self.written != m.file_size:
            raise self._bad(m, f"it inflates to {self.written} bytes, not {m.file_size}")
        if self.crc != m.crc:
            raise self._bad(m, f"CRC-32 {self.crc:08x} differs from the directory's {m.crc:08x}")
        final = self.finals[m.header_offset]
        try:
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, final)
        except OSError as exc:
            raise disk_error(exc, Path(final)) from None
        self.tmp = None
        self.inflater = None
        self.done += 1
        self.bytes_written += self.written
        self.member = None
        self.state = _SEEK

    def _bad(self, m: RemoteMember, why: str) -> VerificationError:
        return VerificationError(
            f"{self.archive}: member {m.name!r} is damaged: {why}",
            "the server's archive is damaged or not the official one; try another --mirror "
            "or run the same command again",
        )

    def check_complete(self) -> None:
        if self.pending or self.state != _SEEK:
            m = self.member or self.pending[-1]
            raise self._bad(m, "its bytes end before the member does")

    def cleanup(self) -> None:
        """After a failure: close and remove the member in progress (never left half-written)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _already_there(m: RemoteMember, final: Path, check: str) -> bool:
    try:
        if final.stat().st_size != m.file_size:
            return False
        return check == "size" or _file_crc(final) == m.crc
    except OSError:
        return False


def _check_member_limits(remote: RemoteZip, m: RemoteMember) -> None:
    why = None if remote.checked is remote.members else m.unsafe_reason()
    if why:
        raise _damaged(remote.name, f"entry {m.name!r} is unsafe ({why}); refusing to write it")
    if m.file_size > MAX_MEMBER_BYTES or (
        m.file_size > RATIO_FLOOR and m.file_size > MAX_RATIO * max(m.compressed_size, 1)
    ):
        raise _damaged(
            remote.name,
            f"entry {m.name!r} expands {m.compressed_size} to {m.file_size} bytes (zip bomb?)",
        )


def fetch_members(
    remote: RemoteZip,
    members: Sequence[RemoteMember],
    dest: Callable[[RemoteMember], Path],
    *,
    connections: int = DEFAULT_CONNECTIONS,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    log: Log | None = None,
    progress: bool = False,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
    check_existing: Literal["size", "crc"] = "size",
) -> FetchMembersResult:
    """Fetch ``members`` of ``remote`` by byte ranges straight to ``dest(member)``.

    Parallel over ``connections`` (each worker its own session, with the engine's AIMD
    throttle on 503/429), every member inflated, size- and CRC-checked against the directory,
    written to ``.<name>.part`` next to its final path and renamed. Members already at their
    final path (see ``check_existing``) are skipped, so a killed run resumes.

    Every member is checked against the limits before anything is fetched; the plan (final
    paths, what is already there, spans) is then made while the first spans download, and
    the downloading threads hand their blocks to :class:`_Unpackers`.

    Raises VerificationError naming a damaged member (nothing half-written is left),
    ObjectChanged when the archive changed (re-read its directory: :func:`open_remote`),
    DownloadError when the host gives up (after the retry window), DiskError, Interrupted.
    """
    t0 = time.monotonic()
    result = FetchMembersResult(remote.name, remote.url, remote.etag, requested=len(members))
    chosen = checked_in_order(remote, members)
    ends = remote.member_end()
    bar = _bar(progress, sum(ends[m.header_offset] - m.header_offset for m in chosen),
               remote.name)
    job = _MemberFetch(remote, result, connections, timeouts or Timeouts(),
                       retry or RetryPolicy(), bar)
    try:
        job.start()
        job.plan(chosen, dest, check_existing,
                 _Coalescer(ends, max_gap, max_span, DEFAULT_MAX_WASTE))
        if log is not None and result.spans:
            log(f"{remote.name}: fetching {job.planned} members ({job.planned_bytes / 1e6:.1f} "
                f"MB in {result.spans} ranges) over {min(connections, result.spans)} "
                "connections")
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
        _raise_first(job.errors, remote.url)
        if result.written:
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
    for m in unique.values():
        _check_member_limits(remote, m)
    return sorted(unique.values(), key=lambda m: m.header_offset)


class _SpanQueue:
    """Spans handed to the downloading threads as the plan makes them, in archive order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: deque[Span] = deque()
        self._closed = False
        self._taken = 0

    def put(self, span: Span) -> None:
        with self._cond:
            self._spans.append(span)
            self._cond.notify()

    def close(self) -> None:
        """No more spans: threads that find the queue empty stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, abort: threading.Event) -> tuple[int, Span] | None:
        """The next span and its number, or None when there is none left (or on abort)."""
        with self._cond:
            while not (self._spans or self._closed or abort.is_set()):
                self._cond.wait(0.1)
            if abort.is_set() or not self._spans:
                return None
            self._taken += 1
            return self._taken - 1, self._spans.popleft()


class _MemberFetch:
    """One :func:`fetch_members` job: the plan, the downloading threads, the unpackers, the
    flushers, and what they share (the first error stops them all)."""

    def __init__(
        self,
        remote: RemoteZip,
        result: FetchMembersResult,
        connections: int,
        timeouts: Timeouts,
        retry: RetryPolicy,
        bar: Any,
    ) -> None:
        self.remote = remote
        self.result = result
        self.bar = bar
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.finals: dict[int, str] = {}  # header offset -> final path, of planned members
        self.spans = _SpanQueue()
        self.mode = file_mode()
        self.planned = self.planned_bytes = 0
        self.client = RangeClient(
            remote.url, remote.size, remote.etag, remote.last_modified,
            timeouts=timeouts, retry=retry, throttle=Throttle(max(1, connections)),
            abort=self.abort, on_bytes=(bar.update if bar is not None else None),
            block=READ_BLOCK,
        )
        self.unpackers = _Unpackers(UNPACKERS, self.abort, self.fail, self.done)
        # Like extract: the destination's filesystem is flushed in the background while the
        # members are written, so the final flush that must precede any record of completion
        # finds little left (os.sync took ~1 s at the end of 650 MB).
        self.flushers: dict[int, Flusher] = {}
        self.threads = [
            threading.Thread(target=self._download, name=f"isic2020-rz-{k}", daemon=True)
            for k in range(max(1, connections))
        ]

    # -- the shared state ------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if not isinstance(exc, Interrupted) or not self.errors:
                self.errors.append(exc)
        self.abort.set()

    def done(self, writer: _SpanWriter) -> None:
        with self.lock:
            self.result.written += writer.done
            self.result.bytes_written += writer.bytes_written

    # -- the plan (main thread) ------------------------------------------------------------
    def plan(
        self,
        chosen: list[RemoteMember],
        dest: Callable[[RemoteMember], Path],
        check: str,
        joiner: _Coalescer,
    ) -> None:
        """Final paths, what is already in place, spans: each span is queued as soon as it is
        closed, so the first ones download while the rest is planned."""
        present: dict[str, dict[str, int]] = {}
        made: set[str] = set()
        for m in chosen:
            if self.abort.is_set():
                break
            final = os.fspath(dest(m))
            folder, name = os.path.split(final)
            here = present.get(folder)
            if here is None:
                here = present[folder] = present_files(folder)
            if here.get(name) == m.file_size and (
                check == "size" or _already_there(m, Path(final), check)
            ):
                self.result.skipped += 1
                continue
            if folder not in made:
                self._make_folder(folder)
                made.add(folder)
            self.finals[m.header_offset] = final
            self.planned += 1
            self.result.bytes_wanted += m.compressed_size
            self._queue(joiner.add(m))
        self._queue(joiner.finish())
        self.spans.close()
        if self.bar is not None:
            self.bar.total = self.planned_bytes
            self.bar.refresh()

    def _queue(self, span: Span | None) -> None:
        if span is not None:
            self.result.spans += 1
            self.planned_bytes += span.length
            self.spans.put(span)

    def _make_folder(self, folder: str) -> None:
        try:
            os.makedirs(folder or ".", exist_ok=True)
            dev = os.stat(folder or ".").st_dev
        except OSError as exc:
            raise disk_error(exc, Path(folder)) from None
        if dev not in self.flushers:
            flusher = self.flushers[dev] = Flusher(Path(folder or "."))
            flusher.start()

    # -- the downloading threads -----------------------------------------------------------
    def start(self) -> None:
        self.unpackers.start()
        for t in self.threads:
            t.start()

    def _download(self) -> None:
        session: requests.Session | None = None
        try:
            while (item := self.spans.get(self.abort)) is not None:
                k, span = item
                session = session or make_session(1)
                writer = _SpanWriter(self.remote.name, span, self.finals, self.mode)
                ok = False
                try:
                    self.client.stream(session, span.start, span.end,
                                       self.unpackers.sink(k, writer))
                    ok = True
                finally:
                    self.unpackers.end(k, writer, ok)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.fail(exc)
        finally:
            if session is not None:
                session.close()

    def wait(self) -> None:
        """Until every span is fetched and written (Ctrl-C interrupts the wait)."""
        for t in self.threads:
            while t.is_alive():
                t.join(timeout=0.1)
        self.unpackers.stop()

    def stop(self) -> None:
        """After an error or Ctrl-C in the main thread: stop every thread."""
        self.abort.set()
        self.spans.close()
        for t in self.threads:
            t.join(timeout=5)

    def close(self) -> None:
        """Whatever happened: the unpackers end (removing the members they had in progress),
        the background flushes stop, the progress bar closes."""
        self.spans.close()
        self.unpackers.stop()
        for f in self.flushers.values():
            f.stop()
        if self.bar is not None:
            self.bar.close()

    def flush(self) -> None:
        """The flush that makes the written files durable (before any record of them)."""
        for f in self.flushers.values():
            f.final()

    def release(self) -> None:
        """The flushers' folder handles, last."""
        for f in self.flushers.values():
            f.close()


class _Unpackers:
    """A few threads that feed the span writers, so the downloading threads only download.

    Why: writing a member holds the GIL for a while and waits on the folder's lock in the
    kernel (every file is created in the same folder). Done in the downloading thread, that
    is time the thread does not read its socket, and each span's last block is unpacked
    before the thread asks for its next span. 654 MB, 33,126 members, 16 connections at
    2 MiB/s: 21.7 s written by the downloading threads, 20.0 s with 2 unpackers (mean of 5;
    1 unpacker: 20.3 s, mean of 8, busy 12-17 s of the 20: too little headroom), 20.2 s for
    the network alone. The price of 2: their file creations and renames lock the same folder
    in the kernel, which spins (more system CPU, very noisy on ext4 after mass deletions: 6-18
    s against 4-12 s for one). Span ``k`` always goes to thread ``k % n``, so each span's
    blocks reach its writer in order; a bounded queue per thread keeps memory flat (a
    downloading thread waits when its unpacker is behind).
    """

    def __init__(
        self,
        n: int,
        abort: threading.Event,
        fail: Callable[[BaseException], None],
        done: Callable[[_SpanWriter], None],
    ) -> None:
        self.abort = abort
        self.fail = fail
        self.done = done
        self.queues: list[Queue[tuple[_SpanWriter | None, bytes | None]]] = [
            Queue(maxsize=UNPACK_QUEUE) for _ in range(max(1, n))
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(q,), name=f"isic2020-unpack-{k}",
                             daemon=True)
            for k, q in enumerate(self.queues)
        ]
        self.stopped = False

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def sink(self, k: int, writer: _SpanWriter) -> Callable[[bytes], None]:
        """Where span ``k``'s blocks go, in order."""
        q = self.queues[k % len(self.queues)]

        def put(block: bytes) -> None:
            while True:
                try:
                    q.put((writer, block), timeout=0.1)
                    return
                except Full:
                    if self.abort.is_set():
                        raise Interrupted("aborted") from None

        return put

    def end(self, k: int, writer: _SpanWriter, complete: bool) -> None:
        """Span ``k`` ended: completely (its writer must have finished every member) or not
        (its writer removes the member in progress). Never refused: the unpacker drains."""
        self.queues[k % len(self.queues)].put((writer, b"" if complete else None))

    def stop(self) -> None:
        """After the downloading threads: the queues drain, then the threads end."""
        if self.stopped:
            return
        self.stopped = True
        for q in self.queues:
            q.put((None, None))
        for t in self.threads:
            while t.is_alive():
                t.join(timeout=0.1)

    def _run(self, q: Queue[tuple[_SpanWriter | None, bytes | None]]) -> None:
        while True:
            writer, block = q.get()
            if writer is None:
                return
            if block is None or self.abort.is_set():
                writer.cleanup()  # abandoned, or another thread failed
                continue
            try:
                if block:
                    writer.feed(block)
                    continue
                writer.check_complete()
                self.done(writer)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                writer.cleanup()
                self.fail(exc)


def _raise_first(errors: list[BaseException], url: str) -> None:
    """The first real error of the workers (an Interrupted only when there is no other)."""
    real = [e for e in errors if not isinstance(e, Interrupted)]
    if real:
        exc = real[0]
        if isinstance(exc, HostFailed):
            raise _host_failed(url, exc)
        raise exc
    if errors:
        raise errors[0]


def _bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled:
        return None
    return progress_bar(total, name)


# --------------------------------------------------------------------------------------------
# The whole job for one archive: failover across hosts, re-read after a change


def fetch_remote_members(
    urls: Sequence[str],
    choose: Callable[[RemoteZip], Sequence[RemoteMember]],
    dest: Callable[[RemoteMember], Path],
    *,
    cache: Path | None = None,
    expected_etag: str | None = None,
    connections: int = DEFAULT_CONNECTIONS,
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
                                timeouts=timeouts, retry=retry, log=log, progress=progress,
                                check_existing=check, max_gap=max_gap, max_span=max_span)
            return remote, res
        except ObjectChanged as exc:
            restarts += 1
            if cache is not None:
                with contextlib.suppress(OSError):
                    remove_file(cache)
            if expected_etag or restarts > retry.object_restarts:
                failures.append(f"{url}: {exc.message}")
                i += 1
                continue
            check = "crc"
            if log is not None:
                log(f"{exc.message}; the archive changed, reading its directory again")
        except (DiskError, Interrupted):
            raise
        except (DownloadError, VerificationError) as exc:
            failures.append(f"{url}: {exc.message}")
            if isinstance(exc, VerificationError):
                damaged.append(f"{url}: {exc.message}")
            if log is not None and i + 1 < len(http_urls):
                log(f"{exc.message}; trying the next host")
            i += 1
    if damaged and len(damaged) == len(failures):
        raise VerificationError(
            "; ".join(damaged),
            "the servers' archive is damaged or not the official one; try another --mirror",
        )
    raise DownloadError(
        f"every host failed ({'; '.join(failures)})",
        "check the network or the mirror, then run the same command again to resume",
    )


# --------------------------------------------------------------------------------------------
# inspect


@dataclass
class ArchiveInspection:
    """One remote archive as its central directory describes it, compared with the CSV."""

    archive: str
    split: str
    format: str
    url: str
    size: int
    etag: str | None
    entries: int
    images: int
    directories: int
    non_images: list[str]
    compressed_bytes: int
    uncompressed_bytes: int
    cd_bytes: int
    bytes_transferred: int
    from_cache: bool
    image_sizes: dict[str, int]  # min, median, max (uncompressed)
    metadata_csv: str | None = None
    in_metadata: int | None = None
    missing: list[str] = field(default_factory=list)  # in the CSV, not in the archive
    extra: list[str] = field(default_factory=list)  # in the archive, not in the CSV
    members: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InspectReport:
    data_dir: str
    split: str
    format: str
    archives: list[ArchiveInspection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def bytes_transferred(self) -> int:
        return sum(a.bytes_transferred for a in self.archives)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "inspect",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "archives": [a.to_dict() for a in self.archives],
            "notes": self.notes,
            "bytes_transferred": self.bytes_transferred,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }

    def summary_lines(self) -> list[str]:
        lines: list[str] = []
        for a in self.archives:
            how = "cached directory" if a.from_cache else f"{human_size(a.bytes_transferred)} read"
            lines.append(
                f"{a.archive}: {a.entries} entries, {a.images} images, "
                f"{human_size(a.compressed_bytes)} compressed, "
                f"{human_size(a.uncompressed_bytes)} unpacked ({how})"
            )
            s = a.image_sizes
            if s:
                lines.append(
                    f"  image sizes: min {s['min']:,} B, median {s['median']:,} B, "
                    f"max {s['max']:,} B"
                )
            if a.non_images:
                lines.append(f"  {len(a.non_images)} non-image entries: {_short(a.non_images)}")
            if a.metadata_csv is None:
                lines.append("  metadata CSV not on disk: run `isic2020 fetch --format none` "
                             "to compare the images with it")
            else:
                lines.append(
                    f"  vs {a.metadata_csv}: {a.in_metadata} listed, "
                    f"{len(a.missing)} missing from the archive, {len(a.extra)} extra"
                )
                if a.missing:
                    lines.append(f"    missing: {_short(a.missing)}")
                if a.extra:
                    lines.append(f"    extra: {_short(a.extra)}")
        lines.extend(self.notes)
        return lines


def _short(items: Sequence[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def inspect_remote(remote: RemoteZip, split: str, fmt: str) -> ArchiveInspection:
    """What the directory says: counts, sizes, non-image entries (no metadata comparison)."""
    ext = EXTENSIONS[fmt]
    images = image_members(remote, fmt)
    directories = sum(1 for m in remote.members if m.is_dir)
    image_offsets = {m.header_offset for m in images.values()}
    non_images = [
        m.name for m in remote.members if not m.is_dir and m.header_offset not in image_offsets
    ]
    sizes = sorted(m.file_size for m in images.values())
    return ArchiveInspection(
        archive=remote.name,
        split=split,
        format=fmt,
        url=remote.url,
        size=remote.size,
        etag=remote.etag,
        entries=len(remote.members),
        images=len(images),
        directories=directories,
        non_images=non_images,
        compressed_bytes=sum(m.compressed_size for m in remote.members),
        uncompressed_bytes=sum(m.file_size for m in remote.members),
        cd_bytes=remote.cd_size,
        bytes_transferred=remote.bytes_read,
        from_cache=remote.from_cache,
        image_sizes=(
            {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]} if sizes else {}
        ),
        members=[
            {"image_name": k, "file": f"{k}.{ext}", "entry": m.name,
             "compressed_size": m.compressed_size, "file_size": m.file_size}
            for k, m in sorted(images.items())
        ],
    )


def compare_with_metadata(
    result: ArchiveInspection, images: Iterable[str], csv_names: Iterable[str], csv: str
) -> None:
    """Fill in which CSV names the archive lacks (``missing``) and which it adds (``extra``)."""
    have, listed = set(images), list(dict.fromkeys(csv_names))
    known = set(listed)
    result.metadata_csv = csv
    result.in_metadata = len(listed)
    result.missing = [n for n in listed if n not in have]
    result.extra = sorted(have - known)


def inspect(
    split: str = "all",
    fmt: str = "jpeg",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: Any = None,
    mirrors: Sequence[str] = (),
    *,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    log: Log | None = None,
) -> InspectReport:
    """``isic2020 inspect``: each selected archive's directory, read remotely (or from the
    cache), and how its image names compare with the metadata CSV when that is on disk."""
    import warnings

    from isic2020.catalog.manifest import Manifest, expand_split, load_manifest
    from isic2020.catalog.tables import load_metadata
    from isic2020.store.layout import Layout

    t0 = time.monotonic()
    if fmt == "none":
        raise UsageError("inspect needs an image format", "use --format jpeg, dicom or ...")
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    layout = Layout.at(data_dir)
    report = InspectReport(str(layout.root), split, fmt)
    for s in expand_split(split):
        entry = man.archive(s, fmt)
        if entry is None:
            report.notes.append(f"no {s} archive in format {fmt}")
            continue
        urls = entry.urls(list(mirrors))
        remote, failures, damaged = None, [], []
        for url in (u for u in urls if not u.startswith("file://")):
            try:
                remote = open_remote(
                    url, cache_path(layout.state_dir, entry.name), timeouts=timeouts,
                    retry=retry, expected_etag=entry.etag,
                )
                break
            except (DownloadError, VerificationError) as exc:
                if isinstance(exc, DiskError):
                    raise
                failures.append(f"{url}: {exc.message}")
                if isinstance(exc, VerificationError):
                    damaged.append(exc.message)
                if log is not None:
                    log(f"{entry.name}: {exc.message}")
        if remote is None:
            if failures and len(damaged) == len(failures):  # every host answered: bad data
                raise VerificationError(
                    f"{entry.name}: every host serves a damaged archive ({'; '.join(damaged)})",
                    "the server's archive is damaged or not the official one; try another "
                    "--mirror",
                )
            raise DownloadError(
                f"{entry.name}: no host could serve its directory ({'; '.join(failures)})",
                "check the network or the mirror",
            )
        result = inspect_remote(remote, s, fmt)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = load_metadata(s, layout.root, image_format=None, manifest=man.path)
        except (VerificationError, UsageError):
            df = None
        if df is not None:
            role = "test_metadata" if s == "test" else "ground_truth_v2"
            csv_entry = man.role(role) or man.role("ground_truth")
            compare_with_metadata(
                result,
                [m["image_name"] for m in result.members],
                df["image_name"].astype(str),
                csv_entry.name if csv_entry else "metadata",
            )
        report.archives.append(result)
    report.seconds = time.monotonic() - t0
    return report
