"""Byte intervals (what is written, what is missing) and how big a ranged request is.

Intervals are half-open ``[start, end)`` lists of two ints, kept sorted, disjoint and
non-adjacent, so the state file and the hashing frontier can be read off them directly.
"""

from __future__ import annotations

import math

from isic2020.transfer.model import DEFAULT_CHUNK, MiB


def add_interval(done: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Merge ``[start, end)`` into sorted, disjoint, non-adjacent byte intervals."""
    out: list[list[int]] = []
    placed = False
    for a, b in done:
        if b < start or a > end:
            if not placed and a > end:
                out.append([start, end])
                placed = True
            out.append([a, b])
        else:
            start, end = min(a, start), max(b, end)
    if not placed:
        out.append([start, end])
    return sorted(out)


def missing_ranges(done: list[list[int]], size: int) -> list[tuple[int, int]]:
    """The byte ranges of ``[0, size)`` not covered by ``done``."""
    out = []
    pos = 0
    for a, b in done:
        if min(a, size) > pos:
            out.append((pos, min(a, size)))
        pos = max(pos, b)
    if pos < size:
        out.append((pos, size))
    return out


def plan_chunk(size: int, connections: int, base: int = DEFAULT_CHUNK) -> int:
    """Bytes per ranged request: about ``base``, but a whole multiple of ``connections``
    chunks, so the last round keeps every connection busy instead of one chunk running alone.
    Never under 1 MiB (or ``base`` if smaller): requests have a fixed cost.
    """
    if size <= 0:
        return max(1, base)
    rounds = max(1, math.ceil(size / (connections * base)))
    chunk = math.ceil(size / (rounds * connections))
    chunk = math.ceil(chunk / (64 * 1024)) * 64 * 1024
    return max(chunk, min(base, MiB))


def cut(ranges: list[tuple[int, int]], step: int) -> list[tuple[int, int]]:
    """Every range cut into pieces of at most ``step`` bytes, in order."""
    return [(a, min(end, a + step)) for start, end in ranges for a in range(start, end, step)]
