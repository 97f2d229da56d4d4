"""The metadata CSVs: their schemas, and reading them into one set of column names.

The facts (from the official files, see the project README): the training ground truth has
``image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,
benign_malignant,target`` (v2 adds ``lesion_id`` after ``patient_id``); the duplicates list has
``image_name_1,image_name_2``; the official test metadata is believed to use ISIC names
``image,patient,sex,age_approx,anatom_site_general`` while Kaggle's test.csv uses the Kaggle
names. Both are accepted and normalised to Kaggle's names, which every notebook expects.
Files are CRLF with or without a final newline: we validate content, never bytes.

One reader: :func:`read_metadata_table` (the stdlib ``csv`` module into a pandas-free
:class:`~isic2020.catalog.table.Table`). Importing pandas alone is ~96 MB of RSS, so the checks
of ``fetch`` and ``verify`` and the choice of a subset (``--sample``, ``--images``) never need
it; ``catalog.tables`` turns a table into a frame only where one is returned
(``load_metadata``, folds, export, ``--where``). The cells are what ``pd.read_csv(dtype=
"string", keep_default_na=False, na_values=[""])`` then ``str.strip`` gave (checked against
pandas in tests/catalog/test_table.py). Every rule exists once, on tables: the value rules
(:func:`value_problems`, :func:`bad_image_names`) and the refusals of a training, test or
duplicates file (:func:`read_train_table`, :func:`read_test_table`,
:func:`read_duplicates_table`), which name the file and the first problem in one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from isic2020.catalog.table import Cell, Table, read_table
from isic2020.errors import VerificationError

IMAGE_NAME_RE = re.compile(r"^ISIC_[0-9]{7}$")

GROUND_TRUTH_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]
GROUND_TRUTH_V2_COLUMNS = [
    "image_name",
    "patient_id",
    "lesion_id",
    *GROUND_TRUTH_COLUMNS[2:],
]
DUPLICATES_COLUMNS = ["image_name_1", "image_name_2"]
TEST_COLUMNS_KAGGLE = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
]
TEST_COLUMNS_ISIC = ["image", "patient", "sex", "age_approx", "anatom_site_general"]
ISIC_TO_KAGGLE = dict(zip(TEST_COLUMNS_ISIC, TEST_COLUMNS_KAGGLE))

SCHEMAS: dict[str, list[list[str]]] = {
    "ground_truth": [GROUND_TRUTH_COLUMNS],
    "ground_truth_v2": [GROUND_TRUTH_V2_COLUMNS],
    "duplicates": [DUPLICATES_COLUMNS],
    "test_metadata": [TEST_COLUMNS_ISIC, TEST_COLUMNS_KAGGLE],
}


def _check_columns(path: Path, raw: Iterable[str], role: str) -> list[str]:
    """The header names stripped; raises unless they are one of the role's schemas."""
    cols = [str(c).strip() for c in raw]
    allowed = SCHEMAS[role]
    if cols not in allowed:
        raise VerificationError(
            f"{path}: columns {','.join(cols)} are not the documented "
            + " or ".join(",".join(a) for a in allowed),
            "the file is not the official one; delete it and run `isic2020 fetch` again",
        )
    return cols


def _missing(path: Path) -> VerificationError:
    return VerificationError(f"{path} is missing", "run `isic2020 fetch` to download the metadata")


def _unreadable(path: Path, exc: Exception) -> VerificationError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return VerificationError(
        f"{path} is not a readable CSV: {first}", "delete it and run `isic2020 fetch` again"
    )


def read_metadata_table(path: Path, role: str) -> Table:
    """One official CSV as stripped strings (blanks ``None``), Kaggle column names.

    Raises :class:`VerificationError` naming the file when it is missing, unparsable or has
    columns other than the documented ones (what ``verify`` reports; no value is checked).
    """
    try:
        table = read_table(path, strip=True)
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # TableError is a ValueError
        raise _unreadable(path, exc) from None
    cols = _check_columns(path, table.columns, role)
    table = Table(tuple(cols), table.cells)
    if role == "test_metadata" and cols == TEST_COLUMNS_ISIC:
        table = table.rename(ISIC_TO_KAGGLE)
    return table


