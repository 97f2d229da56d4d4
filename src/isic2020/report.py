"""How sizes, counts, reports and progress look to a user, in one place.

Sizes are decimal (``23.1 MB``), as the dataset's published sizes and ``df -H`` are, and the
progress bars count in the same units, so a bar and the summary under it never disagree
(MiB in one, MB in the other). Bars go to stderr and only when asked (a terminal, not
``--json``/``--quiet``); tqdm is imported only then, so the CLI starts fast without it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

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


_SCALARS = (str, int, float, bool, type(None))


def _short(value: Any) -> str:
    """A field's value as a repr shows it: scalars as they are, a long string cut, a table by
    its shape, a collection by its length unless it is a few scalars."""
    if hasattr(value, "shape") and hasattr(value, "columns"):  # a pandas DataFrame
        return f"<{type(value).__name__} {value.shape[0]} rows x {value.shape[1]} columns>"
    if isinstance(value, float):
        return repr(round(value, 3))
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.values()) if isinstance(value, dict) else list(value)
        text = repr(value)
        if len(items) <= 4 and all(isinstance(v, _SCALARS) for v in items) and len(text) <= 80:
            return text
        return f"<{len(items)} {'item' if len(items) == 1 else 'items'}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"<{type(value).__name__}>"
    return repr(value)


def readable_repr(cls: type[T]) -> type[T]:
    """Give a report dataclass a repr a person can read in a notebook: every field, but lists
    of checks, rows or files as their count (``checks=<12 items>``), never pages of them."""

    def __repr__(self: Any) -> str:
        shown = [f"{f.name}={_short(vars(self)[f.name])}"
                 for f in dataclasses.fields(self) if f.repr]
        return f"{type(self).__name__}({', '.join(shown)})"

    cls.__repr__ = __repr__  # type: ignore[assignment,method-assign]
    return cls
