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
