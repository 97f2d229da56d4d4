"""Digests, and what an S3 ETag proves.

S3's ETag for a single-part upload is the hex MD5 of the object. For a multipart upload it is
``md5(concat(md5(part_i))) + "-" + N``: checkable only when the part size is known, which is why
the engine hashes each part as its bytes arrive (``hashers``).
ETags from other servers (nginx's ``"mtime-size"``, weak ETags) prove nothing about content;
we say so ("unverifiable") instead of pretending.

S3's own limits decide what counts as a multipart ETag: at most :data:`MAX_PARTS` parts, and
parts of at least :data:`MIN_PART` bytes except the last. An ETag claiming more parts is no S3
ETag (a server could otherwise make us keep one digest per byte: 3.9 GB of RAM for a 23 MB file).
Part sizes the server states below the minimum are still accepted (S3-compatible test servers
lower it, and the part count alone bounds memory); part sizes we *derive* start at the minimum.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

BLOCK = 1 << 20
MiB = 1 << 20
#: S3: "from 1 to 10,000" parts per multipart upload.
MAX_PARTS = 10_000
#: S3: every part but the last is at least 5 MiB.
MIN_PART = 5 * MiB
#: Part sizes seen in the wild (aws cli/boto3 8 MiB, s3cmd 15 MiB, the multipart minimum 5 MiB).
COMMON_PART_SIZES = tuple(m * MiB for m in (8, 16, 5, 15, 32, 64, 100, 128, 10, 50, 256, 512))
#: Part sizes tried at most when the server does not state it (each costs one MD5 pass).
MAX_CANDIDATES = 8
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_MULTI_RE = re.compile(r"^([0-9a-f]{32})-([0-9]+)$")


def normalize_etag(etag: str | None) -> str | None:
    """Strip quotes; weak ETags (``W/``) are kept as-is (they never verify content)."""
    if etag is None:
        return None
    etag = etag.strip()
    return etag.strip('"') if not etag.startswith("W/") else etag


def etag_kind(etag: str | None) -> str:
    """``md5``, ``multipart`` or ``opaque`` (an ETag that is no content hash we can check)."""
    e = normalize_etag(etag)
    if not e:
        return "opaque"
    if _MD5_RE.match(e):
        return "md5"
    m = _MULTI_RE.match(e)
    if m and 1 <= int(m.group(2)) <= MAX_PARTS:
        return "multipart"
    return "opaque"


def is_weak(etag: str | None) -> bool:
    return etag is not None and etag.strip().startswith("W/")


def conditional_headers(
    etag: str | None, last_modified: str | None, received: str | None = None
) -> dict[str, str]:
    """The precondition that pins every ranged GET to one version of the object.

    ``etag`` is the normalized ETag, ``received`` the header exactly as the server sent it
    (None: unknown, a quoted strong ETag is assumed). Validators go back as received: an
    unquoted ETag is not re-quoted. ``If-Match`` only works with a strong ETag (RFC 9110
    13.1.1: a weak one never matches, so every range would get 412); with a weak ETag,
    ``If-Unmodified-Since`` carries the pin when the server sent a ``Last-Modified``, else none.
    """
    if etag and not is_weak(etag):
        return {"If-Match": received.strip() if received else f'"{etag}"'}
    if last_modified:
        return {"If-Unmodified-Since": last_modified}
    return {}


def pin_note(etag: str | None, last_modified: str | None) -> str:
    """How ranges were pinned, for ``etag_check`` when the ETag is weak (else "")."""
    if not is_weak(etag):
        return ""
    if last_modified:
        return "weak ETag: ranges pinned with If-Unmodified-Since (Last-Modified)"
    return "weak ETag and no Last-Modified: ranges not pinned to one version"


def multipart_count(etag: str) -> int:
    m = _MULTI_RE.match(normalize_etag(etag) or "")
    return int(m.group(2)) if m else 0


def multipart_etag(part_md5s: Iterable[bytes]) -> str:
    digests = list(part_md5s)
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Stream a file once through several hashes (hashlib releases the GIL on big blocks)."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while True:
            block = fh.read(BLOCK)
            if not block:
                break
            for h in hashers.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashers.items()}


class MultipartHasher:
    """S3's multipart ETag of a byte stream cut into ``part_size`` parts, fed in any blocks.

    Copyable (:meth:`copy`), so a search over alternative bytes can branch from a shared
    prefix. Memory: 16 bytes per finished part (at most :data:`MAX_PARTS` for an S3 ETag).
    """

    def __init__(self, part_size: int) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        self.part_size = part_size
        self._digests = bytearray()
        self._parts = 0
        self._part = hashlib.md5()
        self._left = part_size
        self._fed = False

    def update(self, block: bytes | memoryview) -> None:
        view = memoryview(block)
        while view:
            take = min(self._left, len(view))
            self._part.update(view[:take])
            self._fed = True
            self._left -= take
            view = view[take:]
            if self._left == 0:
                self._digests += self._part.digest()
                self._parts += 1
                self._part = hashlib.md5()
                self._left = self.part_size
                self._fed = False

    def copy(self) -> MultipartHasher:
        other = MultipartHasher.__new__(MultipartHasher)
        other.part_size = self.part_size
        other._digests = bytearray(self._digests)
        other._parts = self._parts
        other._part = self._part.copy()
        other._left = self._left
        other._fed = self._fed
        return other

    def hexdigest(self) -> str:
        digests, parts = bytes(self._digests), self._parts
        if self._fed or parts == 0:
            digests += self._part.digest()
            parts += 1
        return f"{hashlib.md5(digests).hexdigest()}-{parts}"


def part_size_candidates(size: int, parts: int, first: int | None = None) -> list[int]:
    """Part sizes that cut ``size`` bytes into exactly ``parts`` parts, most likely first.

    For a server that does not answer ``HEAD ?partNumber=1``: the usual sizes of upload tools,
    then every MiB multiple from the S3 minimum that fits (for a big file at most one or two:
    ``size/parts <= P < size/(parts-1)``), at most :data:`MAX_CANDIDATES`. A candidate only
    counts once it reproduces the ETag: that proves the bytes, whoever guessed the size.
    """
    if parts < 1 or parts > MAX_PARTS or size < 0:
        return []
    if parts == 1:
        return [max(size, 1)]

    def fits(p: int) -> bool:
        return p > 0 and -(-size // p) == parts

    out: list[int] = []
    if first is not None and fits(first):
        out.append(first)
    out += [p for p in COMMON_PART_SIZES if fits(p) and p not in out]
    lo = max(MIN_PART, -(-size // parts))
    p = -(-lo // MiB) * MiB
    while len(out) < MAX_CANDIDATES and p * (parts - 1) < size:
        if fits(p) and p not in out:
            out.append(p)
        p += MiB
    return out[:MAX_CANDIDATES]


def matching_part_size(path: Path, etag: str, candidates: Iterable[int]) -> int | None:
    """The first candidate part size whose multipart ETag of ``path`` is ``etag`` (one pass)."""
    hashers = [MultipartHasher(p) for p in candidates]
    if not hashers:
        return None
    with open(path, "rb") as fh:
        while True:
            block = fh.read(4 * BLOCK)
            if not block:
                break
            for h in hashers:
                h.update(block)
    want = normalize_etag(etag)
    return next((h.part_size for h in hashers if h.hexdigest() == want), None)
