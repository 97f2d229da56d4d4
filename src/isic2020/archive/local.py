"""Unpack the official zips into the fixed layout, safely, resumably and fast.

Why it is built this way:

* **Names, not folders.** The official zips use different folder names (``train/``,
  ``ISIC_2020_Test_Input/``) and nobody has confirmed those of the DICOM zips. An image is any
  entry whose *base name* is ``ISIC_<7 digits>.jpg`` (``.dcm`` for DICOM), case-insensitive,
  wherever it stands; it lands flat in ``DATA/<format>/<split>/`` under the canonical name
  (``ISIC_0000000.jpg``). Every other entry is reported by name (never silently dropped, never
  counted as an image); folder entries are counted only.
* **Safe by construction.** The whole archive is checked before one byte is written; any entry
  that is absolute, contains ``..``, a drive letter, a NUL, a Windows device name, or is a
  symlink/device (``external_attr``) refuses the archive, naming the entry. Output paths are
  built from the validated canonical name only, so nothing can land outside the data directory
  even in theory. Zip bombs: a member larger than ``MAX_MEMBER_BYTES``, a member compressed
  more than ``MAX_RATIO``:1 (JPEG and DICOM pixel data barely compress: a higher ratio is not
  an image) or a total larger than ``MAX_RATIO`` times the archive refuses the archive; and the
  copy loop never writes more than the member's declared size.
* **Never a partial file at a final path.** Each member goes to a hidden temporary
  ``.ISIC_xxxxxxx.jpg.part`` in its final folder (same filesystem: the rename is atomic),
  its size and CRC-32 are checked over every byte written, then it is renamed. Files get
  ``0o666 & ~umask`` and never the world-write bit. Before the record claims completion the
  data directory's filesystem is flushed (``syncfs``; ``os.sync`` where it is missing); a
  background thread flushes it every ``FLUSH_INTERVAL`` while the workers write, so that final
  flush finds almost nothing left (0.02-0.04 s instead of 0.7-1.0 s for the 656 MB below).
* **Resumable, idempotent.** A member already at its final path with the right size is skipped
  (only completed files ever reach a final path). A finished archive is recorded in
  ``records.json`` (``extracted``) with the archive's size and mtime; a re-run that finds the
  record, the same archive and the images present does no work at all.
* **Fast.** The central directory is parsed once (``ZipFile``, 0.18 s and ~20 MB for 33,126
  entries) and checked (0.1 s). Stored and deflated members (the official zips) are then read
  with ``pread`` straight from the planned offsets and inflated with zlib: for a typical 20 KB
  image one ``pread``, one inflate call (bounded by the declared size), one CRC-32, one
  ``os.write`` loop (a write may be short under ``RLIMIT_FSIZE``: it loops until all is
  written, and the EFBIG that follows becomes the DiskError), ``rename``. Members over
  ``SMALL_MEMBER`` are streamed 1 MiB at a time; other methods (bzip2, lzma) go through
  ``ZipFile.open``, read to the end so that zipfile checks their CRC-32. Per 20 KB member
  that is ~110 us of inflate+CRC and ~70 us of file system calls, all holding the GIL between
  short C calls, so threads use one core: the workers are **forked processes**
  (``DEFAULT_WORKERS`` = 2, never more than the CPUs; one process below
  ``MIN_MEMBERS_PER_WORKER`` members per worker, or without ``fork``). They inherit the parsed
  central directory, take contiguous runs of members in archive order from the parent
  (``CHUNKS_PER_WORKER`` per worker, handed out on demand, so a worker slowed down by the
  machine takes fewer) and report progress and errors (one line each) through pipes. On
  SIGTERM/SIGINT, an error in another worker, or the death of the parent (``PR_SET_PDEATHSIG``)
  a worker removes its temporary file and exits; the parent stops and reaps every worker
  before it raises, so no process outlives the command.
  Measured on the 2-CPU development VM (shared and noisy: the same command varies by 2x from
  minute to minute), ``benchmarks/run.py --rows 3`` (33,126 deflated 10-30 KB JPEGs, 656 MB,
  medians of 3, tools alternating): 2 worker processes 7.35 s = 0.69x ``unzip -q`` (10.57 s),
  0.59x ``7z x`` (12.39 s), 61 MB peak RSS; best run 5.76 s against unzip's 8.69 s. Before
  (2 threads, ``ZipFile.open`` per member, a second CRC-32, a 1 MiB ``BufferedWriter`` per
  member, three central-directory parses, ``os.sync``): 9.8-9.9 s = 0.96-1.25x unzip, 155 MB.
  Outside the benchmark, one extraction at a time: 1 process 8.7-17 s, 2 processes
  5.6-14.8 s, 3 processes (on 2 CPUs) 5.4-14.5 s: no better than 2 beyond the noise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import signal
import stat
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.archive.zipformat import BadEndRecords, local_end_records
from isic2020.catalog.manifest import EXTENSIONS, FileEntry, expand_split, load_manifest
from isic2020.errors import DiskError, Interrupted, Isic2020Error, UsageError, VerificationError
from isic2020.report import progress_bar
from isic2020.store.fsutil import free_bytes, open_nofollow, remove_tree, temp_name
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records, file_mode

IMAGE_RE = re.compile(r"^ISIC_([0-9]{7})\.(jpg|dcm)$", re.IGNORECASE | re.ASCII)
BUFFER = 1 << 20
MAX_MEMBER_BYTES = 2 * 1024**3  # the largest real images are tens of MB
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20  # members under 1 MiB may compress as they like (headers, text files)
DEFAULT_WORKERS = 2
MIN_MEMBERS_PER_WORKER = 8  # fewer members than this per worker: one process does it all
SMALL_MEMBER = 4 << 20  # members up to this (compressed) are read and inflated in one go
CHUNKS_PER_WORKER = 16  # work is handed out in this many runs per worker
PER_FILE_COST = 32768  # a file's open/rename costs about as much as writing this many bytes
FLUSH_INTERVAL = 0.5  # seconds between background flushes while extracting
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(10)
}
# Relative, ASCII letters, digits, ``_ - .``, no part starting with a dot (so no ``..``).
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)*[A-Za-z0-9_][A-Za-z0-9_.-]*/?")
_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass
class ArchiveExtraction:
    """What happened to one archive."""

    archive: str
    split: str
    format: str
    dest: str
    status: str  # "extracted", "skipped" (already complete), "absent" (archive gone, recorded)
    images: int = 0
    written: int = 0
    already_present: int = 0
    bytes_written: int = 0
    non_images: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    directories: int = 0
    workers: int = 0
    from_staging: int = 0  # unpacked while the archive downloaded (see ``streaming``)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExtractReport:
    data_dir: str
    split: str
    format: str
    archives: list[ArchiveExtraction] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # archives neither present nor recorded
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "extract",
            "data_dir": self.data_dir,
            "split": self.split,
            "format": self.format,
            "archives": [a.to_dict() for a in self.archives],
            "missing_archives": self.missing,
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
        }

    def summary_lines(self) -> list[str]:
        lines = []
        for a in self.archives:
            if a.status == "extracted":
                lines.append(
                    f"{a.archive}: {a.images} images in {a.dest} ({a.written} written, "
                    f"{a.already_present} already there) in {a.seconds:.1f} s"
                )
            elif a.status == "skipped":
                lines.append(f"{a.archive}: already extracted to {a.dest} ({a.images} images)")
            else:
                lines.append(f"{a.archive}: extracted earlier, archive since removed")
            if a.non_images:
                shown = ", ".join(a.non_images[:5])
                more = f" (+{len(a.non_images) - 5} more)" if len(a.non_images) > 5 else ""
                lines.append(
                    f"  {len(a.non_images)} non-image entries not extracted: {shown}{more}"
                )
            if a.duplicates:
                lines.append(f"  {len(a.duplicates)} duplicate image entries ignored")
        for m in self.missing:
            lines.append(f"{m}: not in {self.data_dir}/archives; run `isic2020 fetch` first")
        if not self.archives and not self.missing:
            lines.append("nothing to extract")
        return lines


# --------------------------------------------------------------------------------------------
# Planning: validate every entry before writing anything


@dataclass
class Member:
    info: zipfile.ZipInfo
    final: str  # canonical file name


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why an entry must not be extracted anywhere, or None when its name and type are safe."""
    name = info.filename
    if _PLAIN_NAME.fullmatch(name):
        # The usual case (``train/ISIC_0000000.jpg``): of the name checks, only the device
        # names below can fail.
        parts = name.split("/")
    else:
        if "\x00" in name:
            return "NUL byte in name"
        if name.startswith(("/", "\\")):
            return "absolute path"
        if re.match(r"^[A-Za-z]:", name):
            return "drive letter"
        parts = re.split(r"[\\/]", name)
        if ".." in parts:
            return "'..' in path"
    for p in parts:
        stem = p.split(".", 1)[0].strip().upper()
        if stem in _DEVICE_NAMES:
            return f"device name {p!r}"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix attributes present
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return "device or special file"
    return None


