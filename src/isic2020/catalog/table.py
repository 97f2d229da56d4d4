"""A small pandas-free table of strings, and the stdlib ``csv`` reader that fills it.

Why: ``import pandas`` alone costs ~96 MB of RSS and ~0.3-0.5 s; the metadata checks of
``fetch`` and ``verify`` (``checks.metadata``) need no DataFrame, only the cells as strings. A
fetch's peak RSS must stay under 150 MB, so every metadata reader is this module, and pandas
only turns a table into a frame where one is returned (``catalog.tables``: ``load_metadata``,
folds, export, ``--where``).

Invariants (the semantics of ``pd.read_csv(dtype="string", keep_default_na=False,
na_values=[""])``, with which ``load_metadata`` read the CSVs before it was built on this
reader; checked against ``pandas.read_csv`` in tests/catalog/test_table.py):

* every cell is a ``str`` or ``None``; only an empty field (quoted or not) is ``None``: "NA",
  "nan", "null" stay strings;
* CRLF, LF or CR line ends, with or without a final newline; a UTF-8 BOM is dropped; blank
  and whitespace-only lines are skipped; quoted fields may hold commas, quotes (``""``) and
  line breaks;
* a row with fewer fields than the header is padded with ``None``; a row with more is an
  error naming its line (pandas would silently take the first column of such a first row as
  an index, and report a later one as ``Error tokenizing data``); so is a quote still open at
  the end of the file;
* header names as pandas makes them: an empty one is ``Unnamed: <i>``, a repeated one gets
  ``.1``, ``.2``... (the caller strips and checks them).

Cells are stored by column, and equal strings of one column are one object (sex, site,
diagnosis repeat 33k times): a few MB for the whole ground truth.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

Cell = str | None
#: Rows parsed (and turned into columns) per C call. One call over a whole 33k-row CSV holds
#: the GIL for ~0.1 s, in which a download beside it (a fetch checks the CSVs while its
#: archive streams in) receives nothing; pieces let its threads in between.
PIECE_ROWS = 1000


class TableError(ValueError):
    """The file does not parse as a CSV; the message is one line (``line 7 has 9 fields...``)."""


@dataclass(frozen=True)
class Table:
    """Named columns of string cells (``None`` = blank), all of the same length."""

    columns: tuple[str, ...]
    cells: tuple[tuple[Cell, ...], ...]  # one tuple per column, in ``columns`` order

    def __post_init__(self) -> None:
        if len(self.columns) != len(self.cells):
            raise ValueError("one tuple of cells per column")
        if len({len(c) for c in self.cells}) > 1:
            raise ValueError("every column must have the same length")

    def __len__(self) -> int:
        return len(self.cells[0]) if self.cells else 0

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> tuple[Cell, ...]:
        """The cells of column ``name`` (KeyError when there is none)."""
        try:
            return self.cells[self.columns.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def row(self, i: int) -> tuple[Cell, ...]:
        return tuple(c[i] for c in self.cells)

    def records(self) -> Iterator[dict[str, Cell]]:
        """Each row as ``{column: cell}``."""
        for values in zip(*self.cells):
            yield dict(zip(self.columns, values))

    def select(self, names: Iterable[str]) -> Table:
        names = tuple(names)
        return Table(names, tuple(self[n] for n in names))

    def rename(self, mapping: dict[str, str]) -> Table:
        return Table(tuple(mapping.get(c, c) for c in self.columns), self.cells)

    def with_column(self, name: str, cells: Iterable[Cell]) -> Table:
        """This table with column ``name`` set to ``cells`` (appended when it is new)."""
        values = tuple(cells)
        if name in self.columns:
            i = self.columns.index(name)
            return Table(self.columns, (*self.cells[:i], values, *self.cells[i + 1 :]))
        return Table((*self.columns, name), (*self.cells, values))

    def filter(self, keep: Callable[[dict[str, Cell]], bool]) -> Table:
        """The rows for which ``keep(record)`` is true, in order."""
        rows = [i for i, r in enumerate(self.records()) if keep(r)]
        return Table(self.columns, tuple(tuple(c[i] for i in rows) for c in self.cells))


class _ColumnBuilder:
    """One column's cells, built a piece of rows at a time: ``""`` -> ``None``, else
    (``strip``) stripped; equal strings one object across the whole column. ``map`` of C
    functions over the cells: a Python call per cell would cost a second for the 300k cells of
    the ground truth. Each piece's raw strings are freed as soon as it is added, so the file's
    300k field strings never exist at once (they cost ~40 MB of peak RSS in a ``folds``)."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.canon: dict[str, str] = {}
        self.out: list[Cell] = []

    def add(self, cells: Sequence[str]) -> None:
        values = list(map(str.strip, cells)) if self.strip else cells
        part: list[Cell] = list(map(self.canon.setdefault, values, values))
        if "" in cells:  # blank (raw "") is None; a cell of spaces stripped to "" is not
            part = [None if raw == "" else v for raw, v in zip(cells, part)]
        self.out += part

    def cells(self) -> tuple[Cell, ...]:
        return tuple(self.out)


