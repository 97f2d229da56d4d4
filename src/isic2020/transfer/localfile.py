"""A ``file://`` mirror read like a server that answers byte ranges: at any offset, in place.

Why: a subset (``--sample``, ``--images``, ``--where``) or ``--direct`` from a local or
mounted mirror needs only its members' bytes, and a local file can be read at any offset, so
copying the whole 23 GB archive first (what a plain ``file://`` fetch does) would be waste.
:class:`FileRangeClient` is a :class:`~isic2020.transfer.ranges.RangeClient` whose
``stream`` is ``os.pread``: the range pool, the member writer, CRC-32 checks and atomic
landing above it are exactly those of an http(s) mirror.

Invariants: the file is identified by its size and modification time (:func:`stat_file`,
the ``Last-Modified`` of the cache key); a file whose size changed while it is read is an
:class:`~isic2020.errors.ObjectChanged`, as a changed object on a server; a file that cannot
be opened is a :class:`~isic2020.transfer.retry.HostFailed` (the next mirror or host takes
over). Nothing is ever written next to the mirror.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from isic2020.errors import Interrupted, ObjectChanged
from isic2020.transfer.ranges import RangeClient, Sink
from isic2020.transfer.retry import HostFailed


def is_file_url(url: str) -> bool:
    """``url`` is read from the local filesystem: its scheme is ``file``, in any case
    (``FILE://`` too: RFC 3986 schemes are case-insensitive, and ``--mirror`` accepts it).
    The one test of it: the copy, the range reads, the probes and the dry run must agree."""
    return url[:7].lower() == "file://"


def file_path(url: str) -> Path:
    """The local path of a ``file://`` URL (percent-escapes decoded)."""
    return Path(unquote(urlsplit(url).path))


def stat_file(url: str) -> tuple[int, None, str]:
    """``(size, etag, last_modified)`` of a ``file://`` URL, like a HEAD: no ETag, the
    modification time as an HTTP date. HostFailed when it cannot be read."""
    path = file_path(url)
    try:
        st = path.stat()
    except OSError as exc:
        raise HostFailed(f"{path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise HostFailed(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise HostFailed(f"{path}: permission denied")
    from email.utils import formatdate  # only a local mirror needs it: not a start-up cost

    return st.st_size, None, formatdate(st.st_mtime, usegmt=True)


class FileRangeClient(RangeClient):
    """Byte ranges of a local file, through the same interface as ranged GETs."""

    def __init__(self, url: str, size: int, etag: str | None, last_modified: str | None,
                 **kwargs: Any) -> None:
        super().__init__(url, size, etag, last_modified, **kwargs)
        self.path = file_path(url)

    def stream(self, session: Any, start: int, end: int, sink: Sink,
               buffer: bytearray | None = None) -> None:
        """Feed ``sink`` every byte of ``[start, end)``, in order, read into ``buffer`` (as
        :meth:`RangeClient.stream`: the sink is lent each block)."""
        view = self.block_view(buffer)
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise HostFailed(f"{self.path}: {exc.strerror or exc}") from None
        try:
            if os.fstat(fd).st_size != self.size:
                raise ObjectChanged(f"{self.path}: size changed while it was read")
            pos = start
            while pos < end:
                if self.abort.is_set():
                    raise Interrupted("aborted")
                try:
                    n = os.preadv(fd, [view[: min(len(view), end - pos)]], pos)
                except OSError as exc:
                    raise HostFailed(f"{self.path}: {exc.strerror or exc}") from None
                if not n:
                    raise ObjectChanged(f"{self.path}: shorter than {self.size} bytes now")
                pos += n
                with self.lock:
                    self.transferred += n
                self.window.progressed()
                if self.on_bytes is not None:
                    self.on_bytes(n)
                sink(view[:n])
        finally:
            os.close(fd)


def range_client(url: str, size: int, etag: str | None, last_modified: str | None,
                 **kwargs: Any) -> RangeClient:
    """The client that reads ``url`` by range: ranged GETs, or ``pread`` for ``file://``."""
    cls = FileRangeClient if is_file_url(url) else RangeClient
    return cls(url, size, etag, last_modified, **kwargs)
