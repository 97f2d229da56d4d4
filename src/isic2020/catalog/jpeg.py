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