def plan_archive(path: Path, entry: FileEntry) -> Plan:
    """:func:`plan_entries` of the landed archive at ``path``. Its end records are checked first
    (``zipend``: ``zipfile`` sizes its read of the directory from them, unchecked), so a
    claim of a huge directory or one outside the file is refused in one line, exit 1."""
    hint = f"delete {path} and run `isic2020 fetch` again"
    try:
        with open(path, "rb") as fh:
            local_end_records(fh.fileno())
            with zipfile.ZipFile(fh) as zf:
                return plan_entries(zf, entry.name, entry.format, os.fstat(fh.fileno()).st_size)
    except BadEndRecords as exc:
        raise VerificationError(f"{entry.name} is not a readable zip: {exc}", hint) from None
    except (zipfile.BadZipFile, OSError, NotImplementedError, EOFError, struct.error) as exc:
        # NotImplementedError: zipfile refuses an entry's "version needed to extract"
        raise VerificationError(
            f"{entry.name} is not a readable zip: {type(exc).__name__}: {exc}", hint
        ) from None


def plan_entries(
    zf: zipfile.ZipFile, archive: str, fmt: str, archive_size: int
) -> tuple[list[Member], list[str], list[str], int]:
    ext = EXTENSIONS[fmt]
    members: dict[str, Member] = {}
    non_images: list[str] = []
    duplicates: list[str] = []
    directories = 0
    total = 0
    hint = f"the archive is not the official one: delete DATA/archives/{archive} and fetch again"
    for info in zf.infolist():
        why = unsafe_reason(info)
        if why:
            raise VerificationError(
                f"{archive}: refusing to extract: entry {info.filename!r} is unsafe ({why}); "
                "nothing was written",
                hint,
            )
        if info.header_offset < 0 or (
            info.header_offset + _LOCAL_HEADER.size + info.compress_size > zf.start_dir
        ):
            raise VerificationError(
                f"{archive}: entry {info.filename!r} points outside the archive's data "
                f"(offset {info.header_offset}, {info.compress_size} bytes; the directory "
                f"starts at {zf.start_dir}); nothing was written",
                hint,
            )
        if info.is_dir():
            directories += 1
            continue
        if info.file_size > MAX_MEMBER_BYTES or (
            info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1)
        ):
            raise VerificationError(
                f"{archive}: refusing to extract: entry {info.filename!r} expands "
                f"{info.compress_size} to {info.file_size} bytes (zip bomb?); nothing was written",
                hint,
            )
        total += info.file_size
        base = info.filename.rpartition("/")[2].rpartition("\\")[2]
        m = IMAGE_RE.match(base)
        if not m or m.group(2).lower() != ext:
            non_images.append(info.filename)
            continue
        final = f"ISIC_{m.group(1)}.{ext}"
        prev = members.get(final)
        if prev is not None:
            if prev.info.CRC != info.CRC or prev.info.file_size != info.file_size:
                raise VerificationError(
                    f"{archive}: entries {prev.info.filename!r} and {info.filename!r} are both "
                    f"{final} with different contents",
                    hint,
                )
            duplicates.append(info.filename)
            continue
        members[final] = Member(info, final)
    if total > MAX_RATIO * max(archive_size, 1) and total > RATIO_FLOOR:
        raise VerificationError(
            f"{archive}: refusing to extract: {total} bytes from a {archive_size}-byte archive "
            "(zip bomb?); nothing was written",
            hint,
        )
    return list(members.values()), non_images, duplicates, directories


