"""The Python API as a notebook user meets it: ``dir(isic2020)`` lists the API and nothing of
the module's plumbing, ``make_folds`` hands back the folds table, reports print as a line a
person can read, and ``help(isic2020.fetch)`` documents every keyword it accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from support.metadata import make_synthetic

import isic2020
from isic2020.commands.fetch_options import FetchHow, FetchPlace, FetchWhat


def test_dir_lists_the_api_only() -> None:
    names = dir(isic2020)
    assert names == sorted(isic2020.__all__)
    for plumbing in ("Any", "annotations", "importlib", "_LAZY"):
        assert plumbing not in names
    for api in ("fetch", "verify", "load_metadata", "make_folds", "export", "build_dataset",
                "extract", "list_files", "__version__"):
        assert api in names
        assert getattr(isic2020, api) is not None


def test_make_folds_returns_the_folds_table(tmp_path: Path) -> None:
    make_synthetic(tmp_path, patients=30)
    report = isic2020.make_folds(k=3, seed=42, data_dir=tmp_path)
    table = report.table
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["image_name", "patient_id", "fold"]
    on_disk = pd.read_csv(report.out)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), on_disk, check_dtype=False)
    assert sorted(table["fold"].unique()) == [0, 1, 2]
    assert "table" not in report.to_dict()  # the JSON names the file instead


def test_reports_print_as_one_readable_line(tmp_path: Path) -> None:
    make_synthetic(tmp_path, patients=30)
    folds = isic2020.make_folds(k=3, data_dir=tmp_path)
    text = repr(folds)
    assert text.startswith("FoldsReport(out=") and "\n" not in text
    assert "folds=<3 items>" in text and "table=<DataFrame" in text
    assert len(text) < 400, text
    listing = isic2020.list_files(data_dir=tmp_path)
    assert len(listing.rows) > 4
    assert repr(listing) == (f"ListReport(data_dir={str(listing.data_dir)!r}, "
                             f"rows=<{len(listing.rows)} items>, exit_code=0)")


def test_fetch_documents_every_keyword() -> None:
    doc = isic2020.fetch.__doc__ or ""
    for cls in (FetchWhat, FetchPlace, FetchHow):
        assert cls.__name__ in doc
        for field in dataclasses.fields(cls):
            assert f"\n        {field.name}: " in doc, field.name
