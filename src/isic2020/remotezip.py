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
  (0xFFFF / 0xFFFFFFFF) the ZIP64 locator and ZIP64 end record give the real values. The CD is
  then read in pieces (bytes already in the tail are not asked for twice) and parsed, ZIP64
  extra fields (0x0001) included. Counts and lengths must add up exactly or the archive is
  refused: a half-parsed directory would silently lose images.
* **Cached, keyed by ETag and size.** ``DATA/.isic2020/remote/<archive>.json.gz``; a different
  ETag (or size) is a different object and invalidates it, so a re-published archive is re-read.
* **Members by byte span.** A member's span runs from its local header to the next member's
  local header (or the CD): local header, name, extra, data and data descriptor. Spans of chosen
  members are coalesced when the bytes between them are few (``max_gap``) *and* the waste stays
  under ``max_waste`` of the useful bytes, so a scattered subset never costs more than ~5% over
  its own compressed bytes, while runs of neighbours go in one request (``max_span`` caps a
  request so a retry or a kill loses little).
* **Streamed, checked, then renamed.** Each span is consumed as it arrives (memory is one 1 MiB
  block per connection, whatever the span or member size): the *local* header is parsed (its
  name and extra lengths can differ from the CD's), data is inflated (raw deflate) or copied
  (stored) into a hidden temporary name next to the final path, never more than the declared
  size, and CRC-32 and size are checked against the CD before the atomic rename. A damaged
  member raises :class:`~isic2020.errors.VerificationError` naming it.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import requests

from .download import (
    Downloader,
    DownloadOptions,
    RangeClient,
    RetryPolicy,
    _HostFailed,
    _Throttle,
)
from .errors import (
    DiskError,
    DownloadError,
    Interrupted,
    ObjectChanged,
    UsageError,
    VerificationError,
)
from .extract import (
    EXTENSIONS,
    IMAGE_RE,
    MAX_MEMBER_BYTES,
    MAX_RATIO,
    RATIO_FLOOR,
    _disk_error,
    _file_mode,
    temp_name,
    unsafe_reason,
)
from .hashing import normalize_etag
from .http import Timeouts, make_session
from .state import atomic_write_bytes

KiB = 1 << 10
MiB = 1 << 20
BLOCK = 1 * MiB
#: Tail read first: the longest zip comment (65535) + EOCD (22) + ZIP64 locator (20) + ZIP64 EOCD
#: (56). One request finds the end records of any zip, a few KB more than the minimum.
TAIL_BYTES = 65535 + 22 + 20 + 56
CD_PIECE = 4 * MiB
DEFAULT_MAX_GAP = 64 * KiB
DEFAULT_MAX_SPAN = 8 * MiB
DEFAULT_MAX_WASTE = 0.05
DEFAULT_CONNECTIONS = 8
CACHE_VERSION = 1

_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_LOC64 = struct.Struct("<4sLQL")
_LOC64_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_EOCD64_SIG = b"PK\x06\x06"
_CDH = struct.Struct("<4s4B4HL2L5H2L")
_CDH_SIG = b"PK\x01\x02"
_LFH = struct.Struct("<4s2B4HL2L2H")
_LFH_SIG = b"PK\x03\x04"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class RemoteMember:
    """One central-directory entry: what is needed to fetch, place and check the member."""

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
        """Why this entry must never be written anywhere (the rules of ``extract``), or None."""
        return unsafe_reason(self.zipinfo())

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


def _host_failed(url: str, exc: _HostFailed) -> DownloadError:
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
    except _HostFailed as exc:
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
) -> RemoteZip:
    """Read and parse the remote zip's central directory with a few strict ranged GETs.

    Raises ObjectChanged when the object is not (or stops being) ``expected_etag``,
    VerificationError when the end records or the directory are malformed, DownloadError when
    the host cannot serve it (after retries).
    """
    timeouts = timeouts or Timeouts()
    retry = retry or RetryPolicy()
    size, etag, last_modified = probe(url, timeouts=timeouts, retry=retry)
    expected = normalize_etag(expected_etag)
    if expected and etag != expected:
        raise ObjectChanged(f"{url}: ETag is {etag}, expected {expected}")
    own = session is None
    sess = session or make_session(2)
    client = RangeClient(url, size, etag, last_modified, timeouts=timeouts, retry=retry)
    try:
        remote = _read_cd(client, sess, url, size)
    except _HostFailed as exc:
        raise _host_failed(url, exc) from None
    finally:
        if own:
            sess.close()
    remote.etag, remote.last_modified = etag, last_modified
    remote.bytes_read, remote.retries = client.transferred, client.retries
    return remote