def _header_names(raw: list[str]) -> tuple[str, ...]:
    """pandas' names: ``Unnamed: <i>`` for an empty one, ``.1``, ``.2``... for repeats."""
    out: list[str] = []
    counts: dict[str, int] = {}
    for i, name in enumerate(raw):
        name = name or f"Unnamed: {i}"
        base = name
        while name in counts:
            counts[base] += 1
            name = f"{base}.{counts[base]}"
        counts.setdefault(name, 0)
        out.append(name)
    return tuple(out)


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip(" \t"))


def _text(path: Path) -> str:
    """The file decoded whole (a few MB at most), so a bad byte is named by its offset in the
    file and its line, not by an offset in some chunk of a streaming decoder."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TableError(f"{exc} (line {line})") from None


def _parse(text: str, strict: bool, strip: bool) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), strict=strict)
    header: tuple[str, ...] | None = None
    columns: list[_ColumnBuilder] = []
    try:
        while block := list(islice(reader, PIECE_ROWS)):
            rows = [r for r in block if len(r) > 1 or not _blank(r)]
            if header is None and rows:
                header = _header_names(rows.pop(0))
                columns = [_ColumnBuilder(strip) for _ in header]
            if not rows or header is None:
                continue
            n = len(header)
            if any(len(r) != n for r in rows):
                if any(len(r) > n for r in rows):
                    _first_problem(text, strict)
                rows = [r if len(r) == n else r + [""] * (n - len(r)) for r in rows]
            for column, part in zip(columns, zip(*rows)):
                column.add(part)
    except csv.Error:
        _first_problem(text, strict)
        raise
    if header is None:
        raise TableError("No columns to parse from file")
    cells = []
    while columns:  # each builder freed once its tuple is made
        cells.append(columns.pop(0).cells())
    return Table(header, tuple(cells))


def _first_problem(text: str, strict: bool) -> None:
    """Raise :class:`TableError` naming the line where the first record that does not parse,
    or has more fields than the header, starts (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=strict)
    n = 0
    start = 1
    try:
        for row in reader:
            if len(row) > 1 or not _blank(row):
                if not n:
                    n = len(row)
                elif len(row) > n:
                    raise TableError(f"line {start} has {len(row)} fields, the header {n}")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise TableError(f"line {start}: {exc}") from None


def read_table(path: Path, *, strip: bool = False) -> Table:
    """The CSV at ``path`` as a :class:`Table` (see the module docstring for the rules).

    ``strip``: each non-blank cell stripped of surrounding whitespace (after the blank test, as
    ``df[c].str.strip()`` after ``read_csv``: a cell of spaces becomes ``""``, not blank).

    Raises FileNotFoundError, OSError or :class:`TableError` (one line).
    """
    text = _text(path)
    try:
        return _parse(text, strict=True, strip=strip)
    except TableError as exc:
        if "unexpected end of data" in str(exc):  # a quote open at the end of the file
            line = str(exc).split(":")[0]  # "line <n>", where the record starts
            raise TableError(f"EOF inside string starting at {line} (a quote is never "
                             "closed)") from None
    # ``"ab"c`` (text after a closing quote) is an error only in strict mode; pandas reads it
    # as ``abc``, and so does the lenient reader.
    return _parse(text, strict=False, strip=strip)
