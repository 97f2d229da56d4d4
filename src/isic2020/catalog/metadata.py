"""The metadata CSVs: their schemas, and reading them into one set of column names.

The facts (from the official files, see the project README): the training ground truth has
``image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,
benign_malignant,target`` (v2 adds ``lesion_id`` after ``patient_id``); the duplicates list has
``image_name_1,image_name_2``; the official test metadata is believed to use ISIC names
``image,patient,sex,age_approx,anatom_site_general`` while Kaggle's test.csv uses the Kaggle
names. Both are accepted and normalised to Kaggle's names, which every notebook expects.
Files are CRLF with or without a final newline: we validate content, never bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from isic2020.errors import VerificationError

if TYPE_CHECKING:
    import pandas as pd

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


def read_metadata_csv(path: Path, role: str) -> pd.DataFrame:
    """Read one official CSV as strings (blanks as ``<NA>``), Kaggle column names.

    Raises :class:`VerificationError` naming the file when it is missing, unparsable or has
    columns other than the documented ones.
    """
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise VerificationError(
            f"{path} is missing", "run `isic2020 fetch` to download the metadata"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(
            f"{path} is not a readable CSV: {first}",
            "delete it and run `isic2020 fetch` again",
        ) from None
    cols = [c.strip() for c in df.columns]
    df.columns = cols
    allowed = SCHEMAS[role]
    if cols not in allowed:
        raise VerificationError(
            f"{path}: columns {','.join(cols)} are not the documented "
            + " or ".join(",".join(a) for a in allowed),
            "the file is not the official one; delete it and run `isic2020 fetch` again",
        )
    if role == "test_metadata" and cols == TEST_COLUMNS_ISIC:
        df = df.rename(columns=ISIC_TO_KAGGLE)
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def bad_image_names(names: pd.Series) -> list[str]:
    """Names that are not ``ISIC_`` + seven digits (blank names included)."""
    s = names.fillna("")
    return [str(n) for n in s[~s.str.fullmatch(IMAGE_NAME_RE.pattern)]]


PATIENT_RE = re.compile(r"^IP_[0-9]{7}$")
#: A cell a spreadsheet would run as a formula starts with one of these ("CSV injection";
#: tab and CR are stripped by :func:`read_metadata_csv`, which leaves what follows them). No
#: value of the official files starts with one: ids start with letters, ages are whole
#: non-negative numbers, sites and diagnoses are words.
FORMULA_START = ("=", "+", "-", "@")
_UNSAFE_CELL = re.compile(r"[=+\-@]|.*[\x00-\x1f\x7f]", re.DOTALL)
_SEP = "\x1e"
_FORMULA_IN_JOINED = re.compile(r"(?:^|\x1e)[=+\-@]")
_OTHER_CONTROL = re.compile(r"[\x00-\x1d\x1f\x7f]")  # all but the separator


def formula_problems(df: pd.DataFrame) -> list[str]:
    """Cells that would be a formula (or hold control characters) in a spreadsheet that opens
    an exported CSV: a mirror's metadata must never reach ``train.csv`` or ``folds.csv`` with
    ``=HYPERLINK(...)`` or ``+cmd|...`` in it."""
    out: list[str] = []
    key = df.columns[0]
    for col in df.columns:
        values = df[col].dropna().unique().to_numpy(dtype=object)
        # Fast path (a few ms for 33k names): one search over the values joined by a record
        # separator (a control character too: it must occur exactly n - 1 times).
        text = _SEP.join(values)
        if (
            not _FORMULA_IN_JOINED.search(text)
            and not _OTHER_CONTROL.search(text)
            and text.count(_SEP) == max(0, len(values) - 1)
        ):
            continue
        bad = [v for v in values if _UNSAFE_CELL.match(v)]
        if not bad:
            continue
        hit = df[col].isin(bad)
        for name, v in df.loc[hit, [key, col]].head(50).itertuples(index=False):
            out.append(f"{name}: {col} {v!r} would be a spreadsheet formula or control text")
    return out


def value_problems(df: pd.DataFrame) -> list[str]:
    """Malformed values of one metadata frame (Kaggle column names; blanks allowed where the
    real files have them): the checks ``verify`` reports, and what ``load_metadata``,
    ``export`` and ``folds`` refuse (one line naming the file and the first problem)."""
    import pandas as pd

    out = formula_problems(df)
    key = df.columns[0]

    def bad(col: str, ok: pd.Series, what: str) -> None:
        vals = df.loc[~ok.fillna(False), [key, col]]
        for name, v in vals.head(50).itertuples(index=False):
            out.append(f"{name}: {col} {v!r} is not {what}")

    if "patient_id" in df:
        bad("patient_id", df["patient_id"].fillna("").str.fullmatch(PATIENT_RE.pattern),
            "IP_ + 7 digits")
    # lesion_id is not checked for form: the official v2 file has ``0`` for ISIC_3746471.
    if "sex" in df:
        bad("sex", df["sex"].isna() | df["sex"].isin(["male", "female"]), "male/female/blank")
    if "age_approx" in df:
        ages = pd.to_numeric(df["age_approx"], errors="coerce")
        bad("age_approx", df["age_approx"].isna() | ages.between(0, 120), "an age")
    if "target" in df:
        consistent = ((df["target"] == "1") & (df["benign_malignant"] == "malignant")) | (
            (df["target"] == "0") & (df["benign_malignant"] == "benign")
        )
        bad("target", consistent, "consistent with benign_malignant")
    if "diagnosis" in df and "target" in df:
        # In the official files melanoma and target 1 coincide exactly (584 rows).
        bad("diagnosis", (df["diagnosis"] == "melanoma") == (df["target"] == "1"),
            "consistent with target")
    return out


def check_values(df: pd.DataFrame, path: Path) -> None:
    """Raise :class:`VerificationError` naming ``path`` and its first malformed value."""
    problems = value_problems(df)
    if problems:
        raise VerificationError(
            f"{path}: {len(problems)} malformed value(s) (first: {problems[0]})",
            "the file is not the official one; delete it and run `isic2020 fetch` again "
            "(`isic2020 verify` lists every problem)",
        )
