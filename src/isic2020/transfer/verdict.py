"""What proves a downloaded file: the verdict that becomes ``etag_check`` in the records.

A verdict is what proved the bytes (``md5``, ``multipart``, ``sha256``, ...), ``unverifiable:
<why>`` when nothing could (the server offers no content hash and the manifest no sha256), or
``FAILED: <why>`` (then ``repair`` may help, with :func:`content_check`'s hashes to reproduce).
"""

from __future__ import annotations

from pathlib import Path

from isic2020.transfer.digests import etag_kind, matching_part_size, pin_note
from isic2020.transfer.model import RemoteObject
from isic2020.transfer.repair import ContentCheck

FAILED = "FAILED: "


def failed(verdict: str) -> bool:
    return verdict.startswith(FAILED)


def reason(verdict: str) -> str:
    """A failed verdict's reason, without the ``FAILED:`` prefix."""
    return verdict[len(FAILED):]


def etag_check(
    remote: RemoteObject,
    size: int,
    sha: str,
    md5: str | None,
    mp: str | None,
    expected_sha256: str | None,
    path: Path | None = None,
) -> str:
    """The verdict on a file of ``size`` bytes with these digests.

    A multipart ETag whose part size the server does not state is checked with the part
    sizes that fit (``remote.part_sizes``; the others than the first cost a pass over
    ``path``): one that reproduces the ETag proves the bytes (and becomes
    ``remote.part_size``), none is a mismatch.
    """
    if remote.size is not None and size != remote.size:
        return f"{FAILED}size {size} differs from the server's {remote.size}"
    if expected_sha256 and sha != expected_sha256:
        return f"{FAILED}sha256 {sha} differs from the manifest's {expected_sha256}"
    kind = etag_kind(remote.etag)
    if kind == "md5":
        if md5 != remote.etag:
            return f"{FAILED}MD5 {md5} differs from the ETag {remote.etag}"
        return "md5"
    if kind == "multipart":
        return _multipart_check(remote, mp, expected_sha256, path)
    note = pin_note(remote.etag, remote.last_modified)
    note = f"; {note}" if note else ""
    if remote.etag and expected_sha256:
        return (
            "unverifiable: the server's ETag is not a content hash; "
            f"sha256 matches the manifest{note}"
        )
    if expected_sha256:
        return "sha256"
    return f"unverifiable: the server's ETag is not a content hash{note}"


def _multipart_check(
    remote: RemoteObject, mp: str | None, expected_sha256: str | None, path: Path | None
) -> str:
    assert remote.etag is not None
    if remote.part_size_source == "server":
        if mp == remote.etag:
            return "multipart"
        return f"{FAILED}multipart MD5 {mp} differs from the ETag {remote.etag}"
    found = remote.part_size if mp == remote.etag else None
    rest = [p for p in remote.part_sizes if p != remote.part_size]
    if found is None and rest and path is not None:
        found = matching_part_size(path, remote.etag, rest)
    if found is not None:
        remote.part_size = found
        return f"multipart (part size {found} bytes, found from the ETag)"
    if expected_sha256:
        return ("sha256 (the multipart ETag is reproduced by no part size tried; "
                "sha256 matches the manifest)")
    tried = ", ".join(str(p) for p in remote.part_sizes) or "none fits"
    return (f"{FAILED}the multipart ETag {remote.etag} is reproduced by no part size "
            f"(tried: {tried})")


def content_check(remote: RemoteObject, expected_sha256: str | None) -> ContentCheck:
    """The content hashes a repair must reproduce: every one that proves the bytes. A
    multipart ETag whose part size the server did not state counts only without a sha256
    (then any part size that fits may reproduce it)."""
    kind = etag_kind(remote.etag)
    multipart, sizes = None, ()
    if kind == "multipart" and remote.part_size_source == "server" and remote.part_size:
        multipart, sizes = remote.etag, (remote.part_size,)
    elif kind == "multipart" and not expected_sha256:
        multipart, sizes = remote.etag, remote.part_sizes
    return ContentCheck(
        sha256=expected_sha256,
        md5=remote.etag if kind == "md5" else None,
        multipart=multipart,
        part_sizes=tuple(sizes),
    )