def bad_image_names(names: Iterable[object]) -> list[str]:
    """Names that are not ``ISIC_`` + seven digits (blank names included, as ``""``)."""
    out = []
    for n in names:
        s = n if isinstance(n, str) else ""
        if not IMAGE_NAME_RE.fullmatch(s):
            out.append(s)
    return out


PATIENT_RE = re.compile(r"^IP_[0-9]{7}$")
#: A cell a spreadsheet would run as a formula starts with one of these ("CSV injection";
#: tab and CR are stripped by :func:`read_metadata_table`, which leaves what follows them). No
#: value of the official files starts with one: ids start with letters, ages are whole
#: non-negative numbers, sites and diagnoses are words.
FORMULA_START = ("=", "+", "-", "@")
_UNSAFE_CELL = re.compile(r"[=+\-@]|.*[\x00-\x1f\x7f]", re.DOTALL)
_SEP = "\x1e"
_FORMULA_IN_JOINED = re.compile(r"(?:^|\x1e)[=+\-@]")
_OTHER_CONTROL = re.compile(r"[\x00-\x1d\x1f\x7f]")  # all but the separator
_AGE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_LINES = 50  # problem lines per rule and column


def _name(v: Cell) -> str:
    return "<NA>" if v is None else v


def _show(v: Cell) -> str:
    return "<NA>" if v is None else repr(v)


def formula_problems(table: Table) -> list[str]:
    """Cells that would be a formula (or hold control characters) in a spreadsheet that opens
    an exported CSV: a mirror's metadata must never reach ``train.csv`` or ``folds.csv`` with
    ``=HYPERLINK(...)`` or ``+cmd|...`` in it."""
    out: list[str] = []
    keys = table[table.columns[0]]
    for col, cells in zip(table.columns, table.cells):
        values = [v for v in dict.fromkeys(cells) if v is not None]
        # Fast path (a few ms for 33k names): one search over the values joined by a record
        # separator (a control character too: it must occur exactly n - 1 times).
        text = _SEP.join(values)
        if (
            not _FORMULA_IN_JOINED.search(text)
            and not _OTHER_CONTROL.search(text)
            and text.count(_SEP) == max(0, len(values) - 1)
        ):
            continue
        bad = {v for v in values if _UNSAFE_CELL.match(v)}
        hits = [(k, v) for k, v in zip(keys, cells) if v in bad][:MAX_LINES]
        out += [f"{_name(k)}: {col} {v!r} would be a spreadsheet formula or control text"
                for k, v in hits]
    return out


def _number(v: Cell) -> float | None:
    """What ``pd.to_numeric(errors="coerce")`` makes of a cell (``None``: NaN)."""
    if v is None or not v.isascii() or not _AGE.fullmatch(v):
        return None
    return float(v)


def _is_age(v: Cell) -> bool:
    """What ``pd.to_numeric(errors="coerce").between(0, 120)`` accepts (blank handled apart)."""
    x = _number(v)
    return x is not None and 0 <= x <= 120


def value_problems(table: Table) -> list[str]:
    """Malformed values of one metadata table (Kaggle column names; blanks allowed where the
    real files have them): the checks ``verify`` reports, and what ``load_metadata``,
    ``export`` and ``folds`` refuse (one line naming the file and the first problem)."""
    out = formula_problems(table)
    keys = table[table.columns[0]]

    def bad(col: str, ok: Callable[[Any], bool], what: str, other: str | None = None) -> None:
        # ``ok`` of each distinct cell (or pair of cells with ``other``), then C-speed lookups:
        # a Python call per cell would take seconds for the 33k rows of the ground truth.
        cells = table[col]
        keyed: Sequence[Any] = cells if other is None else list(zip(cells, table[other]))
        verdict = {x: ok(x) for x in dict.fromkeys(keyed)}
        if all(verdict.values()):
            return
        hits = [(k, v) for k, v, x in zip(keys, cells, keyed) if not verdict[x]]
        out.extend(f"{_name(k)}: {col} {_show(v)} is not {what}" for k, v in hits[:MAX_LINES])

    if "patient_id" in table:
        bad("patient_id", lambda v: v is not None and bool(PATIENT_RE.fullmatch(v)),
            "IP_ + 7 digits")
    # lesion_id is not checked for form: the official v2 file has ``0`` for ISIC_3746471.
    if "sex" in table:
        bad("sex", lambda v: v is None or v in ("male", "female"), "male/female/blank")
    if "age_approx" in table:
        bad("age_approx", lambda v: v is None or _is_age(v), "an age")
    if "target" in table:
        bad("target", lambda p: p in (("1", "malignant"), ("0", "benign")),
            "consistent with benign_malignant", other="benign_malignant")
    if "diagnosis" in table and "target" in table:
        # In the official files melanoma and target 1 coincide exactly (584 rows).
        bad("diagnosis", lambda p: None not in p and (p[0] == "melanoma") == (p[1] == "1"),
            "consistent with target", other="target")
    return out


