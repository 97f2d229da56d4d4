"""How sizes and progress look to a user, in one place.

Sizes are decimal (``23.1 MB``), as the dataset's published sizes and ``df -H`` are, and the
progress bars count in the same units, so a bar and the summary under it never disagree
(MiB in one, MB in the other). Bars go to stderr and only when asked (a terminal, not
``--json``/``--quiet``); tqdm is imported only then, so the CLI starts fast without it.
"""

from __future__ import annotations

from typing import Any

_UNITS = ("B", "KB", "MB", "GB", "TB")


def human_size(n: float) -> str:
    """``0 B``, ``999 B``, ``1.0 KB`` ... ``23.1 GB``: decimal units, one decimal past bytes."""
    for unit in _UNITS:
        if abs(n) < 1000 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``: counts in messages read as a person would write them."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def progress_bar(total: int | None, desc: str, *, unit: str = "B", leave: bool = False) -> Any:
    """One tqdm bar: bytes in decimal units (like :func:`human_size`), or counted items."""
    from tqdm import tqdm

    if unit == "B":
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=desc,
                    leave=leave, dynamic_ncols=True, mininterval=0.5)
    return tqdm(total=total, unit=unit, desc=desc, leave=leave, dynamic_ncols=True,
                mininterval=0.5)
