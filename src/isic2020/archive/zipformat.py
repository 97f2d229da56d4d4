"""The one zip parser: end records, ZIP64, the central directory and local headers.

It reads through a ``read_at(offset, size) -> bytes`` callable and never opens a file or a
connection itself: the landed archive (``local``), the partial file while it downloads
(``streaming``) and the server's object by byte ranges (``remote``) are all read here, so the
three see the same entries and refuse the same archives. Every claim is checked before a
buffer is sized from it; anything wrong is :class:`BadZip` (what is wrong, in words a user can
act on), which each caller turns into a :class:`~isic2020.errors.VerificationError` naming the
archive (exit 1).

The end records decide how much is read for the directory, so they are bounded first:

* **A fixed cap on the directory,** :data:`MAX_CD_BYTES` (16 MiB). The official directories
  are ~2.3-3 MB (33,126 entries of ~75 bytes). The cap is what bounds memory: a directory is
  parsed into one object per entry, and an entry is at least :data:`MIN_ENTRY` bytes. A bound
  from the entry count would not bound memory: the count is a claim too.
* **The entries must fit:** ``entries x 46 <= directory size``.
* **The directory ends where the end records begin** (the ZIP64 end record, or the classic
  one), as every writer puts them; an offset pointing past the file is refused.
* **The ZIP64 end record sits just before its locator** (where ``zipfile`` and ``unzip`` read
  it): a locator pointing at a harmless record elsewhere must not hide the one other tools use.

Then the directory is read in pieces of at most :data:`PIECE` bytes, parsed (ZIP64 extra
fields included; counts and lengths must add up exactly: a half-parsed directory would silently
lose images), and every entry's data must lie before the directory.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from isic2020.archive.rules import image_file_name, unsafe_reason
from isic2020.report import human_size

MiB = 1 << 20
#: Tail that holds the end records of any zip: the longest comment (65535) + EOCD (22) +
#: ZIP64 locator (20) + ZIP64 EOCD (56).
TAIL_BYTES = 65535 + 22 + 20 + 56
#: The largest central directory any reader accepts (see the module docstring for why).
MAX_CD_BYTES = 16 * MiB
#: The fixed part of a central directory entry: no entry is shorter.
MIN_ENTRY = 46

EOCD = struct.Struct("<4s4H2LH")
EOCD_SIG = b"PK\x05\x06"
LOC64 = struct.Struct("<4sLQL")
LOC64_SIG = b"PK\x06\x07"
EOCD64 = struct.Struct("<4sQ2H2L4Q")
EOCD64_SIG = b"PK\x06\x06"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF

#: Local and central header layouts (as in the zip specification).
LFH = struct.Struct("<4s2B4HL2L2H")
LFH_SIG = b"PK\x03\x04"
CDH = struct.Struct("<4s4B4HL2L5H2L")
CDH_SIG = b"PK\x01\x02"
#: The directory is read in pieces of at most this many bytes.
PIECE = 1 * MiB
STORED, DEFLATED = 0, 8

#: ``read_at(offset, size)`` -> ``size`` bytes of the archive from ``offset`` (fewer at its end).
ReadAt = Callable[[int, int], bytes]


class BadZip(ValueError):
    """The archive's structure is wrong (the text says what, for the user)."""


class BadEndRecords(BadZip):
    """The end records are missing, malformed or claim a directory no reader should load."""


@dataclass(slots=True)
class Entry:
    """One central-directory entry: what is needed to find, check and place a member.

    Slotted: the real training zip has 33,126 of them, alive for a whole fetch."""

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

    def unsafe_reason(self) -> str | None:
        """Why this entry must never be written anywhere (:func:`rules.unsafe_reason`)."""
        return unsafe_reason(self.name, self.external_attr, self.create_system)

    def image_file_name(self, ext: str | None = None) -> str | None:
        """``ISIC_xxxxxxx.jpg`` for an image entry (wherever it stands), else None."""
        return None if self.is_dir else image_file_name(self.name, ext)


@dataclass(frozen=True)
class Directory:
    """Where the central directory is, as the end records say (and as checked here)."""

    offset: int
    size: int
    entries: int


