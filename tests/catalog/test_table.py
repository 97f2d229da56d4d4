"""The one metadata reader (``catalog.table``) against ``pandas.read_csv``, what users got before.

``load_metadata``, folds and export used to read the CSVs with ``pd.read_csv(dtype="string",
keep_default_na=False, na_values=[""])`` then ``str.strip``; ``fetch`` and ``verify`` with the
stdlib ``csv`` module. Now every caller reads them with :func:`read_metadata_table`, and
``load_metadata`` builds its frame from that table (:func:`read_metadata_frame`). So the reader
must give the cells, names and errors pandas gave, and the frame must equal pandas' (values,
dtypes, blanks, index), on the real files and on every CSV edge case the stdlib ``csv`` module
might treat differently from pandas' C parser. :func:`_pandas` is that old reader, verbatim.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from support.metadata import DUPS, GT, GT2, KAGGLE_TEST, real_csv

from isic2020.catalog.manifest import FileEntry
from isic2020.catalog.metadata import (
    ISIC_TO_KAGGLE,
    SCHEMAS,
    TEST_COLUMNS_ISIC,
    read_metadata_table,
)
from isic2020.catalog.table import PIECE_ROWS, Table
from isic2020.catalog.tables import read_metadata_frame
from isic2020.checks.metadata import metadata_checks
from isic2020.errors import VerificationError
from isic2020.store.layout import Layout

HEADER = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
          "benign_malignant,target")
ROW = "ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0"
ROW2 = "ISIC_0000002,IP_0000002,female,,head/neck,melanoma,malignant,1"


def _pandas(path: Path, role: str) -> pd.DataFrame:
    """The pandas reader ``load_metadata`` used before (``read_metadata_csv``), verbatim."""
    try:
        df = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise VerificationError(f"{path} is missing") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"{path} is not a readable CSV: {first}") from None
    cols = [str(c).strip() for c in df.columns]
    if cols not in SCHEMAS[role]:
        raise VerificationError(
            f"{path}: columns {','.join(cols)} are not the documented "
            + " or ".join(",".join(a) for a in SCHEMAS[role]))
    df.columns = cols
    if role == "test_metadata" and cols == TEST_COLUMNS_ISIC:
        df = df.rename(columns=ISIC_TO_KAGGLE)
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def _as_table(df: pd.DataFrame) -> Table:
    return Table(
        tuple(str(c) for c in df.columns),
        tuple(tuple(v if isinstance(v, str) else None for v in df[c].tolist())
              for c in df.columns),
    )


def _both(path: Path, role: str) -> tuple[Table | str, Table | str]:
    """(new, old): the table each reader gives, or its error message; where both read, the
    frame built from the new table must equal pandas' frame (dtypes and index included)."""
    out: list[Table | str] = []
    frames: list[pd.DataFrame] = []
    for read in (read_metadata_table, _pandas):
        try:
            got = read(path, role)
        except VerificationError as exc:
            out.append(exc.message)
        else:
            if isinstance(got, pd.DataFrame):
                frames.append(got)
                got = _as_table(got)
            out.append(got)
    if frames and isinstance(out[0], Table):
        pd.testing.assert_frame_equal(read_metadata_frame(path, role), frames[0],
                                      check_exact=True)
    return out[0], out[1]


