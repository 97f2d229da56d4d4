"""Repair a download whose content hash does not match, from a second copy, in the same run.

Why: one bit flipped in transit (a bad NIC, a middlebox, a flaky mirror) makes a 23 GB archive
fail its MD5. Throwing it away and downloading it again costs the whole file again and may meet
another flip. Instead a second copy is fetched into a second partial file, the two copies are
compared chunk by chunk (one 16-byte digest per :data:`CHUNK` bytes: the copies stay on disk, so
memory is flat whatever the size), and the combinations of the chunks that differ are tried: the
combination whose content hash matches the ETag or the manifest's sha256 is the right file,
because the hash proves it, not a vote. A single flip costs exactly one more pass (2x the file
served), with or without ``?partNumber=``.

The search walks the differing chunks in file order and branches at each (this copy's chunk or
the other's), sharing the hash state of the common prefix (``hashlib`` states copy), so one
differing chunk costs about two hash passes over the file; it is bounded by
:data:`MAX_DIFFERING` chunks and :data:`HASH_BUDGET` passes. When no combination matches (both
copies identical: the server sends bytes its own hash disowns; or damage in too many places)
:class:`RepairFailed` says why and the caller fails the file: nothing reaches the final path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.transfer.digests import MultipartHasher, normalize_etag

#: Bytes per compared chunk: small enough that two damaged copies rarely share a chunk,
#: large enough that a 23 GB file has only ~90k digests (1.4 MB per copy).
CHUNK = 256 * 1024
#: Differing chunks at most (2**n combinations); more is not transit noise but a bad source.
MAX_DIFFERING = 8
#: At most this many passes' worth of bytes are hashed by the search.
HASH_BUDGET = 12
_READ = 4 << 20


class RepairFailed(Exception):
    """No combination of the two copies reproduces the content hash; the message says why."""


@dataclass(frozen=True)
class ContentCheck:
    """The content hashes the bytes must reproduce (every one given), as hex digests.

    ``multipart``: an S3 multipart ETag, reproduced by any one of ``part_sizes``.
    """

    sha256: str | None = None
    md5: str | None = None
    multipart: str | None = None
    part_sizes: tuple[int, ...] = ()

    @property
    def usable(self) -> bool:
        return bool(self.sha256 or self.md5 or (self.multipart and self.part_sizes))

    def describe(self) -> str:
        what = []
        if self.sha256:
            what.append("the manifest's sha256")
        if self.md5:
            what.append("the MD5 ETag")
        if self.multipart:
            what.append("the multipart ETag")
        return " and ".join(what) or "no content hash"

    def hasher(self) -> _Hasher:
        return _Hasher(self)


class _Hasher:
    """Every hash a :class:`ContentCheck` needs, fed together, copyable for the search."""

    def __init__(self, check: ContentCheck | None) -> None:
        self.check = check
        if check is None:
            return
        self.sha256 = hashlib.sha256() if check.sha256 else None
        self.md5 = hashlib.md5() if check.md5 else None
        self.parts = [MultipartHasher(p) for p in check.part_sizes] if check.multipart else []

    def update(self, block: bytes) -> None:
        if self.sha256 is not None:
            self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)
        for h in self.parts:
            h.update(block)

    def copy(self) -> _Hasher:
        other = _Hasher(None)
        other.check = self.check
        other.sha256 = self.sha256.copy() if self.sha256 is not None else None
        other.md5 = self.md5.copy() if self.md5 is not None else None
        other.parts = [h.copy() for h in self.parts]
        return other

    def ok(self) -> bool:
        c = self.check
        assert c is not None
        if self.sha256 is not None and self.sha256.hexdigest() != c.sha256:
            return False
        if self.md5 is not None and self.md5.hexdigest() != normalize_etag(c.md5):
            return False
        if c.multipart:
            want = normalize_etag(c.multipart)
            return any(h.hexdigest() == want for h in self.parts)
        return True


@dataclass
class RepairResult:
    """What the repair did: ``replaced`` byte ranges now come from the second copy."""

    chunks: int
    differing: int
    combinations: int
    replaced: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "differing": self.differing,
                "combinations": self.combinations, "replaced": self.replaced}


def chunk_digests(fd: int, size: int, chunk: int = CHUNK) -> bytearray:
    """One 16-byte MD5 per ``chunk`` bytes of the open file (the last chunk may be short)."""
    out = bytearray()
    for start in range(0, size, chunk):
        h = hashlib.md5()
        _feed(h, fd, start, min(size, start + chunk))
        out += h.digest()
    return out


def _feed(h: Any, fd: int, start: int, end: int) -> int:
    pos = start
    while pos < end:
        block = os.pread(fd, min(_READ, end - pos), pos)
        if not block:
            raise OSError(f"short read at byte {pos}")
        h.update(block)
        pos += len(block)
    return end - start


def repair(primary: Path, second: Path, check: ContentCheck, *, chunk: int = CHUNK,
           max_differing: int = MAX_DIFFERING) -> RepairResult:
    """Make ``primary`` reproduce ``check`` with chunks of ``second`` (same size), in place.

    On success the chosen chunks of ``second`` are written into ``primary`` and fsynced (the
    caller verifies the whole file once more before it lands); ``second`` is left for the
    caller to delete. Raises :class:`RepairFailed` when no combination matches.
    """
    if not check.usable:
        raise RepairFailed("there is no content hash to repair against")
    size = primary.stat().st_size
    if second.stat().st_size != size:
        raise RepairFailed("the second copy has another size")
    fa = os.open(primary, os.O_RDWR)
    try:
        fb = os.open(second, os.O_RDONLY)
        try:
            return _repair(fa, fb, size, check, chunk, max_differing)
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _repair(fa: int, fb: int, size: int, check: ContentCheck, chunk: int,
            max_differing: int) -> RepairResult:
    da, db = chunk_digests(fa, size, chunk), chunk_digests(fb, size, chunk)
    n = len(da) // 16
    diff = [i for i in range(n) if da[16 * i:16 * i + 16] != db[16 * i:16 * i + 16]]
    result = RepairResult(chunks=n, differing=len(diff), combinations=0)
    if not diff:
        raise RepairFailed(
            f"a second copy is identical, and neither matches {check.describe()}: the source "
            "serves these bytes every time"
        )
    if len(diff) > max_differing:
        raise RepairFailed(f"the two copies differ in {len(diff)} places (at most "
                           f"{max_differing} can be told apart)")

    def span(i: int) -> tuple[int, int]:
        return i * chunk, min(size, (i + 1) * chunk)

    def gap_after(j: int) -> tuple[int, int]:
        """Bytes after differing chunk ``diff[j]`` up to the next one (or the end)."""
        start = span(diff[j])[1]
        end = span(diff[j + 1])[0] if j + 1 < len(diff) else size
        return start, end

    budget = HASH_BUDGET * max(size, 1)
    hashed = 0
    root = check.hasher()
    hashed += _feed(root, fa, 0, span(diff[0])[0])
    # Depth-first: (next differing index, hash state before it, choices so far: True = second).
    stack: list[tuple[int, _Hasher, tuple[bool, ...]]] = [(0, root, ())]
    while stack:
        j, state, choice = stack.pop()
        if j == len(diff):
            result.combinations += 1
            if state.ok():
                taken = [diff[k] for k, from_b in enumerate(choice) if from_b]
                _apply(fa, fb, [span(i) for i in taken])
                result.replaced = [list(span(i)) for i in taken]
                return result
            continue
        if hashed > budget:
            raise RepairFailed(f"no combination of the {len(diff)} differing places matched "
                               "within the hashing budget")
        for from_b in (False, True):  # pushed so that the second copy's chunk is tried first
            h = state.copy()
            a, b = span(diff[j])
            hashed += _feed(h, fb if from_b else fa, a, b)
            g0, g1 = gap_after(j)
            hashed += _feed(h, fa, g0, g1)
            stack.append((j + 1, h, (*choice, from_b)))
    raise RepairFailed(
        f"no combination of the two copies ({len(diff)} differing places) matches "
        f"{check.describe()}"
    )


def _apply(fa: int, fb: int, spans: list[tuple[int, int]]) -> None:
    for a, b in spans:
        pos = a
        while pos < b:
            block = os.pread(fb, min(_READ, b - pos), pos)
            if not block:
                raise OSError(f"short read at byte {pos}")
            view = memoryview(block)
            while view:
                w = os.pwrite(fa, view, pos)
                view = view[w:]
                pos += w
    os.fsync(fa)
