"""The one JPEG rule (``catalog.jpeg``): bytes in memory and a file on disk are judged alike.

Why it matters: a fetch vouches for an image from the check on its bytes as they were written,
and ``verify`` reads files; ``export`` checks bytes it streams. If the two readings of the rule
differed, a fetch could call an image intact that ``verify`` then calls damaged (or the other
way round).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isic2020.catalog.jpeg import (
    EMPTY,
    NO_EOI,
    NO_SOI,
    PADDING_WINDOW,
    JpegEnds,
    jpeg_file_problem,
    jpeg_problem,
)

BODY = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8

CASES = {
    "whole": (BODY + b"\xff\xd9", None),
    "padded with zeros": (BODY + b"\xff\xd9" + b"\x00" * 1000, None),
    "padded up to the window": (BODY + b"\xff\xd9" + b"\x00" * (PADDING_WINDOW - 2), None),
    "padded past the window": (BODY + b"\xff\xd9" + b"\x00" * PADDING_WINDOW, NO_EOI),
    "cut short": (BODY, NO_EOI),
    "cut short, then zeros": (BODY + b"\x00" * 10, NO_EOI),
    "no SOI": (b"\x00\x00" + BODY[2:] + b"\xff\xd9", NO_SOI),
    "empty": (b"", EMPTY),
    "three bytes": (b"\xff\xd8\xd9", NO_SOI),
    "markers only": (b"\xff\xd8\xff\xd9", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_and_file_get_the_same_verdict(case: str, tmp_path: Path) -> None:
    data, expected = CASES[case]
    assert jpeg_problem(data) == expected
    assert jpeg_problem(memoryview(data)) == expected
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert jpeg_file_problem(fd) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("piece", [1, 3, 1000, PADDING_WINDOW - 1, PADDING_WINDOW + 5])
def test_content_in_pieces_gets_the_verdict_of_the_whole(case: str, piece: int) -> None:
    """A member streamed to its file (``JpegEnds``) is judged as if it were whole, however it
    is cut, and with the window's worth of the end of a much larger file."""
    data, expected = CASES[case]
    for content, want in ((data, expected), (_widened(data), expected)):
        ends = JpegEnds()
        for at in range(0, len(content), piece):
            ends.feed(memoryview(content)[at : at + piece])
        assert ends.problem() == want == jpeg_problem(content)
        assert ends.kept <= PADDING_WINDOW + piece  # flat, whatever the size


def _widened(data: bytes) -> bytes:
    """``data`` with 3 windows more in its middle (its start and end as they were), so the
    pieces' check must judge from what it kept of the end."""
    if len(data) < 4:
        return data
    return data[:2] + b"\x01" * (3 * PADDING_WINDOW) + data[2:]