EDGE_CASES = {
    "crlf_final_newline": f"{HEADER}\r\n{ROW}\r\n{ROW2}\r\n",
    "lf_no_final_newline": f"{HEADER}\n{ROW}\n{ROW2}",
    "cr_only": f"{HEADER}\r{ROW}\r{ROW2}\r",
    "bom": f"\ufeff{HEADER}\r\n{ROW}\r\n",
    "trailing_blank_lines": f"{HEADER}\r\n{ROW}\r\n\r\n\r\n",
    "blank_and_whitespace_lines_inside": f"{HEADER}\n{ROW}\n\n   \n\t\n{ROW2}\n",
    "quoted_comma": f'{HEADER}\nISIC_0000001,IP_0000001,m,45,"lower, extremity",nevus,benign,0\n',
    "quoted_crlf": f'{HEADER}\r\nISIC_0000001,IP_0000001,male,45,"a\r\nb",nevus,benign,0\r\n',
    "quoted_quote": f'{HEADER}\nISIC_0000001,IP_0000001,male,45,"to""rso",nevus,benign,0\n',
    "quoted_empty_is_blank": f'{HEADER}\nISIC_0000001,"",male,45,"",nevus,benign,0\n',
    "text_after_closing_quote": f'{HEADER}\nISIC_0000001,IP_0000001,"ma"le,45,"x" ,a,b,0\n',
    "quote_inside_unquoted": f'{HEADER}\nISIC_0000001,IP_0000001,ma"le,45,x,a,b,0\n',
    "na_strings_stay": f"{HEADER}\nNA,nan,NaN,null,None,N/A,#N/A,-nan\n",
    "spaces_strip_to_empty_not_blank": f"{HEADER}\n ISIC_0000001 , ,\t,45,torso,nevus,benign,0\n",
    "short_row_padded": f"{HEADER}\nISIC_0000001,IP_0000001,male\n{ROW2}\n",
    "header_names_stripped": HEADER.replace(",", " , ") + f"\r\n{ROW}\r\n",
    "header_only": f"{HEADER}\r\n",
    "nul_byte": f"{HEADER}\nISIC_0000001,IP_0\x00000001,male,45,torso,nevus,benign,0\n",
    "unicode": f"{HEADER}\nISIC_0000001,IP_0000001,mâle,٤٥,torso,nevus,benign,0\n",
    # errors
    "empty_file": "",
    "only_newlines": "\r\n\r\n",
    "a_column_missing": HEADER.replace(",target", "") + "\nISIC_0000001,IP_0000001,m,4,t,n,b\n",
    "a_column_renamed": HEADER.replace("sex", "gender") + f"\n{ROW}\n",
    "repeated_and_empty_header_names": HEADER.replace("sex", "image_name") + f",\n{ROW},\n",
    "extra_field_on_a_later_row": f"{HEADER}\n{ROW}\n{ROW},x\n",
    "unterminated_quote": f'{HEADER}\n{ROW}\nISIC_0000002,"IP_0000002,female\n',
    # more rows than one piece of the parse (``table.PIECE_ROWS``): short, blank and quoted
    # rows right at the boundaries, an error in a later piece
    "rows_over_several_pieces": HEADER + "\n" + "\n".join(
        "ISIC_0000001,IP_0000001,male" if i == PIECE_ROWS - 2 else
        "" if i in (PIECE_ROWS - 1, 2 * PIECE_ROWS) else
        'ISIC_0000002,"IP\r\n2",female,,head,melanoma,malignant,1' if i == PIECE_ROWS else
        ROW.replace("0000001", f"{i:07d}") for i in range(2 * PIECE_ROWS + 500)) + "\n",
    "header_after_a_piece_of_blank_lines": "\r\n" * (PIECE_ROWS + 3) + f"{HEADER}\n{ROW}\n",
    "extra_field_in_a_later_piece": HEADER + "\n" + "\n".join(
        ROW + (",x" if i == PIECE_ROWS + 300 else "") for i in range(2 * PIECE_ROWS)) + "\n",
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_new_reader_matches_pandas_on_csv_edge_cases(case: str, tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_bytes(EDGE_CASES[case].encode())
    new, old = _both(path, "ground_truth")
    if isinstance(old, str):
        assert isinstance(new, str), f"pandas refuses ({old}), the new reader reads {new}"
        assert "\n" not in new
        # Same kind of error (missing / not a readable CSV / columns), naming the file.
        assert new.split(":")[0] == old.split(":")[0], (new, old)
        if "columns" in old:
            assert new == old
    else:
        assert new == old


def test_ragged_rows_name_their_line(tmp_path: Path) -> None:
    """pandas says ``Error tokenizing data. C error: Expected 8 fields in line 3, saw 9``; the
    new reader one plain line. A first row with one field too many, which pandas silently reads
    as an index column (every value shifted one column), is refused too."""
    path = tmp_path / "gt.csv"
    path.write_bytes(f"{HEADER}\r\n{ROW}\r\n{ROW},x\r\n".encode())
    with pytest.raises(VerificationError) as exc:
        read_metadata_table(path, "ground_truth")
    assert exc.value.message == f"{path} is not a readable CSV: line 3 has 9 fields, the header 8"
    path.write_bytes(f'{HEADER}\r\n{ROW},x\r\n"a\r\nb",{ROW}\r\n'.encode())
    with pytest.raises(VerificationError, match="line 2 has 9 fields, the header 8$"):
        read_metadata_table(path, "ground_truth")
    path.write_bytes(f'{HEADER}\r\n"a\r\nb",{ROW}\r\n'.encode())  # the line the row starts on
    with pytest.raises(VerificationError, match="line 2 has 9 fields, the header 8$"):
        read_metadata_table(path, "ground_truth")
    path.write_bytes(f'{HEADER}\r\n{ROW}\r\nISIC_1,"IP\r\n'.encode())
    with pytest.raises(VerificationError, match="EOF inside string starting at line 3"):
        read_metadata_table(path, "ground_truth")


def test_missing_file_same_error(tmp_path: Path) -> None:
    new, old = _both(tmp_path / "nope.csv", "duplicates")
    assert new == old == f"{tmp_path / 'nope.csv'} is missing"


def test_invalid_utf8_same_error(tmp_path: Path) -> None:
    path = tmp_path / "gt.csv"
    path.write_bytes(f"{HEADER}\n{ROW}\n".encode() + b"\xff\xfe,x\n")
    new, old = _both(path, "ground_truth")
    assert isinstance(new, str) and isinstance(old, str)
    # pandas names an offset in one of its chunks; the new reader the file's offset and line.
    assert new.split(" in position")[0] == old.split(" in position")[0], (new, old)
    at = len(f"{HEADER}\n{ROW}\n".encode())
    assert new.endswith(f"position {at}: invalid start byte (line 3)"), new


@pytest.mark.parametrize(
    ("name", "role"),
    [(GT, "ground_truth"), (GT2, "ground_truth_v2"), (DUPS, "duplicates"),
     (KAGGLE_TEST, "test_metadata")],
)
def test_real_csvs_read_identically(name: str, role: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(real_csv(name))
    new, old = _both(path, role)
    assert isinstance(new, Table) and new == old
    assert len(new) > 0


def test_isic_test_names_renamed_to_kaggle(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_bytes(b" image ,patient,sex,age_approx,anatom_site_general\r\n"
                     b"ISIC_0000001,IP_0000001,male,NA,\r\n")
    new, old = _both(path, "test_metadata")
    assert isinstance(new, Table) and new == old
    assert new.columns == ("image_name", "patient_id", "sex", "age_approx",
                           "anatom_site_general_challenge")
    assert new.row(0) == ("ISIC_0000001", "IP_0000001", "male", "NA", None)


def test_the_ground_truth_is_read_without_holding_all_its_fields_at_once(tmp_path: Path):
    """The 33k-row CSV's ~300k field strings are made a piece of rows at a time and folded into
    the columns' shared strings at once. Python's peak while reading is then about 8x the
    file's size (the text, the reader's UCS-4 copy of it, a piece of rows, the columns); with
    every field alive at once it was 15x (30 MB for this 2 MB file)."""
    import tracemalloc

    path = tmp_path / GT
    path.write_bytes(real_csv(GT))
    tracemalloc.start()
    try:
        table = read_metadata_table(path, "ground_truth")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(table) == 33126
    assert peak < 11 * path.stat().st_size, (peak, path.stat().st_size)


def test_equal_cells_of_a_column_are_one_object(tmp_path: Path) -> None:
    path = tmp_path / GT
    path.write_bytes(real_csv(GT))
    sexes = read_metadata_table(path, "ground_truth")["sex"]
    assert len({id(v) for v in sexes}) <= 3  # male, female, blank


# ---------------------------------------------------------------------------------------------
# The checks of fetch/verify: the figures and problem lines the pandas implementation gave.

HOSTILE_ROWS = [
    "ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0",
    "ISIC_0000002,,female,45.0,,melanoma,malignant,1",
    "ISIC_0000003,IP_12,Male,1e1,head/neck,unknown,benign,0",
    "ISIC_0000004,IP_0000004, ,121,torso,melanoma,benign,0",
    "ISIC_0000005,IP_0000005,NA,nan,torso,,malignant,1",
    "ISIC_0000001,IP_0000005,female,-1,torso,nevus,benign,",
    'ISIC_123,IP_0000006,female,abc,"=HYPERLINK(""x"")",nevus,benign,2',
    ',IP_0000007,female,+5,"to\x01rso",nevus,benign,0',
    'ISIC_0000009,IP_0000008,female,.5,"lower, extremity",nevus,benign,0',
    'ISIC_0000010,@IP,female,\u0664\u0665,"a\r\nb",nevus,benign,0',
    "ISIC_0000011,IP_0000009,female,1_0,-torso,nevus,benign,0",
    "ISIC_0000012,IP_0000009,\tfemale ,inf,torso,melanoma,malignant,1",
    "ISIC_0000013,IP_0000009,female,120,torso,melanoma,malignant",
    "",
    "ISIC_0000014,IP_0000009,female,0,torso,nevus,benign,0",
]

#: What the pandas-based checks (main before this change) reported for ``HOSTILE_ROWS``.
HOSTILE_PROBLEMS = [
    "malformed image name 'ISIC_123'",
    "malformed image name ''",
    "image name ISIC_0000001 appears more than once",
    "ISIC_0000010: patient_id '@IP' would be a spreadsheet formula or control text",
    "ISIC_0000001: age_approx '-1' would be a spreadsheet formula or control text",
    "<NA>: age_approx '+5' would be a spreadsheet formula or control text",
    "ISIC_123: anatom_site_general_challenge '=HYPERLINK(\"x\")' would be a spreadsheet "
    "formula or control text",
    "<NA>: anatom_site_general_challenge 'to\\x01rso' would be a spreadsheet formula or "
    "control text",
    "ISIC_0000010: anatom_site_general_challenge 'a\\r\\nb' would be a spreadsheet formula or "
    "control text",
    "ISIC_0000011: anatom_site_general_challenge '-torso' would be a spreadsheet formula or "
    "control text",
    "ISIC_0000002: patient_id <NA> is not IP_ + 7 digits",
    "ISIC_0000003: patient_id 'IP_12' is not IP_ + 7 digits",
    "ISIC_0000010: patient_id '@IP' is not IP_ + 7 digits",
    "ISIC_0000003: sex 'Male' is not male/female/blank",
    "ISIC_0000004: sex '' is not male/female/blank",
    "ISIC_0000005: sex 'NA' is not male/female/blank",
    "ISIC_0000004: age_approx '121' is not an age",
    "ISIC_0000005: age_approx 'nan' is not an age",
    "ISIC_0000001: age_approx '-1' is not an age",
    "ISIC_123: age_approx 'abc' is not an age",
    "ISIC_0000010: age_approx '\u0664\u0665' is not an age",
    "ISIC_0000011: age_approx '1_0' is not an age",
    "ISIC_0000012: age_approx 'inf' is not an age",
    "ISIC_0000001: target <NA> is not consistent with benign_malignant",
    "ISIC_123: target '2' is not consistent with benign_malignant",
    "ISIC_0000013: target <NA> is not consistent with benign_malignant",
    "ISIC_0000004: diagnosis 'melanoma' is not consistent with target",
    "ISIC_0000005: diagnosis <NA> is not consistent with target",
    "ISIC_0000001: diagnosis 'nevus' is not consistent with target",
    "ISIC_0000013: diagnosis 'melanoma' is not consistent with target",
]


class _Manifest:
    def __init__(self, entries: list[FileEntry]) -> None:
        self.entries = entries

    def metadata(self, split: str) -> list[FileEntry]:
        return self.entries


def _checks(root: Path, files: dict[str, tuple[str, str, int | None]]) -> list[dict]:
    meta = root / "metadata"
    meta.mkdir(parents=True)
    entries = []
    for name, (role, text, rows) in files.items():
        (meta / name).write_bytes(text.encode())
        entries.append(FileEntry(name, "metadata", "train", "csv", "1 KB", (), role=role,
                                 rows=rows))
    checks, _ = metadata_checks(Layout(root), _Manifest(entries), ["train"])  # type: ignore[arg-type]
    return [dataclasses.asdict(c) for c in checks]


def test_checks_report_what_the_pandas_checks_reported(tmp_path: Path) -> None:
    v2_rows = []
    for r in HOSTILE_ROWS:
        a = r.split(",", 2)
        v2_rows.append(",".join([a[0], a[1], "IL_0000001", a[2]]) if len(a) == 3 else r)
    v2_rows[0] = v2_rows[0].replace("male,45", "male,46")
    header2 = HEADER.replace("patient_id,", "patient_id,lesion_id,")
    checks = _checks(tmp_path, {
        "gt.csv": ("ground_truth", HEADER + "\r\n" + "\r\n".join(HOSTILE_ROWS) + "\r\n", 14),
        "gt2.csv": ("ground_truth_v2", "\ufeff" + header2 + "\n" + "\n".join(v2_rows), None),
        "dups.csv": ("duplicates", "image_name_1,image_name_2\r\nISIC_0000001,ISIC_0000002\r\n"
                     "ISIC_9999999,\r\nISIC_12,ISIC_0000001\r\n=x,ISIC_0000003", 4),
        "test.csv": ("test_metadata", " image , patient,sex,age_approx,anatom_site_general \r\n"
                     "ISIC_0000100,IP_0000100,male,NA,torso\r\n"
                     "ISIC_0000100,IP_0000100,female,,\r\n", 3),
    })
    by = {c["name"]: c for c in checks}
    gt = by["metadata/gt.csv"]
    assert gt["message"] == "30 problem(s)"
    assert gt["figures"] == {"rows": 14, "expected_rows": 14, "duplicated_names": 1,
                             "malformed_names": 2, "patients": 9, "malignant": 3}
    assert gt["problems"] == HOSTILE_PROBLEMS
    assert by["metadata/gt2.csv"]["problems"] == HOSTILE_PROBLEMS
    assert by["metadata/dups.csv"]["figures"] == {"rows": 4, "expected_rows": 4,
                                                  "malformed_names": 3}
    assert by["metadata/dups.csv"]["problems"] == [
        "malformed image name 'ISIC_12'", "malformed image name '=x'",
        "malformed image name ''",
        "=x: image_name_1 '=x' would be a spreadsheet formula or control text",
        "=x: image_name '=x' would be a spreadsheet formula or control text",
    ]
    test = by["metadata/test.csv"]
    assert test["figures"] == {"rows": 2, "expected_rows": 3, "duplicated_names": 1,
                               "malformed_names": 0, "patients": 1}
    assert test["problems"] == [
        "2 rows, the manifest expects 3",
        "image name ISIC_0000100 appears more than once",
        "ISIC_0000100: age_approx 'NA' is not an age",
    ]
    same = by["metadata/v1 = v2"]
    assert same["figures"] == {"differing_rows": 1}
    assert same["problems"] == [
        "row 2: v1 ISIC_0000001,IP_0000001,male,45,torso,nevus,benign,0 / "
        "v2 ISIC_0000001,IP_0000001,male,46,torso,nevus,benign,0"
    ]
    known = by["metadata/duplicates in ground truth"]
    assert known["figures"] == {"names": 6, "not_in_ground_truth": 3}
    assert known["problems"] == [f"{n} is not in the ground truth"
                                 for n in ("ISIC_9999999", "ISIC_12", "=x")]


# ---------------------------------------------------------------------------------------------
# The refusals of load_metadata (read_train, read_test, read_duplicates), now made on tables:
# word for word what the pandas implementation (main before this change) said, first problem
# first (names, then target, then ages, then the value rules).

_T = "image_name,patient_id,sex,age_approx,anatom_site_general_challenge"
_D = "image_name_1,image_name_2"
REFUSALS = {
    "target_1.0": ("train", f"{HEADER}\n{ROW.replace('melanoma', 'x')[:-1]}1.0\n",
                   "1 malformed value(s) (first: ISIC_0000001: target '1.0' is not consistent "
                   "with benign_malignant)"),
    "target_x": ("train", f"{HEADER}\n{ROW[:-1]}x\n", "target must be 0 or 1 in every row"),
    "target_blank": ("train", f"{HEADER}\n{ROW[:-1]}\n", "target must be 0 or 1 in every row"),
    "target_before_ages": ("train", f"{HEADER}\n{ROW.replace(',45,', ',4.5,')[:-1]}x\n",
                           "target must be 0 or 1 in every row"),
    "age_half": ("train", f"{HEADER}\n{ROW.replace(',45,', ',45.5,')}\n"
                 f"{ROW2.replace(',,', ',nan,')}\n",
                 "age_approx is not a whole number of years in 2 rows (first: '45.5')"),
    "age_inf_and_121": ("train", f"{HEADER}\n{ROW.replace(',45,', ',inf,')}\n"
                              f"{ROW2.replace(',,', ',121,')}\n",
                              "age_approx is not a whole number of years in 2 rows "
                              "(first: 'inf')"),
    "age_spaces": ("train", f"{HEADER}\n{ROW.replace(',45,', ', ,')}\n",
                   "age_approx is not a whole number of years in 1 rows (first: '')"),
    "age_minus_zero": ("train", f"{HEADER}\n{ROW.replace(',45,', ',-0,')}\n",
                       "1 malformed value(s) (first: ISIC_0000001: age_approx '-0' would be a "
                       "spreadsheet formula or control text)"),
    "names_before_target": ("train", f"{HEADER}\nISIC_1,{ROW[13:-1]}x\n,{ROW[13:]}\n",
                            "2 image names are not ISIC_ + 7 digits (first: 'ISIC_1')"),
    "listed_twice": ("train", f"{HEADER}\n{ROW}\n{ROW2}\n{ROW2}\n{ROW}\n{ROW}\n",
                     "image ISIC_0000002 is listed 2 times"),
    "no_patient": ("train", f"{HEADER}\n{ROW.replace('IP_0000001', '')}\n"
                   f"{ROW2.replace('IP_0000002', ' ')}\n", "1 rows have no patient_id"),
    "test_age_na": ("test", f"{_T}\nISIC_0000001,IP_0000001,male,NA,torso\n",
                    "age_approx is not a whole number of years in 1 rows (first: 'NA')"),
    "test_formula": ("test", f"{_T}\nISIC_0000001,IP_0000001,male,45,=1+1\n",
                     "1 malformed value(s) (first: ISIC_0000001: anatom_site_general_challenge "
                     "'=1+1' would be a spreadsheet formula or control text)"),
    "dups_blank": ("dups", f"{_D}\r\nISIC_0000001,\r\n",
                   "1 names in image_name_2 are not ISIC_ + 7 digits (first: '')"),
    "dups_formula_first": ("dups", f"{_D}\r\n=x,ISIC_0000002\r\n",
                           "1 malformed value(s) (first: =x: image_name_1 '=x' would be a "
                           "spreadsheet formula or control text)"),
    "dups_unknown": ("dups", f"{_D}\r\nISIC_0000001,ISIC_0000009\r\nISIC_0000008,ISIC_0000002\r\n",
                     "2 names are not in the training ground truth (first: ISIC_0000008)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_load_metadata_refuses_as_the_pandas_implementation_did(case: str, tmp_path: Path):
    from isic2020.catalog.tables import read_duplicates, read_test, read_train

    kind, text, message = REFUSALS[case]
    path = tmp_path / "file.csv"
    path.write_bytes(text.encode())
    read = {"train": lambda: read_train(path, "ground_truth"), "test": lambda: read_test(path),
            "dups": lambda: read_duplicates(path, ["ISIC_0000001", "ISIC_0000002"])}[kind]
    with pytest.raises(VerificationError) as exc:
        read()
    assert exc.value.message == f"{path}: {message}"