def _read_cd(client: RangeClient, session: requests.Session, url: str, size: int) -> RemoteZip:
    name = unquote(urlsplit(url).path).rsplit("/", 1)[-1]
    if size < _EOCD.size:
        raise _damaged(name, f"{size} bytes is too small to be a zip")
    tail_start = max(0, size - TAIL_BYTES)
    tail = client.read(session, tail_start, size)
    cd_offset, cd_size, count = _end_records(name, tail, tail_start, size, client, session)
    if cd_offset + cd_size > size or cd_offset < 0:
        raise _damaged(name, f"central directory {cd_offset}+{cd_size} lies outside the file")
    cd = bytearray()
    pos = cd_offset
    cd_end = cd_offset + cd_size
    while pos < min(cd_end, tail_start):  # the part the tail does not hold, in pieces
        stop = min(pos + CD_PIECE, cd_end, tail_start)
        client.stream(session, pos, stop, cd.extend)
        pos = stop
    if pos < cd_end:
        cd += tail[pos - tail_start : cd_end - tail_start]
    members = parse_central_directory(bytes(cd), count, name)
    for m in members:
        if m.header_offset + _LFH.size + m.compressed_size > cd_offset:
            raise _damaged(name, f"entry {m.name!r} points past the central directory")
    return RemoteZip(url, size, None, members, cd_offset, cd_size)


def _end_records(
    name: str,
    tail: bytes,
    tail_start: int,
    size: int,
    client: RangeClient,
    session: requests.Session,
) -> tuple[int, int, int]:
    """``(cd_offset, cd_size, entries)`` from the EOCD (and the ZIP64 records when needed)."""
    at = len(tail)
    while True:
        at = tail.rfind(_EOCD_SIG, 0, at)
        if at < 0:
            raise _damaged(name, "no end-of-central-directory record: not a zip file")
        (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len) = _EOCD.unpack_from(
            tail, at
        )
        if at + _EOCD.size + comment_len == len(tail):
            break  # a signature inside the comment would not end exactly at the file's end
    if disk not in (0, _U16) or cd_disk not in (0, _U16) or n_disk != n_total:
        raise _damaged(name, "multi-disk (split) zips are not supported")
    if n_total != _U16 and _U32 not in (cd_size, cd_offset):
        return cd_offset, cd_size, n_total
    loc = at - _LOC64.size
    if loc < 0 or tail[loc : loc + 4] != _LOC64_SIG:
        raise _damaged(name, "ZIP64 fields without a ZIP64 locator")
    _, _, eocd64_offset, n_disks = _LOC64.unpack_from(tail, loc)
    if n_disks > 1:
        raise _damaged(name, "multi-disk (split) zips are not supported")
    if eocd64_offset + _EOCD64.size > size:
        raise _damaged(name, "the ZIP64 end record lies outside the file")
    if eocd64_offset >= tail_start:
        rec = tail[eocd64_offset - tail_start : eocd64_offset - tail_start + _EOCD64.size]
    else:
        rec = client.read(session, eocd64_offset, eocd64_offset + _EOCD64.size)
    (sig, _, _, _, _, _, n_disk64, n_total64, cd_size64, cd_offset64) = _EOCD64.unpack(rec)
    if sig != _EOCD64_SIG:
        raise _damaged(name, "bad ZIP64 end-of-central-directory signature")
    if n_disk64 != n_total64:
        raise _damaged(name, "multi-disk (split) zips are not supported")
    return cd_offset64, cd_size64, n_total64