# --------------------------------------------------------------------------------------------
# Writing


class _Stop(Exception):
    """Asked to stop (SIGTERM/SIGINT in a worker, or another worker failed): stop quietly."""


class _Damaged(Exception):
    """A member's bytes are not what the central directory says."""


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_LOCAL_SIG = b"PK\x03\x04"
_stop_requested = False  # set by a worker's SIGTERM/SIGINT handler


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written: a write may be short (RLIMIT_FSIZE lets the
    first write stop at the limit; the next one fails with EFBIG, which is what we report)."""
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _read_at(zfd: int, n: int, offset: int) -> bytes:
    """``pread`` of the archive. A failure to *read* it (EINVAL for an offset no file has,
    EIO) is the archive's problem, not the destination disk's: it must not be reported as
    "cannot write ..., fix permissions"."""
    try:
        return os.pread(zfd, n, offset)
    except OSError as exc:
        raise _Damaged(f"cannot read the archive at byte {offset}: {exc.strerror or exc}") from None


def _member_data(zfd: int, info: zipfile.ZipInfo) -> tuple[int, bytes]:
    """The offset of the member's data (after the local header), and the first bytes read:
    the header and, for a member up to ``SMALL_MEMBER`` compressed bytes, all of its data
    (one ``pread`` for a typical 20 KB image). The local name must be the central one."""
    name = info.orig_filename
    guess = 30 + len(name.encode("utf-8")) + 64
    small = info.compress_size <= SMALL_MEMBER and info.file_size <= SMALL_MEMBER
    want = guess + info.compress_size if small else guess
    buf = _read_at(zfd, want, info.header_offset)
    if len(buf) < 30:
        raise _Damaged("truncated local header")
    h = _LOCAL_HEADER.unpack_from(buf)
    if h[0] != _LOCAL_SIG:
        raise _Damaged("bad local header signature")
    nlen, xlen = h[10], h[11]
    raw_name = buf[30 : 30 + nlen]
    if len(raw_name) < nlen:
        raw_name = _read_at(zfd, nlen, info.header_offset + 30)
    local = raw_name.decode("utf-8" if h[3] & 0x800 else "cp437", "replace")
    if local != name:
        raise _Damaged(f"local header names {local!r}")
    return info.header_offset + 30 + nlen + xlen, buf


class _Source:
    """One worker's read handle on the archive: a raw fd for ``pread``, and a ``ZipFile`` made
    only if a member needs zipfile's own decompressors (never for the official zips)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
        self._zf: zipfile.ZipFile | None = None

    def zipfile(self) -> zipfile.ZipFile:
        if self._zf is None:
            self._zf = zipfile.ZipFile(self.path)
        return self._zf

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
        os.close(self.fd)


