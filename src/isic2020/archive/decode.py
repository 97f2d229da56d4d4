"""Inflate, bound, check and write one member: the one copy every path uses.

Invariants, whoever calls (``local`` extraction, ``streaming``, remote spans):

* **Bounded:** never more than the declared size is inflated or written, a member of any size
  is decoded :data:`OUT_BLOCK` at a time (a typical 20 KB image in one call).
* **Checked over every byte written:** size, deflate end of stream and CRC-32 against the
  central directory; a mismatch is :class:`Damaged` (the words say what), which the caller
  turns into a :class:`~isic2020.errors.VerificationError` naming the member.
* **Never a partial file at a final path:** a member goes to a hidden temporary
  (``.NAME.part``, :func:`~isic2020.store.fsutil.temp_name`) in its final folder, opened
  without following links, and is renamed only once checked; any failure removes it.
* **Staging, one rename less** (``in_place``, for ``streaming``'s hidden staging folder, which
  is no final path): a member checked whole in memory first (size, end, CRC-32, up to
  :data:`SMALL_MEMBER`) is written straight under its name, into a file made anew
  (``O_EXCL``: never through a link or a hard link found there). Its size grows only with
  bytes written, so a file of the member's size is the whole checked member; a killed write
  leaves a shorter one, which the resume check (size) redoes and promotion drops. A failed
  write removes it. Members decoded piece by piece keep the temporary: their CRC-32 is known
  only once every byte is written. One writer does both (:class:`MemberFile`, with or
  without ``in_place``; :func:`write_data` for bytes already checked), so the disk-error
  wording, the removal on failure and the image count exist once.
* **Disk errors are disk errors:** ENOSPC, EFBIG, EDQUOT say "disk full" / "file too large";
  a short write (RLIMIT_FSIZE) loops until the EFBIG that names it (:func:`write_all`).

Only stored and deflated members (all the official ones) are decoded here; ``local`` hands
other methods (bzip2, lzma) to ``zipfile``, whose decompressors are the best tool for them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isic2020.archive.zipformat import (
    DEFLATED,
    LFH,
    STORED,
    BadZip,
    Entry,
    check_local_name,
    local_header_size,
)
from isic2020.catalog.jpeg import JpegEnds, jpeg_problem
from isic2020.report import count_images
from isic2020.store.fsutil import disk_error, open_nofollow, temp_name
from isic2020.store.libc import syncfs_function

try:  # zlib-ng: zlib's API, members inflate ~13 % and CRC-32 ~5x faster (see the README)
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - a platform without its wheel: the same, slower
    import zlib  # type: ignore[no-redef]

#: CRC-32 of a buffer (``crc32(data, running)``), the fastest one this process has.
crc32 = zlib.crc32

#: Inflate output per call for a member decoded in pieces (memory per member in flight).
OUT_BLOCK = 256 << 10
#: Members up to this (compressed and not) are read and inflated in one go.
SMALL_MEMBER = 4 << 20
#: Bytes read at a time of a larger member.
BUFFER = 1 << 20
FLUSH_INTERVAL = 0.5  # seconds between background flushes while extracting
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC
#: A new file, never an existing one or a link (``O_EXCL`` refuses both).
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_stop = [False]  # set by a worker process's SIGTERM/SIGINT handler (see ``request_stop``)


class Damaged(Exception):
    """A member's bytes are not what the central directory says."""


class Stopped(Exception):
    """Asked to stop (:func:`request_stop`) in the middle of a member."""


def request_stop(stop: bool = True) -> None:
    """Ask every decode in this process to stop at its next piece (signal-handler safe)."""
    _stop[0] = stop


def stop_requested() -> bool:
    return _stop[0]


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


