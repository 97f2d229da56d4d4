"""What a whole JPEG file looks like: the one rule of every check of the dataset's JPEGs.

A JPEG starts with the SOI marker ``FFD8`` and ends with the EOI marker ``FFD9``. Trailing zero
bytes after EOI are tolerated (some encoders pad to a block, and zeros carry no image data),
looked for in the last :data:`PADDING_WINDOW` bytes; a truncated file ends in entropy-coded
data, not ``FFD9``. The same rule is applied to bytes in memory (a member just inflated and
CRC-checked, a sample about to be sharded) and to a file on disk (``verify``), so a file
passes one exactly when it passes the other.
"""

from __future__ import annotations

import os
from collections import deque

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
#: How far back from the end the EOI marker is looked for past zero padding.
PADDING_WINDOW = 65536

EMPTY = "empty file"
NO_SOI = "not a JPEG (no SOI marker FFD8 at the start)"
NO_EOI = "truncated JPEG (no EOI marker FFD9 at the end)"


def padded_end(tail: bytes | memoryview) -> bool:
    """Do the last bytes of a file (at most :data:`PADDING_WINDOW` of them) end with EOI,
    once trailing zeros are dropped?"""
    return bytes(tail[-PADDING_WINDOW:]).rstrip(b"\x00").endswith(EOI)


def jpeg_problem(data: bytes | memoryview) -> str | None:
    """Why ``data`` (a whole file's content) is not a whole JPEG, or ``None``."""
    if len(data) == 0:
        return EMPTY
    if len(data) < 4 or bytes(data[:2]) != SOI:
        return NO_SOI
    if bytes(data[-2:]) == EOI or padded_end(data):
        return None
    return NO_EOI


class JpegEnds:
    """:func:`jpeg_problem` of content that passes by in pieces (a member streamed to its
    file, never whole in memory): the rule reads only the size, the first two bytes and the
    last :data:`PADDING_WINDOW`, so those are all that is kept (references to the last pieces,
    at most the window plus one piece: memory stays flat). :meth:`problem` is exactly
    ``jpeg_problem`` of the concatenated pieces."""

    __slots__ = ("size", "head", "pieces", "kept")

    def __init__(self) -> None:
        self.size = 0
        self.head = b""
        self.pieces: deque[bytes | memoryview] = deque()
        self.kept = 0  # bytes in ``pieces``

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        if not n:
            return
        if len(self.head) < 2:
            self.head += bytes(data[: 2 - len(self.head)])
        self.size += n
        self.pieces.append(data)
        self.kept += n
        while self.kept - len(self.pieces[0]) >= PADDING_WINDOW:
            self.kept -= len(self.pieces.popleft())

    def problem(self) -> str | None:
        tail = b"".join(self.pieces)
        if len(tail) == self.size:  # every byte is still here
            return jpeg_problem(tail)
        # More than the window passed: SOI (when it is there) stands in for what was dropped,
        # which the rule never reads (it reads the size only to tell 0 and < 4 bytes).
        return NO_SOI if self.head != SOI else jpeg_problem(SOI + tail[-PADDING_WINDOW:])


def jpeg_file_problem(fd: int) -> str | None:
    """:func:`jpeg_problem` of the file open as ``fd``, from at most three ``pread``."""
    size = os.fstat(fd).st_size
    if size == 0:
        return EMPTY
    if size < 4 or os.pread(fd, 2, 0) != SOI:
        return NO_SOI
    tail = os.pread(fd, 2, size - 2)
    if tail == EOI:
        return None
    if tail.endswith(b"\x00") and padded_end(
            os.pread(fd, min(size, PADDING_WINDOW), max(0, size - PADDING_WINDOW))):
        return None
    return NO_EOI