def write_member(
    src: _Source, m: Member, d: str, mode: int, archive: str, *, dir_fd: int | None = None
) -> int:
    """Write one member to ``d/.NAME.part``, check its size and CRC-32, rename it to ``d/NAME``.
    ``dir_fd``: ``d`` open (the staging folder, reached without links): names are relative
    to it, so a link replacing ``d`` meanwhile changes nothing.

    Stored and deflated members (all the official ones) are read with ``pread`` and inflated
    here with zlib, with one CRC-32 over the output; anything else goes through ``zipfile``
    (which checks the CRC-32 at the end of the stream). Output is bounded by the declared size.
    """
    info = m.info
    final = f"{d}/{m.final}"
    tmp = f"{d}/{temp_name(m.final)}"
    at_final, at_tmp = (final, tmp) if dir_fd is None else (m.final, temp_name(m.final))
    try:
        fd = open_nofollow(at_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, dir_fd=dir_fd)
    except OSError as exc:
        raise disk_error(exc, Path(tmp)) from None
    try:
        try:
            if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                written = _copy_raw(src.fd, info, fd)
            else:
                written = _copy_zipfile(src.zipfile(), info, fd)
        finally:
            os.close(fd)
        os.rename(at_tmp, at_final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except (_Damaged, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError) as exc:
        _unlink(at_tmp, dir_fd)
        raise VerificationError(
            f"{archive}: member {info.filename!r} is damaged ({exc})",
            f"delete DATA/archives/{archive} and run `isic2020 fetch` again",
        ) from None
    except OSError as exc:
        _unlink(at_tmp, dir_fd)
        raise disk_error(exc, Path(final)) from None
    except BaseException:
        _unlink(at_tmp, dir_fd)
        raise
    return written


def _copy_raw(zfd: int, info: zipfile.ZipInfo, fd: int) -> int:
    if info.flag_bits & 0x1:
        raise _Damaged("encrypted")
    size = info.file_size
    start, buf = _member_data(zfd, info)
    left = info.compress_size
    skip = start - info.header_offset
    inflate = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    if inflate is None and left != size:
        raise _Damaged("stored member with two sizes")
    if left <= SMALL_MEMBER and size <= SMALL_MEMBER and len(buf) >= skip + left:
        # The common case: the whole member is in ``buf``. One inflate, one CRC, one write.
        raw = memoryview(buf)[skip : skip + left]
        if inflate is None:
            data: bytes | memoryview = raw
        else:
            data = inflate.decompress(raw, size + 1)
            if not inflate.eof:
                raise _Damaged("deflate stream does not end where it should")
        if len(data) != size:
            raise _Damaged(f"{len(data)} bytes instead of {size}")
        if zlib.crc32(data) != info.CRC:
            raise _Damaged("Bad CRC-32")
        if size:
            write_all(fd, data)
        return size
    # Large members: stream, never more than BUFFER bytes in or out at a time.
    pos = start
    written = 0
    crc = 0

    def emit(out: bytes) -> None:
        nonlocal written, crc
        written += len(out)
        if written > size:
            raise _Damaged(f"more than {size} bytes")
        crc = zlib.crc32(out, crc)
        if out:
            write_all(fd, out)

    while left > 0:
        if _stop_requested:
            raise _Stop()
        raw_b = _read_at(zfd, min(BUFFER, left), pos)
        if not raw_b:
            raise _Damaged("archive ends inside the member")
        pos += len(raw_b)
        left -= len(raw_b)
        chunk: bytes = raw_b
        while True:
            emit(chunk if inflate is None else inflate.decompress(chunk, BUFFER))
            if inflate is None or not inflate.unconsumed_tail:
                break
            chunk = inflate.unconsumed_tail
    if inflate is not None and not inflate.eof:
        emit(inflate.flush())  # what zlib still holds (at most its 32 KB window)
    if inflate is not None and not inflate.eof:
        raise _Damaged("deflate stream does not end where it should")
    if written != size:
        raise _Damaged(f"{written} bytes instead of {size}")
    if crc != info.CRC:
        raise _Damaged("Bad CRC-32")
    return written


def _copy_zipfile(zf: zipfile.ZipFile, info: zipfile.ZipInfo, fd: int) -> int:
    """Other compression methods (bzip2, lzma): zipfile inflates and checks the CRC-32 when the
    stream is read to its end, which this loop always does."""
    written = 0
    with zf.open(info) as src:
        while True:
            if _stop_requested:
                raise _Stop()
            try:
                block = src.read(BUFFER)
            except (zipfile.BadZipFile, _Stop):
                raise
            except Exception as exc:  # noqa: BLE001 - bz2 raises OSError, lzma LZMAError
                raise _Damaged(f"{type(exc).__name__}: {exc}") from None
            if not block:
                break
            written += len(block)
            if written > info.file_size:
                raise _Damaged(f"more than {info.file_size} bytes")
            write_all(fd, block)
    if written != info.file_size:
        raise _Damaged(f"{written} bytes instead of {info.file_size}")
    return written


def _write_run(src: _Source, members: list[Member], d: str, mode: int, archive: str) -> int:
    total = 0
    for m in members:
        if _stop_requested:
            raise _Stop()
        total += write_member(src, m, d, mode, archive)
    return total


# --------------------------------------------------------------------------------------------
# Worker processes


def _chunks(members: list[Member], n_workers: int) -> list[tuple[int, int]]:
    """Contiguous index ranges of ``members`` (in archive order) of about equal work, several
    per worker so that a worker slowed down by the machine simply takes fewer of them."""
    n = min(len(members), n_workers * CHUNKS_PER_WORKER)
    weights = [m.info.file_size + PER_FILE_COST for m in members]
    total = sum(weights)
    out: list[tuple[int, int]] = []
    lo = acc = 0
    for i, w in enumerate(weights):
        acc += w
        if acc * n >= total * (len(out) + 1) and i + 1 > lo:
            out.append((lo, i + 1))
            lo = i + 1
    if lo < len(members):
        out.append((lo, len(members)))
    return out


def _on_stop_signal(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True


def _child(
    path: str,
    members: list[Member],
    chunks: list[tuple[int, int]],
    d: str,
    mode: int,
    archive: str,
    cmd_r: int,
    msg_w: int,
    parent: int,
    libc: Any,
) -> int:
    """A forked worker: take chunk numbers from ``cmd_r`` (EOF = stop), write them, report each
    on ``msg_w`` (``c COUNT``), then ``d BYTES``; an error is one ``e JSON`` line. Returns the
    exit status (the caller ``os._exit``s with it: no atexit handler, no stdio flush)."""
    global _stop_requested
    _stop_requested = False
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)  # the parent decides; it sends SIGTERM
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: orphans stop too
    if os.getppid() != parent:
        return 2
    src = _Source(path)
    total = 0
    pending = b""
    try:
        while True:
            while b"\n" not in pending:
                block = os.read(cmd_r, 64)
                if not block:  # the parent closed the pipe: stop
                    return 2
                pending += block
            line, pending = pending.split(b"\n", 1)
            k = int(line)
            if k < 0:
                write_all(msg_w, f"d {total}\n".encode())
                return 0
            lo, hi = chunks[k]
            total += _write_run(src, members[lo:hi], d, mode, archive)
            write_all(msg_w, f"c {hi - lo}\n".encode())
    except _Stop:
        return 2
    except Isic2020Error as exc:
        doc = {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        with contextlib.suppress(OSError):
            write_all(msg_w, b"e " + json.dumps(doc).encode() + b"\n")
        return 1
    except OSError as exc:  # the pipe to the parent (it is gone)
        if _stop_requested or exc.errno == errno.EPIPE:
            return 2
        raise
    finally:
        src.close()


_ERROR_KINDS: dict[str, type[Isic2020Error]] = {
    "VerificationError": VerificationError,
    "DiskError": DiskError,
    "UsageError": UsageError,
}


@dataclass
class _Worker:
    pid: int
    cmd: int  # write end of its command pipe (-1 once closed)
    msg: int  # read end of its message pipe
    pending: bytes = b""
    finished: bool = False  # sent ``d``
    status: int | None = None  # from waitpid


def _run_processes(
    path: str,
    members: list[Member],
    d: str,
    mode: int,
    archive: str,
    n_workers: int,
    bar: Any,
    started: Callable[[], None] = lambda: None,
) -> int:
    """Write ``members`` with ``n_workers`` forked processes; returns the bytes written.

    Per 20 KB member the work is mostly Python (open, inflate call, write, rename), which holds
    the GIL, so threads would share one core. Forked workers inherit the parsed central
    directory (no second parse, no pickling). The parent hands out chunks on demand and
    collects progress and errors; on an error, Ctrl-C or SIGTERM it stops every worker
    (SIGTERM: each removes its current temporary file, or finishes that member, and exits) and
    waits for them all, so no worker outlives the command.
    """
    chunks = _chunks(members, n_workers)
    libc = _libc() if sys.platform.startswith("linux") else None
    workers: list[_Worker] = []
    next_chunk = 0
    total = 0
    error: BaseException | None = None
    parent = os.getpid()

    def send_next(w: _Worker) -> None:
        nonlocal next_chunk
        if w.cmd < 0:
            return
        k = -1
        if error is None and next_chunk < len(chunks):
            k = next_chunk
            next_chunk += 1
        with contextlib.suppress(OSError):
            write_all(w.cmd, f"{k}\n".encode())

    def stop_all() -> None:
        for w in workers:
            if w.cmd >= 0:
                os.close(w.cmd)
                w.cmd = -1
            if w.status is None:
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGTERM)

    try:
        for _ in range(min(n_workers, len(chunks))):
            cmd_r, cmd_w = os.pipe()
            msg_r, msg_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the caller's code
                code = 70
                try:
                    for fd in (cmd_w, msg_r, *(f for w in workers for f in (w.cmd, w.msg))):
                        os.close(fd)
                    code = _child(path, members, chunks, d, mode, archive, cmd_r, msg_w, parent,
                                  libc)
                except BaseException as exc:  # noqa: BLE001 - reported, then _exit
                    with contextlib.suppress(BaseException):
                        doc = {"kind": "internal", "message": f"{type(exc).__name__}: {exc}",
                               "hint": None}
                        write_all(msg_w, b"e " + json.dumps(doc).encode() + b"\n")
                finally:
                    os._exit(code)
            os.close(cmd_r)
            os.close(msg_w)
            w = _Worker(pid, cmd_w, msg_r)
            workers.append(w)
            send_next(w)
        started()
        by_fd = {w.msg: w for w in workers}
        while by_fd:
            ready, _, _ = select.select(list(by_fd), [], [])
            for fd in ready:
                w = by_fd[fd]
                block = os.read(fd, 4096)
                if not block:  # the worker exited
                    del by_fd[fd]
                    os.close(fd)
                    w.msg = -1
                    w.status = os.waitpid(w.pid, 0)[1]
                    if error is None and not w.finished:
                        code = os.waitstatus_to_exitcode(w.status)
                        # 2: stopped by SIGTERM/SIGINT (Ctrl-C reaches the whole process group)
                        error = KeyboardInterrupt() if code == 2 else _worker_died(archive, code)
                        stop_all()
                    continue
                w.pending += block
                while b"\n" in w.pending:
                    line, w.pending = w.pending.split(b"\n", 1)
                    kind, _, arg = line.partition(b" ")
                    if kind == b"c":
                        if bar is not None:
                            bar.update(int(arg))
                        send_next(w)
                    elif kind == b"d":
                        total += int(arg)
                        w.finished = True
                    elif kind == b"e" and error is None:
                        doc = json.loads(arg)
                        cls = _ERROR_KINDS.get(doc["kind"])
                        error = (
                            cls(doc["message"], doc["hint"]) if cls is not None
                            else RuntimeError(f"extraction worker failed: {doc['message']}")
                        )
                        stop_all()
    except BaseException:
        stop_all()
        raise
    finally:
        for w in workers:
            if w.cmd >= 0:
                os.close(w.cmd)
            if w.msg >= 0:
                os.close(w.msg)
            if w.status is None:
                # each stops at its next member (or next 1 MiB of a large one)
                with contextlib.suppress(ChildProcessError):
                    w.status = os.waitpid(w.pid, 0)[1]
    if error is not None:
        raise error
    return total


def _worker_died(archive: str, code: int) -> Isic2020Error:
    what = f"signal {-code}" if code < 0 else f"exit status {code}"
    return DiskError(
        f"an extraction worker for {archive} stopped unexpectedly ({what})",
        "run the same command again to resume; finished images are kept",
    )


def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


class Flusher:
    """Flush the destination's filesystem (``syncfs``) while the workers write and once at the
    end, so that the final flush, which must finish before the record claims completion,
    finds little left to write (the kernel alone would start only at ``dirty_background_ratio``
    of RAM). ``os.sync`` (the whole machine's dirty data) where ``syncfs`` is missing."""

    def __init__(self, d: Path) -> None:
        libc = _libc() if sys.platform.startswith("linux") else None
        self._syncfs = getattr(libc, "syncfs", None) if libc is not None else None
        self._fd = -1
        if self._syncfs is not None:
            with contextlib.suppress(OSError):
                self._fd = os.open(d, os.O_RDONLY | O_CLOEXEC)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start flushing in the background (after any ``fork``: no thread is forked)."""
        if self._fd >= 0 and self._thread is None and not self._done.is_set():
            self._thread = threading.Thread(target=self._loop, name="isic2020-flush",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(FLUSH_INTERVAL):
            self._syncfs(self._fd)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def final(self) -> None:
        """The flush that makes the files durable."""
        self.stop()
        if self._fd >= 0 and self._syncfs(self._fd) == 0:
            return
        if hasattr(os, "sync"):
            os.sync()

    def close(self) -> None:
        self.stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _unlink(p: str | Path, dir_fd: int | None = None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p, dir_fd=dir_fd)


def disk_error(exc: OSError, path: Path) -> DiskError:
    if exc.errno in _DISK_ERRNOS:
        what = "file too large for this filesystem" if exc.errno == errno.EFBIG else "disk full"
        return DiskError(
            f"{what} while writing {path}",
            "free space (or choose another --data-dir) and run the same command again; "
            "finished images are kept",
        )
    return DiskError(
        f"cannot write {path}: {exc.strerror or exc}",
        "fix permissions or choose another --data-dir, then run again",
    )


def present_files(folder: str | os.PathLike[str]) -> dict[str, int]:
    """File name -> size of the regular files in ``folder`` (empty when it cannot be listed,
    e.g. not made yet): one ``scandir`` instead of a ``stat`` per member. Shared by every
    writer of the layout (extract, streaming, remote members) for its resume rule."""
    out: dict[str, int] = {}
    try:
        with os.scandir(os.fspath(folder) or ".") as it:
            for e in it:
                with contextlib.suppress(OSError):  # gone between the listing and the stat
                    if e.is_file(follow_symlinks=False):
                        out[e.name] = e.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return out


def _take_staged(
    layout: Layout, entry: FileEntry, records: Records, size: int, dest_dir: Path,
    members: list[Member],
) -> int:
    """Move in the images unpacked while this archive downloaded, if they were unpacked from
    this very version of it (ETag and size, as recorded when it landed); else drop them."""
    from isic2020.archive.streaming import promote, staging_matches

    staging = layout.staging_dir(entry)
    if not staging.exists():
        return 0
    rec = records.file(entry.name)
    try:
        if rec is not None and staging_matches(staging, rec.etag, size):
            return promote(staging, dest_dir, members)
        remove_tree(staging)
    except OSError as exc:
        raise disk_error(exc, dest_dir) from None
    return 0


Plan = tuple[list[Member], list[str], list[str], int]  # members, non-images, duplicates, dirs


def extract_archive(
    layout: Layout,
    entry: FileEntry,
    *,
    records: Records,
    progress: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    plan: Plan | None = None,
) -> ArchiveExtraction:
    """Unpack one archive (at ``layout.final_path(entry)``) into ``DATA/<format>/<split>/``.

    ``plan`` is :func:`plan_entries` of this very archive when the caller already made it (the
    streaming extractor parses the directory while the archive downloads): parsing and checking
    33,126 entries again costs ~0.4 s and a second copy of them in memory.

    The caller holds the data-dir lock. Raises VerificationError (unsafe or damaged archive,
    naming the entry), DiskError (disk full, unwritable) or Interrupted; what was finished
    stays in place and the next call resumes.
    """
    start = time.monotonic()
    path = layout.final_path(entry)
    dest_dir = layout.images_dir(entry.format, entry.split)
    rel_dest = os.path.relpath(dest_dir, layout.root)
    result = ArchiveExtraction(entry.name, entry.split, entry.format, rel_dest, "extracted")
    try:
        st = path.stat()
    except OSError:
        raise UsageError(
            f"{path} does not exist", "run `isic2020 fetch` to download it first"
        ) from None

    done = records.extracted.get(entry.name)
    if done and done.get("st_size") == st.st_size and done.get("st_mtime_ns") == st.st_mtime_ns:
        present = present_files(dest_dir)
        ext = EXTENSIONS[entry.format]
        n = sum(1 for k in present if k.endswith("." + ext) and not k.startswith("."))
        if n >= int(done.get("images", 0)):
            result.status = "skipped"
            result.images = int(done.get("images", 0))
            result.non_images = list(done.get("non_images", []))
            result.seconds = time.monotonic() - start
            return result
    if done:
        records.drop_extracted(entry.name)

    if plan is None:
        plan = plan_archive(path, entry)
    members, non_images, duplicates, directories = plan
    result.images = len(members)
    result.non_images = non_images
    result.duplicates = duplicates
    result.directories = directories
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, dest_dir) from None
    result.from_staging = _take_staged(layout, entry, records, st.st_size, dest_dir, members)
    present = present_files(dest_dir)
    todo = [m for m in members if present.get(m.final) != m.info.file_size]
    result.already_present = len(members) - len(todo)
    need = sum(m.info.file_size for m in todo)
    free = free_bytes(dest_dir)  # None: the filesystem does not say (ramfs)
    if free is not None and need > free:
        raise DiskError(
            f"{entry.name} needs {need / 1e9:.2f} GB more in {dest_dir}, only "
            f"{free / 1e9:.2f} GB free",
            "free space or choose another --data-dir, then run the same command again",
        )
    if log and todo:
        log(f"extracting {len(todo)} images from {entry.name} to {rel_dest}")
    n_workers = max(1, min(workers or DEFAULT_WORKERS, os.cpu_count() or 1))
    if not hasattr(os, "fork") or len(todo) < n_workers * MIN_MEMBERS_PER_WORKER:
        n_workers = 1
    result.workers = n_workers
    # Archive order: each worker reads its runs of the zip sequentially.
    todo.sort(key=lambda m: m.info.header_offset)
    mode = file_mode()
    d = str(dest_dir)
    bar = _progress_bar(progress, len(todo), entry.name)
    flusher = Flusher(dest_dir)
    try:
        if n_workers == 1:
            src = _Source(str(path))
            flusher.start()
            try:
                for lo, hi in _chunks(todo, 1) if bar is not None else [(0, len(todo))]:
                    result.bytes_written += _write_run(src, todo[lo:hi], d, mode, entry.name)
                    if bar is not None:
                        bar.update(hi - lo)
            finally:
                src.close()
        else:
            result.bytes_written = _run_processes(
                str(path), todo, d, mode, entry.name, n_workers, bar, flusher.start
            )
        # Flush file data before the record claims completion: after a power cut the record
        # must never vouch for files the disk does not hold.
        if todo or result.from_staging:
            flusher.final()
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while extracting {entry.name}",
            "run the same command again to resume; finished images are kept",
        ) from None
    finally:
        flusher.close()
        if bar is not None:
            bar.close()
    result.written = len(todo)
    records.put_extracted(
        entry.name,
        {
            "images": len(members),
            "dest": rel_dest,
            "st_size": st.st_size,
            "st_mtime_ns": st.st_mtime_ns,
            "non_images": non_images,
            "extracted_at": time.time(),
        },
    )
    result.seconds = time.monotonic() - start
    return result


def _progress_bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled or total == 0:
        return None
    return progress_bar(total, name, unit="img")


def extract(
    split: str = "all",
    fmt: str = "jpeg",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    progress: bool = False,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractReport:
    """``isic2020 extract``: unpack the selected archives already in DATA/archives."""
    start = time.monotonic()
    layout = Layout.at(data_dir)
    man = load_manifest(manifest)
    splits = expand_split(split)
    report = ExtractReport(str(layout.root), split, fmt)
    if fmt == "none":
        return report
    with data_dir_lock(layout.lock_path, on_wait=log):
        records = Records(layout.records_path)
        records.heal(log)
        for s in splits:
            entry = man.archive(s, fmt)
            if entry is None:
                continue
            if not layout.final_path(entry).exists():
                if entry.name in records.extracted:
                    info = records.extracted[entry.name]
                    report.archives.append(
                        ArchiveExtraction(
                            entry.name, s, fmt, str(info.get("dest", "")), "absent",
                            images=int(info.get("images", 0)),
                        )
                    )
                else:
                    report.missing.append(entry.name)
                continue
            report.archives.append(
                extract_archive(
                    layout, entry, records=records, progress=progress, workers=workers, log=log
                )
            )
    if not report.archives:
        raise UsageError(
            f"nothing to extract: {', '.join(report.missing) or 'no archive'} not in "
            f"{layout.archives_dir}",
            f"run `isic2020 fetch --split {split} --format {fmt}` first",
        )
    report.seconds = time.monotonic() - start
    return report
