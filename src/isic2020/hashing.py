"""Digests, and what an S3 ETag proves.

S3's ETag for a single-part upload is the hex MD5 of the object. For a multipart upload it is
``md5(concat(md5(part_i))) + "-" + N``: checkable only when the part size is known, which is why
the download engine aligns its ranges to parts and hashes each part as its bytes arrive.
ETags from other servers (nginx's ``"mtime-size"``, weak ETags) prove nothing about content;
we say so ("unverifiable") instead of pretending.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

BLOCK = 1 << 20
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
    if _MULTI_RE.match(e):
        return "multipart"
    return "opaque"


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
