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

from .errors import VerificationError

if TYPE_CHECKING:
    import pandas as pd

IMAGE_NAME_RE = re.compile(r"^ISIC_\d{7}$")

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
