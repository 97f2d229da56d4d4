"""A zip on an HTTP server: its central directory, read without downloading the zip, cached.

Why: a zip's central directory sits at its end and gives every member's name, sizes, CRC-32
and byte offset; S3 serves byte ranges. So ``isic2020`` can list a 23 GB archive for the cost
of its ~3 MB directory (``inspect``), fetch only the images a user chose (subsets,
:mod:`~isic2020.archive.members`), or unpack a whole split straight from the server
(``--direct``, :mod:`~isic2020.archive.direct`).

Invariants, and the failure each is there for:

* **One object, pinned.** A ``HEAD`` gives size and ETag; every ranged GET after it goes
  through the engine's strict ``RangeClient`` (``If-Match``, 206, exactly the
  ``Content-Range`` asked for, retried from the byte where it broke). A changed object raises
  :class:`~isic2020.errors.ObjectChanged`: offsets from one version must never be applied to
  another.
* **Parsed by the one parser** (:mod:`~isic2020.archive.zipformat`): one ranged GET of the tail
  finds the end records, whose claim is bounded before any buffer is sized from it. The rest
  of the directory (bytes already in the tail are not asked for twice) is read in one piece
  per connection (at least :data:`CD_MIN_PIECE`), all at once: a server that caps each stream
  serves a directory in sixteen pieces much faster than in one, and the requests in parallel
  cost one round trip, not one each.
* **Cached, keyed by ETag and size** (``DATA/.isic2020/remote/<archive>.json.gz``): a
  different ETag (or size) is a different object and invalidates it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from itertools import starmap
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from isic2020.archive.decode import disk_error
from isic2020.archive.rules import REMOTE_HINT
from isic2020.archive.zipformat import (
    EOCD,
    TAIL_BYTES,
    BadZip,
    Entry,
    check_spans,
    end_records,
    member_ends,
    parse_central_directory,
    tail_start,
)
from isic2020.errors import (
    DownloadError,
    ObjectChanged,
    VerificationError,
    host_line,
    hosts_failed_hint,
)
from isic2020.store.fsutil import atomic_write
from isic2020.transfer.digests import normalize_etag
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts, make_session
from isic2020.transfer.localfile import is_file_url, range_client, stat_file
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.pool import Piece, RangePool, Span, SpanSink
from isic2020.transfer.ranges import RangeClient, RangesIgnored
from isic2020.transfer.retry import HostFailed, RetryPolicy

if TYPE_CHECKING:
    import requests

__all__ = ["TAIL_BYTES", "RemoteMember", "RemoteZip", "open_remote", "read_central_directory"]

KiB = 1 << 10
#: The directory is read in pieces of at least this much over parallel connections (a
#: piece is a request's headers and a thread's turn: small, next to 64 KiB of body).
CD_MIN_PIECE = 64 * KiB
DEFAULT_CONNECTIONS = 8
CACHE_VERSION = 1
CACHE_BATCH = 1024

#: A central-directory entry of a remote zip (the one parser's entry).
RemoteMember = Entry


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
    # ``members`` once every entry passed the rules (``plan_entries``: names, types, sizes;
    # it is several us an entry: not twice)
    checked: list[RemoteMember] | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return unquote(urlsplit(self.url).path).rsplit("/", 1)[-1] or self.url

    @property
    def cache_key(self) -> str | None:
        return cache_key(self.etag, self.size, self.last_modified)

    def member_end(self) -> dict[int, int]:
        """header_offset -> where the member's bytes end (next local header, or the CD)."""
        return member_ends(self.members, self.cd_offset)


def cache_key(etag: str | None, size: int, last_modified: str | None) -> str | None:
    """What identifies one version of the object; None when nothing does (then no cache)."""
    if etag:
        return f"etag:{etag}:size:{size}"
    if last_modified:
        return f"last-modified:{last_modified}:size:{size}"
    return None


def damaged(archive: str, what: object) -> VerificationError:
    """The user's error for a server's archive that breaks a rule or the format."""
    return VerificationError(f"{archive}: {what}", REMOTE_HINT)


class RangesNotServed(DownloadError):
    """A server that answers a ranged GET with the whole body: members cannot be fetched
    alone from it (the caller says what to do instead: download the whole archive)."""


def host_failed(url: str, exc: HostFailed) -> DownloadError:
    """The user's error for a host that failed after its retry window."""
    if isinstance(exc, RangesIgnored):
        return RangesNotServed(
            f"{url}: {exc}",
            "members of a zip need a server with byte ranges; fetch the whole split instead "
            "(without --sample/--images/--where/--direct)",
        )
    return DownloadError(host_line(url, str(exc)), hosts_failed_hint([str(exc)]))