def present_files(folder: str | os.PathLike[str] | int) -> dict[str, int]:
    """File name -> size of the regular files in ``folder`` (a path, or a descriptor such as
    a staging's, listed without following a link swapped in for it; empty when it cannot be
    listed, e.g. not made yet): one ``scandir`` instead of a ``stat`` per member. Shared by
    every writer of the layout (extract, streaming, remote members) for its resume rule."""
    out: dict[str, int] = {}
    try:
        with os.scandir(folder if isinstance(folder, int) else os.fspath(folder) or ".") as it:
            for e in it:
                try:  # (not contextlib.suppress: it builds a context manager per file)
                    if e.is_file(follow_symlinks=False):
                        out[e.name] = e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass  # gone between the listing and the stat
    except OSError:
        pass
    return out


def already_there(e: Entry, final: Path, check: str) -> bool:
    """Is ``final`` the member ``e`` already: its size (``check="size"``), or its size and
    CRC-32 (``"crc"``, read whole: what to trust after the archive changed)?"""
    try:
        if final.stat().st_size != e.file_size:
            return False
        if check == "size":
            return True
        crc = 0
        with open(final, "rb") as fh:
            while block := fh.read(1 << 20):
                crc = crc32(block, crc)
        return crc == e.crc
    except OSError:
        return False


def check_method(e: Entry) -> None:
    """Only unencrypted stored and deflated members are decoded here."""
    if e.flags & 0x1:
        raise Damaged("it is encrypted")
    if e.method == STORED:
        if e.compressed_size != e.file_size:
            raise Damaged("stored with different compressed and file sizes")
    elif e.method != DEFLATED:
        raise Damaged(f"compression method {e.method} is not supported")


def decode_whole(e: Entry, raw: bytes | memoryview) -> bytes | memoryview:
    """All of ``e``'s data from its raw bytes in one call, checked (size, end, CRC-32)."""
    if e.method == STORED:
        data: bytes | memoryview = raw
    else:
        d = zlib.decompressobj(-15)
        try:
            data = d.decompress(raw, e.file_size + 1)
        except zlib.error as exc:
            raise Damaged(f"its data does not inflate ({exc})") from None
        if len(data) > e.file_size:
            raise Damaged("it inflates to more than its declared size")
        if not d.eof:
            raise Damaged("its deflate stream is truncated")
    if len(data) != e.file_size:
        raise Damaged(f"it inflates to {len(data)} bytes, not {e.file_size}")
    crc = zlib.crc32(data)
    if crc != e.crc:
        raise Damaged(f"CRC-32 {crc:08x} differs from the directory's {e.crc:08x}")
    return data