def parse_central_directory(cd: bytes, count: int, archive: str = "archive") -> list[RemoteMember]:
    """Every entry of a central directory (``count`` of them, filling ``cd`` exactly)."""
    members: list[RemoteMember] = []
    pos = 0
    n = len(cd)
    while pos < n and len(members) < count:
        if pos + _CDH.size > n:
            raise _damaged(archive, f"central directory entry {len(members)} is truncated")
        (
            sig, _create_version, create_system, _extract_version, _reserved, flags, method,
            _t, _d, crc, csize, usize, name_len, extra_len, comment_len, disk, _internal,
            external, offset,
        ) = _CDH.unpack_from(cd, pos)
        if sig != _CDH_SIG:
            raise _damaged(archive, f"bad central directory signature at entry {len(members)}")
        p = pos + _CDH.size
        raw_name = cd[p : p + name_len]
        extra = cd[p + name_len : p + name_len + extra_len]
        pos = p + name_len + extra_len + comment_len
        if pos > n:
            raise _damaged(archive, f"central directory entry {len(members)} is truncated")
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        if _U32 in (usize, csize, offset) or disk == _U16:
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset, disk, archive, name)
        members.append(
            RemoteMember(
                name=name,
                compressed_size=csize,
                file_size=usize,
                crc=crc,
                header_offset=offset,
                method=method,
                flags=flags,
                external_attr=external,
                create_system=create_system,
            )
        )
    if len(members) != count or pos != n:
        raise _damaged(
            archive,
            f"the central directory holds {len(members)} entries in {pos} bytes, the end record "
            f"says {count} entries in {n} bytes",
        )
    return members


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
    """Store the directory (gzip'ed, one row per member: ~20 B a member for the real zip)."""
    doc = {
        "version": CACHE_VERSION,
        "key": remote.cache_key,
        "url": remote.url,
        "size": remote.size,
        "etag": remote.etag,
        "last_modified": remote.last_modified,
        "cd_offset": remote.cd_offset,
        "cd_size": remote.cd_size,
        "columns": _MEMBER_FIELDS,
        "members": [[getattr(m, f) for f in _MEMBER_FIELDS] for m in remote.members],
    }
    data = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)
    atomic_write_bytes(Path(path), data, durable=False)


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
) -> RemoteZip:
    """The directory of the object now at ``url``: from ``cache`` when the ETag and size still
    match (one HEAD, no body bytes), else read from the server and cached."""
    size, etag, last_modified = probe(url, timeouts=timeouts, retry=retry)
    if cache is not None:
        cached = load_cached(cache, cache_key(etag, size, last_modified))
        if cached is not None and (not expected_etag or cached.etag == expected_etag):
            cached.url = url
            return cached
    remote = read_central_directory(
        url, timeouts=timeouts, retry=retry, expected_etag=expected_etag or etag
    )
    if cache is not None and remote.cache_key is not None:
        try:
            save_cached(cache, remote)
        except OSError as exc:
            raise _disk_error(exc, cache) from None
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
    ends = remote.member_end()
    chosen = sorted({m.header_offset: m for m in members}.values(), key=lambda m: m.header_offset)
    spans: list[Span] = []
    cur: list[RemoteMember] = []
    start = end = wanted = 0
    for m in chosen:
        a, b = m.header_offset, ends[m.header_offset]
        if cur:
            gap = a - end
            waste = (end - start - wanted) + gap
            if (
                gap <= max_gap
                and b - start <= max_span
                and waste <= max_waste * (wanted + b - a)
            ):
                cur.append(m)
                end, wanted = b, wanted + (b - a)
                continue
            spans.append(Span(start, end, tuple(cur)))
        cur, start, end, wanted = [m], a, b, b - a
    if cur:
        spans.append(Span(start, end, tuple(cur)))
    return spans


# --------------------------------------------------------------------------------------------
# Fetching members