def _refused(path: Path, what: str) -> VerificationError:
    return VerificationError(
        f"{path}: {what}",
        "the file is not the official one; delete it and run `isic2020 fetch` again",
    )


def check_values(table: Table, path: Path) -> None:
    """Raise :class:`VerificationError` naming ``path`` and its first malformed value."""
    problems = value_problems(table)
    if problems:
        raise VerificationError(
            f"{path}: {len(problems)} malformed value(s) (first: {problems[0]})",
            "the file is not the official one; delete it and run `isic2020 fetch` again "
            "(`isic2020 verify` lists every problem)",
        )


def check_image_names(table: Table, path: Path) -> None:
    """Every image named ``ISIC_`` + 7 digits, once, with a patient."""
    names = table["image_name"]
    bad = bad_image_names(names)
    if bad:
        raise _refused(path, f"{len(bad)} image names are not ISIC_ + 7 digits "
                             f"(first: {bad[0]!r})")
    if len(set(names)) != len(names):
        seen: set[Cell] = set()
        for n in names:
            if n in seen:
                raise _refused(path, f"image {n} is listed {names.count(n)} times")
            seen.add(n)
    no_patient = table["patient_id"].count(None)
    if no_patient:
        raise _refused(path, f"{no_patient} rows have no patient_id")


def check_target(table: Table, path: Path) -> None:
    """Every ``target`` a number equal to 0 or 1 (``1.0`` too: the value rules say more)."""
    if not all(_number(v) in (0.0, 1.0) for v in dict.fromkeys(table["target"])):
        raise _refused(path, "target must be 0 or 1 in every row")


def check_ages(table: Table, path: Path) -> None:
    """Every non-blank ``age_approx`` a whole number of years, 0 to 120 (``45.0`` too)."""
    cells = table["age_approx"]

    def whole(v: str) -> bool:
        x = _number(v)
        return x is not None and x % 1 == 0 and 0 <= x <= 120

    verdict = {v: whole(v) for v in dict.fromkeys(cells) if v is not None}
    if all(verdict.values()):
        return
    bad = [v for v in cells if v is not None and not verdict[v]]
    raise _refused(path, f"age_approx is not a whole number of years in {len(bad)} rows "
                         f"(first: {bad[0]!r})")


def read_train_table(path: Path, role: str) -> Table:
    """One training ground truth (v1 or v2), refused unless ``load_metadata`` can type it: the
    names, then ``target``, then the ages, then the value rules (the first problem, one line)."""
    table = read_metadata_table(path, role)
    check_image_names(table, path)
    check_target(table, path)
    check_ages(table, path)
    check_values(table, path)
    return table


def read_test_table(path: Path) -> Table:
    """The test metadata (official ISIC or Kaggle column names, read as Kaggle's), refused as
    :func:`read_train_table` says (no target)."""
    table = read_metadata_table(path, "test_metadata")
    check_image_names(table, path)
    check_ages(table, path)
    check_values(table, path)
    return table


def read_duplicates_table(path: Path, known: Collection[Cell] | None = None) -> Table:
    """The duplicate pairs; with ``known`` (the training image names) every name must be in
    it."""
    table = read_metadata_table(path, "duplicates")
    check_values(table, path)
    for col in DUPLICATES_COLUMNS:
        bad = bad_image_names(table[col])
        if bad:
            raise _refused(path, f"{len(bad)} names in {col} are not ISIC_ + 7 digits "
                                 f"(first: {bad[0]!r})")
    if known is not None:
        names = set(known)
        unknown = [n for col in DUPLICATES_COLUMNS for n in table[col] if n not in names]
        if unknown:
            raise VerificationError(
                f"{path}: {len(unknown)} names are not in the training ground truth "
                f"(first: {unknown[0]})",
                "the metadata files do not belong together; run `isic2020 fetch` again",
            )
    return table