def probe(
    url: str, *, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None
) -> tuple[int, str | None, str | None]:
    """``(size, etag, last_modified)`` from a HEAD, retried like the engine's probe (a
    ``file://`` URL: its size and modification time)."""
    if is_file_url(url):
        try:
            return stat_file(url)
        except HostFailed as exc:
            raise host_failed(url, exc) from None
    d = Downloader(DownloadOptions(timeouts=timeouts or Timeouts(), retry=retry or RetryPolicy()))
    try:
        remote = d.probe(url)
    except HostFailed as exc:
        raise host_failed(url, exc) from None
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
    if expected and etag != expected and not is_file_url(url):
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
    client = range_client(url, size, etag, last_modified, timeouts=timeouts, retry=retry)
    try:
        remote = _read_cd(client, sess, url, size, connections)
    except HostFailed as exc:
        raise host_failed(url, exc) from None
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
    if size < EOCD.size:
        raise damaged(name, f"{size} bytes is too small to be a zip")
    start = tail_start(size)
    tail = client.read(session, start, size)
    try:
        d = end_records(tail, start, size, lambda at, n: client.read(session, at, at + n))
        cd = bytearray(d.size)  # at most zipformat.MAX_CD_BYTES
        cd_end = d.offset + d.size
        head_end = min(cd_end, start)  # the part the tail does not hold
        if d.offset < head_end:
            pieces = _cd_pieces(d.offset, head_end, connections)
            _read_pieces(client, pieces, memoryview(cd), d.offset)
        if head_end < cd_end:
            cd[max(d.offset, head_end) - d.offset :] = tail[
                max(d.offset, head_end) - start : cd_end - start
            ]
        members = parse_central_directory(cd, d.entries)
        del cd
        check_spans(members, d.offset)
    except BadZip as exc:
        raise damaged(name, exc) from None
    return RemoteZip(url, size, None, members, d.offset, d.size)


def _cd_pieces(start: int, end: int, connections: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into one piece per connection, none under ``CD_MIN_PIECE`` (each
    request costs its headers and a thread; a per-stream cap makes one long request the slow
    way)."""
    n = end - start
    piece = max(CD_MIN_PIECE, -(-n // max(1, connections)))
    return [(a, min(a + piece, end)) for a in range(start, end, piece)]


def _read_pieces(
    client: RangeClient,
    pieces: list[tuple[int, int]],
    out: memoryview,
    base: int,
) -> None:
    """Read every piece into ``out[a - base : b - base]`` at once over the one range pool (a
    connection each). The first error stops them all and is raised here (a damaged directory
    or a changed object is the same error however it was read)."""
    pool = RangePool(client, len(pieces))
    try:
        pool.run([Span(a, b, cuts=()) for a, b in pieces], _Into(out, base))
    except BaseException:  # Ctrl-C while waiting: stop the others before it propagates
        pool.stop()
        raise


class _Into(SpanSink):
    """Copies each block to its place in the directory's buffer."""

    def __init__(self, out: memoryview, base: int) -> None:
        self.out, self.base = out, base

    def data(self, piece: Piece, offset: int, block: memoryview) -> None:
        at = offset - self.base
        self.out[at : at + len(block)] = block


def cache_path(state_dir: Path, archive: str) -> Path:
    """``DATA/.isic2020/remote/<archive>.json.gz``."""
    return Path(state_dir) / "remote" / f"{archive}.json.gz"


#: The cache's columns: ``zipformat.Entry``'s fields (a literal, so the source audit can see
#: what ``attrgetter`` reads; ``load_cached`` takes only a file with exactly these).
_MEMBER_FIELDS = [
    "name", "compressed_size", "file_size", "crc", "header_offset", "method", "flags",
    "external_attr", "create_system",
]


def save_cached(path: Path, remote: RemoteZip, data: bytes | None = None) -> None:
    """Store the directory (gzip'ed, one row per member: ~21 B a member for the real zip);
    ``data``: its :func:`cache_bytes`, made already."""
    try:
        atomic_write(Path(path), cache_bytes(remote) if data is None else data, durable=False)
    except OSError as exc:
        raise disk_error(exc, Path(path)) from None


def cache_bytes(remote: RemoteZip) -> bytes:
    """The cache file's bytes, encoded and compressed ``CACHE_BATCH`` rows at a time (the
    whole document as Python lists plus its JSON text would be many times the directory);
    gzip level 1: nearly the size of level 9 at a fraction of the time."""
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
        if doc["columns"] != _MEMBER_FIELDS:
            return None
        # By position (a third of the time of by name for 33,126 rows); a row of another
        # length raises TypeError: not the cache.
        members = list(starmap(RemoteMember, doc["members"]))
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
        if cached is not None and (not expected_etag or cached.etag == expected_etag
                                   or is_file_url(url)):
            cached.url = url
            return cached
    expected = normalize_etag(expected_etag)
    if expected and etag != expected and not is_file_url(url):
        raise ObjectChanged(f"{url}: ETag is {etag}, expected {expected}")
    remote = _read_directory(url, size, etag, last_modified, session=None, timeouts=timeouts,
                             retry=retry, connections=connections)
    if save and cache is not None and remote.cache_key is not None:
        save_cached(cache, remote)
    return remote