class _SpanWriter:
    """Consumes one span's bytes in order and turns its members into verified files.

    Fed by :meth:`RangeClient.stream`, which resumes after a break at the exact byte: the
    parser and the inflater never see a seam, so a retry costs no re-download of the member.
    """

    def __init__(
        self,
        archive: str,
        span: Span,
        dest: Callable[[RemoteMember], Path],
        mode: int,
    ) -> None:
        self.archive = archive
        self.pending = list(reversed(span.members))
        self.dest = dest
        self.mode = mode
        self.pos = span.start
        self.state = "seek"
        self.buf = bytearray()
        self.need = _LFH.size
        self.member: RemoteMember | None = None
        self.left = 0
        self.inflater: Any = None
        self.out: Any = None
        self.tmp: Path | None = None
        self.final: Path | None = None
        self.crc = 0
        self.written = 0
        self.done: list[RemoteMember] = []
        self.bytes_written = 0

    # -- the parser ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.state == "seek":
                if not self.pending:
                    self.pos += len(view)  # data descriptor, skipped members, trailing gap
                    return
                target = self.pending[-1].header_offset
                skip = min(len(view), target - self.pos)
                view = view[skip:]
                self.pos += skip
                if self.pos == target:
                    self.state, self.need = "header", _LFH.size
                    self.buf.clear()
            elif self.state == "header":
                take = min(len(view), self.need - len(self.buf))
                self.buf += view[:take]
                view = view[take:]
                self.pos += take
                if len(self.buf) == self.need:
                    self._header()
            else:
                take = min(len(view), self.left)
                self._data(view[:take])
                view = view[take:]
                self.pos += take
                self.left -= take
                if self.left == 0:
                    self._finish()

    def _header(self) -> None:
        m = self.pending[-1]
        sig, _, _, flags, method, _, _, _, _, _, name_len, extra_len = _LFH.unpack_from(self.buf)
        if self.need == _LFH.size:
            if sig != _LFH_SIG:
                raise self._bad(m, "no local file header where the central directory says")
            if method != m.method:
                raise self._bad(m, f"local header says method {method}, directory {m.method}")
            # The local name and extra lengths may differ from the directory's (ZIP64 extras).
            self.need = _LFH.size + name_len + extra_len
            if len(self.buf) < self.need:
                return
        raw = bytes(self.buf[_LFH.size : _LFH.size + name_len])
        local = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if local != m.name:
            raise self._bad(m, f"local header names it {local!r}")
        self._begin(m)

    def _begin(self, m: RemoteMember) -> None:
        self.pending.pop()
        self.member = m
        self.left = m.compressed_size
        self.crc = self.written = 0
        if m.flags & 0x1:
            raise self._bad(m, "it is encrypted")
        if m.method == zipfile.ZIP_DEFLATED:
            self.inflater = zlib.decompressobj(-15)
        elif m.method == zipfile.ZIP_STORED:
            self.inflater = None
            if m.compressed_size != m.file_size:
                raise self._bad(m, "stored with different compressed and file sizes")
        else:
            raise self._bad(m, f"compression method {m.method} is not supported")
        self.final = self.dest(m)
        self.tmp = self.final.parent / temp_name(self.final.name)
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
            self.out = os.fdopen(fd, "wb", buffering=BLOCK)
        except OSError as exc:
            raise _disk_error(exc, self.tmp) from None
        self.state = "data"
        if self.left == 0:
            self._finish()

    def _data(self, chunk: memoryview) -> None:
        if self.inflater is None:
            self._emit(chunk)
            return
        d = self.inflater
        try:
            self._emit(d.decompress(chunk, BLOCK))
            while d.unconsumed_tail:
                self._emit(d.decompress(d.unconsumed_tail, BLOCK))
        except zlib.error as exc:
            assert self.member is not None
            raise self._bad(self.member, f"its data does not inflate ({exc})") from None

    def _emit(self, data: bytes | memoryview) -> None:
        if not data:
            return
        assert self.member is not None and self.out is not None
        if self.written + len(data) > self.member.file_size:
            raise self._bad(self.member, "it inflates to more than its declared size")
        self.crc = zlib.crc32(data, self.crc)
        self.written += len(data)
        try:
            self.out.write(data)
        except OSError as exc:
            raise _disk_error(exc, self.final or Path(".")) from None

    def _finish(self) -> None:
        m = self.member
        assert m is not None and self.out is not None and self.tmp and self.final
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
        try:
            self.out.close()
            self.out = None
            os.replace(self.tmp, self.final)
        except OSError as exc:
            raise _disk_error(exc, self.final) from None
        self.tmp = None
        self.done.append(m)
        self.bytes_written += self.written
        self.member = None
        self.state = "seek"

    def _bad(self, m: RemoteMember, why: str) -> VerificationError:
        return VerificationError(
            f"{self.archive}: member {m.name!r} is damaged: {why}",
            "the server's archive is damaged or not the official one; try another --mirror "
            "or run the same command again",
        )

    def check_complete(self) -> None:
        if self.pending or self.state != "seek":
            m = self.member or self.pending[-1]
            raise self._bad(m, "its bytes end before the member does")

    def cleanup(self) -> None:
        """After a failure: close and remove the member in progress (never left half-written)."""
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
            self.out = None
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
    why = m.unsafe_reason()
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

    Raises VerificationError naming a damaged member (nothing half-written is left),
    ObjectChanged when the archive changed (re-read its directory: :func:`open_remote`),
    DownloadError when the host gives up (after the retry window), DiskError, Interrupted.
    """
    t0 = time.monotonic()
    timeouts = timeouts or Timeouts()
    retry = retry or RetryPolicy()
    result = FetchMembersResult(remote.name, remote.url, remote.etag, requested=len(members))
    todo: list[RemoteMember] = []
    seen: set[int] = set()
    dirs: set[Path] = set()
    for m in members:
        if m.header_offset in seen or m.is_dir:
            continue
        seen.add(m.header_offset)
        _check_member_limits(remote, m)
        final = dest(m)
        if _already_there(m, final, check_existing):
            result.skipped += 1
            continue
        dirs.add(final.parent)
        todo.append(m)
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, d) from None
    spans = plan_ranges(remote, todo, max_gap=max_gap, max_span=max_span)
    result.spans = len(spans)
    result.bytes_wanted = sum(m.compressed_size for m in todo)
    if not spans:
        result.seconds = round(time.monotonic() - t0, 3)
        return result
    if log is not None:
        total = sum(s.length for s in spans)
        log(f"{remote.name}: fetching {len(todo)} members ({total / 1e6:.1f} MB in "
            f"{len(spans)} ranges) over {min(connections, len(spans))} connections")
    bar = _bar(progress, sum(s.length for s in spans), remote.name)
    abort = threading.Event()
    throttle = _Throttle(max(1, connections))
    client = RangeClient(
        remote.url, remote.size, remote.etag, remote.last_modified,
        timeouts=timeouts, retry=retry, throttle=throttle, abort=abort,
        on_bytes=(bar.update if bar is not None else None),
    )
    mode = _file_mode()
    queue = list(reversed(spans))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        session = make_session(1)
        try:
            while not abort.is_set():
                with lock:
                    if not queue:
                        return
                    span = queue.pop()
                writer = _SpanWriter(remote.name, span, dest, mode)
                try:
                    client.stream(session, span.start, span.end, writer.feed)
                    writer.check_complete()
                finally:
                    writer.cleanup()
                    with lock:
                        result.written += len(writer.done)
                        result.bytes_written += writer.bytes_written
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            with lock:
                if not isinstance(exc, Interrupted) or not errors:
                    errors.append(exc)
            abort.set()
        finally:
            session.close()

    threads = [
        threading.Thread(target=worker, name=f"isic2020-rz-{k}", daemon=True)
        for k in range(min(max(1, connections), len(spans)))
    ]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.1)
    except KeyboardInterrupt:
        abort.set()
        for t in threads:
            t.join(timeout=5)
        raise Interrupted(
            f"interrupted while fetching members of {remote.name}",
            "run the same command again to resume; finished images are kept",
        ) from None
    finally:
        if bar is not None:
            bar.close()
        result.bytes_transferred = client.transferred
        result.retries = client.retries
        result.seconds = round(time.monotonic() - t0, 3)
    real = [e for e in errors if not isinstance(e, Interrupted)]
    if real:
        exc = real[0]
        if isinstance(exc, _HostFailed):
            raise _host_failed(remote.url, exc)
        raise exc
    if errors:
        raise errors[0]
    # Like extract: flush file data before a caller records the work as complete.
    if hasattr(os, "sync") and result.written:
        os.sync()
    return result


def _bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                leave=False, dynamic_ncols=True, mininterval=0.5)


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
                                 expected_etag=expected_etag)
            chosen = choose(remote)
            res = fetch_members(remote, chosen, dest, connections=connections,
                                timeouts=timeouts, retry=retry, log=log, progress=progress,
                                check_existing=check, max_gap=max_gap, max_span=max_span)
            return remote, res
        except ObjectChanged as exc:
            restarts += 1
            if cache is not None:
                with contextlib.suppress(OSError):
                    cache.unlink()
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
            how = "cached directory" if a.from_cache else f"{_human(a.bytes_transferred)} read"
            lines.append(
                f"{a.archive}: {a.entries} entries, {a.images} images, "
                f"{_human(a.compressed_bytes)} compressed, "
                f"{_human(a.uncompressed_bytes)} unpacked ({how})"
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


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


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

    from .dataset import load_metadata
    from .layout import Layout
    from .manifest import Manifest, expand_split, load_manifest

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
        remote, failures = None, []
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
                if log is not None:
                    log(f"{entry.name}: {exc.message}")
        if remote is None:
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
