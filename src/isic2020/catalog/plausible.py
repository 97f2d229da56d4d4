"""Content that cannot be what the manifest describes is never recorded as verified.

Why: a hash proves the bytes are the ones the server meant to send, not that the server sent
the dataset. A captive portal (hotel, airport, corporate proxy) answers every URL with 200 and a
few hundred bytes of HTML, sometimes with an MD5 ETag of its own that the HTML then matches;
a misconfigured proxy gzips the body. Both verify against their own ETag. The cheap checks here
(a stat and a few KiB read, so a re-run still trusts its records in well under a second) catch
them before the bytes land and when a record from an older run is trusted again. A file whose
sha256 the manifest pins needs none of them: that hash already says what the file is.

* no ``Content-Encoding`` other than ``identity`` (the stored bytes must be the object's);
* the size: exact when the manifest pins it, else within a factor :data:`SIZE_FACTOR` of the
  published size (``"23 GB"``, ``"2 MB"``: approximate, but never orders of magnitude off);
* an archive is a zip: a local-file header at the start and an end-of-central-directory
  record in the last 64 KiB;
* a CSV parses, and its header is one of the documented ones for its role (``metadata``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from isic2020.catalog.manifest import FileEntry, parse_size
from isic2020.catalog.metadata import SCHEMAS

#: A file more than this many times smaller or larger than its published size is not it.
SIZE_FACTOR = 10
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"
_ZIP_TAIL = 22 + 65535  # the end record plus the longest comment
_CSV_HEAD = 64 * 1024


def encoding_problem(content_encoding: str | None) -> str | None:
    """Why a response with this ``Content-Encoding`` cannot be stored, or None."""
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return None
    return (f"the server sent the file with Content-Encoding {enc} (a compressing proxy?), "
            "not the file's own bytes")


def content_problem(entry: FileEntry, path: Path) -> str | None:
    """Why the file at ``path`` cannot be ``entry``, or None when it is plausible."""
    if entry.sha256:
        return None  # the manifest's sha256 is checked instead, and proves more
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read {path.name}: {exc.strerror or exc}"
    published = parse_size(entry.published_size)
    if entry.size is not None:
        if size != entry.size:
            return f"has {size} bytes but the manifest says {entry.size}"
    elif published and (size * SIZE_FACTOR < published or size > published * SIZE_FACTOR):
        return (f"is {size} bytes, far from its published size {entry.published_size} "
                "(an error or login page?)")
    try:
        if entry.is_archive:
            return _zip_problem(path, size)
        if entry.role in SCHEMAS:
            return _csv_problem(path, SCHEMAS[entry.role])
    except OSError as exc:
        return f"cannot read {path.name}: {exc.strerror or exc}"
    return None


def _zip_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(0, size - _ZIP_TAIL))
        tail = fh.read(_ZIP_TAIL)
    if head not in (_ZIP_LOCAL, _ZIP_END) or _ZIP_END not in tail:
        what = _describe_start(head + tail[:60] if size <= _ZIP_TAIL else head)
        return f"is not a zip archive ({what})"
    return None


def _csv_problem(path: Path, allowed: list[list[str]]) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(_CSV_HEAD)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the block
            return "is not a UTF-8 CSV"
        text = head[: exc.start].decode("utf-8-sig")
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        header = []
    cols = [c.strip() for c in header]
    if cols not in allowed:
        shown = ",".join(cols)[:80] or _describe_start(head)
        return ("is not the expected CSV (its first line is " + repr(shown) + "; expected "
                + " or ".join(",".join(a) for a in allowed) + ")")
    return None


def _describe_start(head: bytes) -> str:
    text = head[:40].decode("latin-1")
    if text.lstrip().lower().startswith(("<!doctype html", "<html", "<?xml", "<")):
        return "it starts like an HTML/XML page"
    if head[:2] == b"\x1f\x8b":
        return "it is gzip data"
    return f"it starts with {head[:8]!r}"


def is_plausible(entry: FileEntry, path: Path) -> bool:
    return content_problem(entry, path) is None