class Decoder:
    """One member decoded piece by piece into ``sink``: bounded, CRC-checked at the end."""

    def __init__(self, e: Entry, sink: Callable[[bytes | memoryview], None]) -> None:
        check_method(e)
        self.entry = e
        self.sink = sink
        self.inflater: Any = zlib.decompressobj(-15) if e.method == DEFLATED else None
        self.crc = 0
        self.written = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        d = self.inflater
        if d is None:
            self._emit(chunk)
            return
        try:
            self._emit(d.decompress(chunk, OUT_BLOCK))
            while d.unconsumed_tail:
                if _stop[0]:
                    raise Stopped()
                self._emit(d.decompress(d.unconsumed_tail, OUT_BLOCK))
        except zlib.error as exc:
            raise Damaged(f"its data does not inflate ({exc})") from None

    def _emit(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self.written + len(data) > self.entry.file_size:
            raise Damaged("it inflates to more than its declared size")
        self.crc = zlib.crc32(data, self.crc)
        self.written += len(data)
        self.sink(data)

    def finish(self) -> None:
        """All raw bytes were fed: the stream must end here with the directory's size and
        CRC-32."""
        e = self.entry
        if self.inflater is not None:
            try:
                self._emit(self.inflater.flush())
            except zlib.error as exc:
                raise Damaged(f"its data does not inflate ({exc})") from None
            if not self.inflater.eof:
                raise Damaged("its deflate stream is truncated")
        if self.written != e.file_size:
            raise Damaged(f"it inflates to {self.written} bytes, not {e.file_size}")
        if self.crc != e.crc:
            raise Damaged(f"CRC-32 {self.crc:08x} differs from the directory's {e.crc:08x}")


class MemberFile:
    """A member's file: the hidden temporary while it is written, the final name once checked.

    ``d`` is the folder; with ``dir_fd`` (the folder open, reached without links) names are
    relative to it, so a link replacing ``d`` meanwhile changes nothing.

    ``in_place`` (only with ``dir_fd``: a folder that is no final path, see the module
    docstring): no temporary. The file is made anew under its name (``O_EXCL``: never through
    a link or a hard link; whatever had the name is unlinked first) and ``commit`` renames
    nothing. Either way ``discard`` removes what was written, and a disk error is
    :func:`~isic2020.store.fsutil.disk_error`'s one line.
    """

    def __init__(self, d: str, final: str, mode: int, dir_fd: int | None = None, *,
                 in_place: bool = False) -> None:
        self.dir_fd = dir_fd
        self.in_place = in_place and dir_fd is not None
        if self.in_place:
            self.path = os.path.join(d, final)
            self.final = self.tmp = final  # written where it stays
            self.fd = -1
            try:
                try:
                    self.fd = os.open(final, CREATE_NEW, mode, dir_fd=dir_fd)
                except FileExistsError:  # a short file of a killed run, a (hard) link
                    os.unlink(final, dir_fd=dir_fd)
                    self.fd = os.open(final, CREATE_NEW, mode, dir_fd=dir_fd)
            except OSError as exc:
                raise disk_error(exc, self.path) from None
            return
        self.path = f"{d}/{final}" if d else final
        if dir_fd is None:
            self.final, self.tmp = self.path, os.path.join(d, temp_name(final))
        else:
            self.final, self.tmp = final, temp_name(final)
        try:
            self.fd = open_nofollow(self.tmp, CREATE, mode, dir_fd=dir_fd)
        except OSError as exc:
            raise disk_error(exc, os.path.join(d, temp_name(final))) from None

    def write(self, data: bytes | memoryview) -> None:
        try:
            write_all(self.fd, data)
        except OSError as exc:
            raise disk_error(exc, self.path) from None

    def commit(self) -> None:
        """Close and (but ``in_place``) rename to the final name: the content was checked."""
        try:
            fd, self.fd = self.fd, -1  # closed once, even when close fails
            os.close(fd)
            if not self.in_place:
                os.rename(self.tmp, self.final, src_dir_fd=self.dir_fd,
                          dst_dir_fd=self.dir_fd)
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        count_images()

    def discard(self) -> None:
        """After a failure: close and remove the file written (never left half-written)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp, dir_fd=self.dir_fd)


def write_data(d: str, final: str, mode: int, data: bytes | memoryview,
               dir_fd: int | None = None, *, in_place: bool = False) -> None:
    """Checked ``data`` to ``d/final``: through the temporary and a rename, or (``in_place``
    with ``dir_fd``) straight under its name in a file made anew, see :class:`MemberFile`."""
    f = MemberFile(d, final, mode, dir_fd, in_place=in_place)
    try:
        if data:
            f.write(data)
        f.commit()
    except BaseException:
        f.discard()
        raise


class Vouched:
    """A writer's check of each member's content as it is written (``rule``: a content rule
    of :mod:`isic2020.archive.rules`, e.g. the JPEG markers), passed to
    :func:`extract_member` as ``inspect``: ``passed`` tells whether the member just written
    was checked whole and passed. Such a file need not be read back to be shown intact
    (the closing verify of a fetch); one that failed or was not checked is read by the
    verify, which names the problem."""

    __slots__ = ("rule", "passed")

    def __init__(self, rule: Callable[[bytes | memoryview], str | None]) -> None:
        self.rule = rule
        self.passed = False

    def __call__(self, data: bytes | memoryview) -> None:
        self.passed = self.rule(data) is None

    @classmethod
    def for_format(cls, fmt: str | None) -> Vouched | None:
        """The check for images of ``fmt``; None where the writers check nothing (DICOM: its
        header check parses, which the verify does from the file)."""
        return cls(jpeg_problem) if fmt == "jpeg" else None

    @classmethod
    def for_file(cls, name: str) -> Vouched | None:
        """The check for an image file so named, as :meth:`for_format` for its format."""
        return cls.for_format(_format_of(name))

    @staticmethod
    def streamed(name: str) -> JpegEnds | None:
        """The same check of a file so named whose content passes by in pieces (``feed``
        each, then ``problem()``); None where :meth:`for_file` checks nothing."""
        return JpegEnds() if _format_of(name) == "jpeg" else None


def _format_of(name: str) -> str | None:
    """The format whose writers check a file so named (``.jpg``: JPEG), else None."""
    return "jpeg" if name.endswith(".jpg") else None


def read_checked(read_at: Callable[[int, int], bytes], at: int, n: int) -> bytes:
    """``read_at`` of the archive; a failure to *read* it (EINVAL for an offset no file has,
    EIO) is the archive's problem, not the destination disk's."""
    try:
        return read_at(at, n)
    except OSError as exc:
        raise Damaged(f"cannot read the archive at byte {at}: {exc.strerror or exc}") from None


def extract_member(
    read_at: Callable[[int, int], bytes], e: Entry, d: str, final: str, mode: int,
    dir_fd: int | None = None, *, in_place: bool = False,
    inspect: Callable[[bytes | memoryview], object] | None = None,
) -> int:
    """Read stored or deflated member ``e`` through ``read_at`` and write it to ``d/final``,
    checked; returns its size. A member up to :data:`SMALL_MEMBER` costs one read (header and
    data), one inflate, one CRC-32, one write loop and a rename (none with ``in_place`` and
    ``dir_fd``: only for a folder that is no final path, see :class:`MemberFile`).

    ``inspect`` is called with the content of a member decoded in one piece, once it passed
    the CRC-32 and before it is written (a larger member's content is never whole in memory:
    it is not called): the writer's :class:`Vouched` check, which spares a second read."""
    check_method(e)
    guess = LFH.size + len(e.name.encode("utf-8")) + 64
    small = e.compressed_size <= SMALL_MEMBER and e.file_size <= SMALL_MEMBER
    buf = read_checked(read_at, e.header_offset, guess + e.compressed_size if small else guess)
    try:
        if len(buf) < LFH.size:
            raise Damaged("truncated local header")
        hlen = local_header_size(buf, 0, e)
        if len(buf) < hlen:
            buf += read_checked(read_at, e.header_offset + len(buf), hlen - len(buf))
        check_local_name(buf, 0, e)
    except BadZip as exc:
        raise Damaged(str(exc)) from None
    if small and len(buf) >= hlen + e.compressed_size:
        data = decode_whole(e, memoryview(buf)[hlen : hlen + e.compressed_size])
        if inspect is not None:
            inspect(data)
        write_data(d, final, mode, data, dir_fd, in_place=in_place)
        return e.file_size
    f = MemberFile(d, final, mode, dir_fd)
    try:
        dec = Decoder(e, f.write)
        pos, left = e.header_offset + hlen, e.compressed_size
        while left > 0:
            if _stop[0]:
                raise Stopped()
            raw = read_checked(read_at, pos, min(BUFFER, left))
            if not raw:
                raise Damaged("the archive ends inside the member")
            pos += len(raw)
            left -= len(raw)
            dec.feed(raw)
        dec.finish()
        f.commit()
    except BaseException:
        f.discard()
        raise
    return e.file_size


class Flusher:
    """Flush the destination's filesystem (``syncfs``) while members are written and once at
    the end, so that the final flush, which must finish before a record claims completion,
    finds little left to write (the kernel alone would start only at ``dirty_background_ratio``
    of RAM). ``os.sync`` (the whole machine's dirty data) where ``syncfs`` is missing."""

    def __init__(self, d: Path) -> None:
        self._syncfs = syncfs_function()
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
