"""A zip's end records: where its central directory is, how big, how many entries, and the
bounds those numbers must meet before anything is allocated or read for the directory.

Why one module: three readers find a directory from the end records (``remotezip`` by byte
ranges, ``streaming`` from the partial file while it downloads, ``extract`` through
``zipfile`` from the landed archive), and each sizes a buffer from them. The numbers come from
whoever made the file: a mirror's archive that claims a 3 GB directory made every reader
allocate 3 GB up front (and 1e12 ended in ``MemoryError``), one whose directory offset pointed
past the file made ``zipfile`` hand out negative member offsets, reported as a disk error.
So every reader checks the claim here first, and they all refuse the same archives:

* **A fixed cap on the directory,** :data:`MAX_CD_BYTES` (16 MiB). The official directories
  are ~2.3-3 MB (33,126 entries of ~75 bytes); 16 MiB is five times that. The cap is what
  bounds memory, not only the buffer: a directory is parsed into one object per entry, and
  an entry is at least :data:`MIN_ENTRY` bytes, so 16 MiB holds at most ~365,000 of them,
  measured at ~150 MB for ``zipfile`` and ~120 MB for ``remotezip`` (with the buffer). A
  bound from the entry count (``entries x (46 + longest name)``) would not bound memory: the
  count is a claim too, and the name, extra and comment lengths each reach 65,535.
* **The entries must fit:** ``entries x 46 <= directory size``.
* **The directory ends where the end records begin** (the ZIP64 end record, or the classic
  one). Every writer puts them back to back; ``zipfile`` *assumes* it (it derives the
  directory's start from the end record's position and shifts every member offset by the
  difference), ``remotezip`` uses the stated offset. Requiring both to agree is what makes the
  three readers see the same members, and refuses an offset that points past the file.
* **The ZIP64 end record sits just before its locator,** which is where ``zipfile`` reads it
  (whatever the locator says): a locator pointing at a harmless record elsewhere must not
  hide the one ``zipfile`` would use.

A refusal is :class:`BadEndRecords` (what is wrong, in words a user can act on); each caller
turns it into its own :class:`~isic2020.errors.VerificationError` naming the archive (exit 1).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

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

#: ``read(start, end)`` -> the bytes ``[start, end)`` of the archive.
Reader = Callable[[int, int], bytes]


class BadEndRecords(ValueError):
    """The end records are missing, malformed or claim a directory no reader should load."""


@dataclass(frozen=True)
class Directory:
    """Where the central directory is, as the end records say (and as checked here)."""

    offset: int
    size: int
    entries: int


def end_records(tail: bytes, tail_start: int, size: int, read: Reader) -> Directory:
    """The checked directory claim of a ``size``-byte zip whose last bytes, from
    ``tail_start``, are ``tail``. ``read`` fetches a ZIP64 end record outside the tail.

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
            rec = read(eocd64_offset, eocd64_offset + EOCD64.size)
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
            f"the end records claim {claim}, over the {MAX_CD_BYTES // MiB} MiB any archive "
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
    return end_records(tail, start, size, lambda a, b: os.pread(fd, b - a, a))
