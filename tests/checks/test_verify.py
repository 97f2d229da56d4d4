"""Verification catches and names every kind of damage (real files, no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from support.dataset import flip_byte, install, truncate
from support.metadata import make_real_data_dir

from isic2020.checks.verify import verify
from isic2020.commands.extract import extract
from isic2020.errors import NothingThere
from isic2020.store.fsutil import temp_name
from isic2020.store.layout import Layout
from isic2020.store.records import FileRecord, Records
from isic2020.synthetic import build_dataset
from isic2020.transfer.digests import file_digests


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory):
    """A data dir with JPEG and DICOM extracted; tests work on copies of it."""
    base = tmp_path_factory.mktemp("v")
    ds = build_dataset(base / "mirror", formats=("jpeg", "dicom"))
    layout = install(ds, base / "data")
    extract(data_dir=layout.root, manifest=ds.manifest_path)
    extract(fmt="dicom", data_dir=layout.root, manifest=ds.manifest_path)
    return ds, layout


@pytest.fixture
def data(extracted, tmp_path: Path):
    ds, layout = extracted
    shutil.copytree(layout.root, tmp_path / "data", symlinks=True)
    return ds, Layout(tmp_path / "data")


def _v(ds, layout, **kw):
    return verify(data_dir=layout.root, manifest=ds.manifest_path, **kw)


def test_clean_dataset_verifies_fast_and_deep(data) -> None:
    ds, layout = data
    for fmt in ("jpeg", "dicom"):
        for deep in (False, True):
            rep = _v(ds, layout, fmt=fmt, deep=deep)
            assert rep.exit_code == 0, rep.summary_lines()
            json.dumps(rep.to_dict())
    names = [c.name for c in rep.checks]
    assert "images/dicom/train/dicom vs csv" in names
    assert "metadata/v1 = v2" in names and "metadata/duplicates in ground truth" in names
    assert rep.to_dict()["status"] == "ok"


def test_missing_and_extra_images_named(data) -> None:
    ds, layout = data
    folder = layout.images_dir("jpeg", "train")
    gone = ds.train_names[5]
    (folder / f"{gone}.jpg").unlink()
    shutil.copyfile(folder / f"{ds.train_names[0]}.jpg", folder / "ISIC_9999999.jpg")
    (folder / "notes.txt").write_text("x")
    rep = _v(ds, layout)
    assert rep.exit_code == 1
    c = rep.check("images/jpeg/train/names")
    assert c.status == "failed"
    assert c.figures["missing_names"] == [gone]
    assert c.figures["extra_names"] == ["ISIC_9999999.jpg", "notes.txt"]
    assert c.figures["missing"] == 1 and c.figures["extra"] == 2
    text = "\n".join(rep.summary_lines())
    assert gone in text and "ISIC_9999999.jpg" in text
    assert rep.check("images/jpeg/test/names").status == "ok"


def test_truncated_jpeg_named(data) -> None:
    ds, layout = data
    victim = layout.images_dir("jpeg", "test") / f"{ds.test_names[2]}.jpg"
    truncate(victim, drop=40)
    empty = layout.images_dir("jpeg", "test") / f"{ds.test_names[3]}.jpg"
    empty.write_bytes(b"")
    rep = _v(ds, layout, split="test")
    c = rep.check("images/jpeg/test/integrity")
    assert c.status == "failed" and c.figures["damaged"] == 2
    assert any(victim.name in p and "truncated" in p for p in c.problems)
    assert any(empty.name in p and "empty" in p for p in c.problems)


def test_trailing_zero_padding_tolerated(data) -> None:
    ds, layout = data
    p = layout.images_dir("jpeg", "train") / f"{ds.train_names[1]}.jpg"
    p.write_bytes(p.read_bytes() + b"\x00" * 100)
    assert _v(ds, layout, split="train").exit_code == 0


def test_dicom_patient_id_disagreement_deep(data) -> None:
    ds, layout = data
    p = layout.images_dir("dicom", "train") / f"{ds.train_names[4]}.dcm"
    d = pydicom.dcmread(p)
    d.PatientID = "IP_0000000"
    d.save_as(p)
    assert _v(ds, layout, fmt="dicom").exit_code == 0  # fast mode does not read headers' values
    rep = _v(ds, layout, fmt="dicom", deep=True)
    c = rep.check("images/dicom/train/dicom vs csv")
    assert c.status == "failed" and len(c.problems) == 1
    assert p.name in c.problems[0] and "IP_0000000" in c.problems[0]


def test_damaged_dicom_caught(data) -> None:
    ds, layout = data
    bad = layout.images_dir("dicom", "test") / f"{ds.test_names[0]}.dcm"
    bad.write_bytes(b"\x00" * 128 + b"NOPE" + bad.read_bytes()[132:])
    cut = layout.images_dir("dicom", "test") / f"{ds.test_names[1]}.dcm"
    truncate(cut, drop=100)
    rep = _v(ds, layout, fmt="dicom", split="test")
    problems = rep.check("images/dicom/test/integrity").problems
    assert any(bad.name in p and "DICM" in p for p in problems)
    rep = _v(ds, layout, fmt="dicom", split="test", deep=True)
    problems = rep.check("images/dicom/test/integrity").problems
    assert any(cut.name in p for p in problems)


def test_archive_checked_against_record(data) -> None:
    ds, layout = data
    z = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    st = z.stat()
    records = Records(layout.records_path)
    records.put_file(FileRecord(z.name, st.st_size, None, file_digests(z)["sha256"], None,
                                "file://x", "none", st.st_size, st.st_mtime_ns))
    rep = _v(ds, layout, split="train")
    c = rep.check(f"archive/{z.name}")
    assert c.status == "ok" and c.figures["hashed"] is False
    flip_byte(z, f"train/{ds.train_names[0]}.jpg")
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns))  # same stat: fast mode trusts it
    assert _v(ds, layout, split="train").check(f"archive/{z.name}").status == "ok"
    rep = _v(ds, layout, split="train", deep=True)  # --deep always re-hashes
    c = rep.check(f"archive/{z.name}")
    assert c.status == "failed" and z.name in c.problems[0] and rep.exit_code == 1
    os.utime(z, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # stat changed: re-hash
    assert _v(ds, layout, split="train").check(f"archive/{z.name}").status == "failed"


def test_archive_without_record_checked_against_manifest_and_absent_is_fine(data) -> None:
    ds, layout = data
    z = layout.archives_dir / "ISIC_2020_Test_JPEG.zip"
    flip_byte(z, f"ISIC_2020_Test_Input/{ds.test_names[0]}.jpg")
    rep = _v(ds, layout, split="test")
    assert rep.check(f"archive/{z.name}").status == "failed"
    z.unlink()
    rep = _v(ds, layout, split="test")
    assert rep.exit_code == 0
    assert f"archive/{z.name}" not in [c.name for c in rep.checks]


def test_leftover_temp_file_is_a_warning(data) -> None:
    ds, layout = data
    folder = layout.images_dir("jpeg", "train")
    (folder / temp_name(f"{ds.train_names[0]}.jpg")).write_bytes(b"\xff\xd8")
    rep = _v(ds, layout, split="train")
    assert rep.exit_code == 0
    assert rep.check("images/jpeg/train/temporary files").status == "warning"
    assert rep.check("images/jpeg/train/names").status == "ok"


def test_metadata_cross_checks(data) -> None:
    ds, layout = data
    v2 = layout.metadata_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    text = v2.read_bytes().split(b"\r\n")
    text[3] = text[3].replace(b",benign,0", b",malignant,1")
    v2.write_bytes(b"\r\n".join(text))
    dups = layout.metadata_dir / "ISIC_2020_Training_Duplicates.csv"
    dups.write_bytes(dups.read_bytes() + b"ISIC_0000001,ISIC_0000002\r\n")
    rep = _v(ds, layout, fmt="none")
    failed = {c.name for c in rep.failed()}
    assert "metadata/v1 = v2" in failed
    assert "metadata/duplicates in ground truth" in failed
    assert "metadata/ISIC_2020_Training_Duplicates.csv" in failed  # row count != manifest
    assert "metadata/ISIC_2020_Training_GroundTruth_v2.csv" in failed  # diagnosis vs target
    assert not any(c.name.startswith("images/") for c in rep.checks)  # --format none


def test_kaggle_test_columns_accepted(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "m", n_train=8, n_test=6, test_columns="kaggle")
    layout = install(ds, tmp_path / "data")
    extract(data_dir=layout.root, manifest=ds.manifest_path)
    assert _v(ds, layout).exit_code == 0


def test_nothing_to_verify(data, tmp_path: Path) -> None:
    ds, _ = data
    with pytest.raises(NothingThere) as ei:  # missing input: exit 2, as "nothing to extract"
        verify(data_dir=tmp_path / "empty", manifest=ds.manifest_path)
    assert "nothing to verify" in ei.value.message and "fetch" in (ei.value.hint or "")
    assert ei.value.exit_code == 2
    (tmp_path / "empty2").mkdir()
    with pytest.raises(NothingThere):
        verify(data_dir=tmp_path / "empty2", manifest=ds.manifest_path, fmt="dicom-original")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isic2020", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_malformed_csv_and_json(data) -> None:
    ds, layout = data
    common = ["--data-dir", str(layout.root), "--manifest", str(ds.manifest_path)]
    r = _cli("verify", *common, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "ok" and all("status" in c for c in doc["checks"])
    csv = layout.metadata_dir / "ISIC_2020_Test_Metadata.csv"
    size = csv.stat().st_size
    # An unterminated quote: the CSV cannot be parsed at all; the line says so, gives the
    # parser's reason and what to do; the file check names both sizes.
    csv.write_bytes(b'image,patient,sex\r\nISIC_1,"unterminated\r\n')
    r = _cli("verify", *common)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (meta,) = [ln for ln in r.stdout.splitlines()
               if "metadata/ISIC_2020_Test_Metadata.csv" in ln]
    assert meta.split()[0] == "failed" and "is not a readable CSV" in meta, meta
    assert "EOF inside string" in meta and "isic2020 fetch" in meta, meta
    (file_line,) = [ln for ln in r.stdout.splitlines() if "file/ISIC_2020_Test_Metadata.csv" in ln]
    assert file_line.split()[0] == "failed", file_line
    assert f"{csv.stat().st_size} bytes, the manifest says {size}" in file_line, file_line
    # Readable but with the wrong columns: the columns found and the documented ones are named.
    csv.write_bytes(b"image,patient,sex\r\nISIC_0000001,IP_1234567,male\r\n")
    r = _cli("verify", *common)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (meta,) = [ln for ln in r.stdout.splitlines()
               if "metadata/ISIC_2020_Test_Metadata.csv" in ln]
    assert meta.split()[0] == "failed" and "columns image,patient,sex are not" in meta, meta
    assert "image,patient,sex,age_approx,anatom_site_general" in meta, meta
    r = _cli("verify", "--data-dir", str(layout.root / "nope"), "--manifest",
             str(ds.manifest_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nothing to verify" in r.stderr


@pytest.mark.slow
def test_full_size_verify_passes(tmp_path: Path) -> None:
    """A dataset of the real size (44,108 images) verifies clean. Its speed is benchmarks row 4
    (>= 20,000 images/s), not a test: a busy machine must not fail CI."""
    ds = build_dataset(tmp_path / "m", n_train=33126, n_test=10982)
    layout = install(ds, tmp_path / "data")
    extract(data_dir=layout.root, manifest=ds.manifest_path)
    rep = _v(ds, layout)
    assert rep.exit_code == 0, rep.summary_lines()
    checked = {c.name: c.figures.get("checked") for c in rep.checks
               if c.name.endswith("/integrity")}
    assert checked == {"images/jpeg/train/integrity": 33126, "images/jpeg/test/integrity": 10982}


def test_real_csvs_pass_with_the_real_manifest(tmp_path: Path) -> None:
    from isic2020.catalog.manifest import load_manifest
    from isic2020.checks.verify import verify_data
    from isic2020.synthetic import official_manifest

    make_real_data_dir(tmp_path)
    man = load_manifest(official_manifest().path)
    rep = verify_data(Layout(tmp_path), man, fmt="none")
    assert rep.exit_code == 0, rep.summary_lines()
    assert rep.check("metadata/ISIC_2020_Training_GroundTruth.csv").figures["malignant"] == 584


def test_deep_map_keeps_order_in_bounded_batches() -> None:
    """The deep-verify thread pool keeps the order and never has more than a few batches
    (not one future per image) in flight."""
    import threading

    from isic2020.checks.images import MAP_BATCH
    from isic2020.checks.images import map_threads as _map

    live = 0
    peak = 0
    lock = threading.Lock()

    def fn(s: str) -> str:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        with lock:
            live -= 1
        return s.upper()

    items = [f"isic_{i:07d}" for i in range(10 * MAP_BATCH + 17)]
    assert _map(fn, items, 2) == [s.upper() for s in items]
    assert _map(fn, items[:10], 2) == [s.upper() for s in items[:10]]
    import gc
    from concurrent.futures import Future

    before = sum(isinstance(o, Future) for o in gc.get_objects())
    seen: list[int] = []

    def count(s: str) -> str:
        if s.endswith("00"):
            seen.append(sum(isinstance(o, Future) for o in gc.get_objects()) - before)
        return s

    _map(count, items[: 4 * MAP_BATCH], 2)
    assert max(seen) <= 8


def test_metadata_checked_ahead_is_used_only_while_the_csvs_are_unchanged(data) -> None:
    """A fetch checks the CSVs while its archives download (MetadataPrecheck); a CSV that
    changes after that must be checked again, never vouched for by the earlier result."""
    from isic2020.catalog.manifest import load_manifest
    from isic2020.checks.verify import MetadataPrecheck, verify_data

    ds, layout = data
    man = load_manifest(ds.manifest_path)
    pre = MetadataPrecheck(layout, man, "train")
    assert pre.result() is None  # never started: nothing to reuse
    pre.start()
    ahead = pre.result()
    assert ahead is not None
    rep = verify_data(layout, man, split="train", fmt="jpeg", metadata=ahead)
    assert rep.exit_code == 0
    plain = verify_data(layout, man, split="train", fmt="jpeg")
    assert [c.name for c in rep.checks] == [c.name for c in plain.checks]
    # Now a CSV changes after it was checked: the result is not reused, the damage is found.
    v2 = layout.metadata_dir / "ISIC_2020_Training_GroundTruth_v2.csv"
    text = v2.read_bytes().split(b"\r\n")
    text[3] = text[3].replace(b",benign,0", b",malignant,1")
    v2.write_bytes(b"\r\n".join(text))
    assert pre.result() is None
    rep = verify_data(layout, man, split="train", fmt="jpeg", metadata=pre.result())
    assert "metadata/v1 = v2" in {c.name for c in rep.failed()}