def end_records(tail: bytes, tail_start: int, size: int, read_at: ReadAt) -> Directory:
    """The checked directory claim of a ``size``-byte zip whose last bytes, from
    ``tail_start``, are ``tail``. ``read_at`` fetches a ZIP64 end record outside the tail.

    Raises :class:`BadEndRecords` for anything the readers must not act on (see the module
    docstring): nothing is allocated from a claim before it passed.
    """
    at = len(tail)
    while True:
        at = tail.rfind(EOCD_SIG, 0, at)
        if at < 0:
            raise BadEndRecords("no end-of-central-directory record: not a zip file")
        if at + EOCD.size > len(tail):
            continue
        (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len) = EOCD.unpack_from(
            tail, at
        )
        if at + EOCD.size + comment_len == len(tail):
            break  # a signature inside the comment would not end exactly at the file's end
    if disk not in (0, _U16) or cd_disk not in (0, _U16) or n_disk != n_total:
        raise BadEndRecords("multi-disk (split) zips are not supported")
    records_at = tail_start + at  # where the directory must end
    loc = at - LOC64.size
    has_locator = loc >= 0 and tail[loc : loc + 4] == LOC64_SIG
    if not has_locator and (n_total == _U16 or _U32 in (cd_size, cd_offset)):
        raise BadEndRecords("ZIP64 fields without a ZIP64 locator")
    if has_locator:  # its values replace the classic ones, as in zipfile (some writers
        # add ZIP64 records to small archives too)
        _, _, eocd64_offset, n_disks = LOC64.unpack_from(tail, loc)
        if n_disks > 1:
            raise BadEndRecords("multi-disk (split) zips are not supported")
        if eocd64_offset + EOCD64.size != tail_start + loc:
            raise BadEndRecords(
                f"the ZIP64 end record is not where its locator says ({eocd64_offset})"
            )
        if eocd64_offset >= tail_start:
            rec = tail[eocd64_offset - tail_start : eocd64_offset - tail_start + EOCD64.size]
        else:
            rec = read_at(eocd64_offset, EOCD64.size)
        if len(rec) != EOCD64.size:
            raise BadEndRecords("the ZIP64 end record is truncated")
        (sig, _, _, _, _, _, n_disk64, n_total, cd_size, cd_offset) = EOCD64.unpack(rec)
        if sig != EOCD64_SIG:
            raise BadEndRecords("bad ZIP64 end-of-central-directory signature")
        if n_disk64 != n_total:
            raise BadEndRecords("multi-disk (split) zips are not supported")
        records_at = eocd64_offset
    claim = f"a central directory of {cd_size} bytes at {cd_offset} with {n_total} entries"
    if cd_size > MAX_CD_BYTES:
        raise BadEndRecords(
            f"the end records claim {claim}, over the {human_size(MAX_CD_BYTES)} any archive "
            "of this dataset needs (the official ones are ~3 MB)"
        )
    if n_total * MIN_ENTRY > cd_size:
        raise BadEndRecords(f"the end records claim {claim}: that many entries cannot fit")
    if cd_offset + cd_size != records_at or records_at > size:
        raise BadEndRecords(
            f"the end records claim {claim}, which does not end where the end records begin "
            f"({records_at} of {size} bytes)"
        )
    return Directory(cd_offset, cd_size, n_total)


def local_end_records(fd: int) -> Directory:
    """:func:`end_records` of the zip open at ``fd`` (read with ``pread``: no file position)."""
    size = os.fstat(fd).st_size
    if size < EOCD.size:
        raise BadEndRecords(f"{size} bytes is too small to be a zip")
    start = max(0, size - TAIL_BYTES)
    tail = os.pread(fd, size - start, start)
    return end_records(tail, start, size, lambda at, n: os.pread(fd, n, at))


def tail_start(size: int) -> int:
    """Where the tail that holds any zip's end records starts."""
    return max(0, size - TAIL_BYTES)


def read_directory(read_at: ReadAt, size: int) -> tuple[Directory, list[Entry]]:
    """The checked end records and every entry of the ``size``-byte zip behind ``read_at``:
    the tail, then the directory in pieces of at most :data:`PIECE` (never more than
    :data:`MAX_CD_BYTES` in all)."""
    if size < EOCD.size:
        raise BadEndRecords(f"{size} bytes is too small to be a zip")
    start = tail_start(size)
    tail = read_at(start, size - start)
    d = end_records(tail, start, size, read_at)
    cd = bytearray(d.size)
    for a in range(d.offset, d.offset + d.size, PIECE):
        n = min(PIECE, d.offset + d.size - a)
        piece = tail[a - start : a - start + n] if a >= start else read_at(a, n)
        if len(piece) != n:
            raise BadZip(f"the central directory is truncated at byte {a + len(piece)}")
        cd[a - d.offset : a - d.offset + n] = piece
    entries = parse_central_directory(cd, d.entries)
    check_spans(entries, d.offset)
    return d, entries


def check_spans(entries: list[Entry], cd_offset: int) -> None:
    """Every entry's local header and data lie before the directory."""
    for e in entries:
        if e.header_offset < 0 or e.header_offset + LFH.size + e.compressed_size > cd_offset:
            raise BadZip(
                f"entry {e.name!r} points outside the archive's data (offset "
                f"{e.header_offset}, {e.compressed_size} bytes; the directory starts at "
                f"{cd_offset})"
            )


def member_ends(entries: list[Entry], cd_offset: int) -> dict[int, int]:
    """header_offset -> where the member's bytes end (the next local header, or the CD)."""
    offsets = sorted({e.header_offset for e in entries})
    return dict(zip(offsets, [*offsets[1:], cd_offset]))


def parse_central_directory(cd: bytes | bytearray, count: int) -> list[Entry]:
    """Every entry of a central directory (``count`` of them, filling ``cd`` exactly)."""
    entries: list[Entry] = []
    append = entries.append
    unpack = CDH.unpack_from
    pos = 0
    n = len(cd)
    while pos < n and len(entries) < count:
        if pos + CDH.size > n:
            raise BadZip(f"central directory entry {len(entries)} is truncated")
        (
            sig, _create_version, create_system, _extract_version, _reserved, flags, method,
            _t, _d, crc, csize, usize, name_len, extra_len, comment_len, disk, _internal,
            external, offset,
        ) = unpack(cd, pos)
        if sig != CDH_SIG:
            raise BadZip(f"bad central directory signature at entry {len(entries)}")
        p = pos + CDH.size
        pos = p + name_len + extra_len + comment_len
        if pos > n:
            raise BadZip(f"central directory entry {len(entries)} is truncated")
        name = decode_name(cd[p : p + name_len], flags)
        if _U32 in (usize, csize, offset) or disk == _U16:
            extra = cd[p + name_len : p + name_len + extra_len]
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset, name)
        append(Entry(name, csize, usize, crc, offset, method, flags, external, create_system))
    if len(entries) != count or pos != n:
        raise BadZip(
            f"the central directory holds {len(entries)} entries in {pos} bytes, the end "
            f"record says {count} entries in {n} bytes"
        )
    return entries


def decode_name(raw: bytes | bytearray, flags: int) -> str:
    """UTF-8 when the entry says so, else cp437 (of which ASCII, the usual case, is a part:
    decoded by the fast ASCII codec)."""
    if flags & 0x800:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadZip(f"entry name {bytes(raw)!r} is not the UTF-8 it claims") from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return raw.decode("cp437")


def _zip64_extra(
    extra: bytes | bytearray, usize: int, csize: int, offset: int, name: str
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
            raise BadZip(f"entry {name!r} has a truncated ZIP64 extra field") from None
        return usize, csize, offset
    if _U32 in (usize, csize, offset):
        raise BadZip(f"entry {name!r} needs a ZIP64 extra field and has none")
    return usize, csize, offset


def local_header_size(buf: bytes | bytearray | memoryview, at: int, e: Entry) -> int:
    """The full length of ``e``'s local header at ``buf[at:]`` (at least ``LFH.size`` bytes
    there): its name and extra lengths can differ from the directory's (ZIP64 extras). Its
    signature and method must be the directory's."""
    sig, _, _, _, method, _, _, _, _, _, name_len, extra_len = LFH.unpack_from(buf, at)
    if sig != LFH_SIG:
        raise BadZip("no local file header where the central directory says")
    if method != e.method:
        raise BadZip(f"local header says method {method}, directory {e.method}")
    return LFH.size + name_len + extra_len


def check_local_name(buf: bytes | bytearray | memoryview, at: int, e: Entry) -> None:
    """The local header at ``buf[at:]`` (with its name) names ``e`` as the directory does."""
    h = LFH.unpack_from(buf, at)
    flags, name_len = h[3], h[10]
    raw = bytes(buf[at + LFH.size : at + LFH.size + name_len])
    local = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if local != e.name:
        raise BadZip(f"local header names it {local!r}")
