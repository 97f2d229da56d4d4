"""Extraction: layout, safety, resume, idempotence, ZIP64, bombs, disk full (real zips)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.dataset import (
    add_entry,
    add_symlink,
    add_zip_bomb,
    files_under,
    flip_byte,
    install,
)

from isic2020.errors import DiskError, UsageError, VerificationError
from isic2020.extract import extract, extract_archive
from isic2020.state import Records
from isic2020.synthetic import build_dataset


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("mirror"), formats=("jpeg", "dicom"),
                         directory_entries=True)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("stored"), n_train=40, compression="stored")


def _run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isic2020", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, **kw)


def test_extract_flat_layout_and_non_images(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    rep = extract(data_dir=layout.root, manifest=mirror.manifest_path)
    by = {a.archive: a for a in rep.archives}
    train = by["ISIC_2020_Training_JPEG.zip"]
    test = by["ISIC_2020_Test_JPEG.zip"]
    assert train.status == "extracted" and train.written == train.images == 24
    assert test.non_images == ["ISIC_2020_Test_Input/readme.txt"]
    assert train.non_images == [f"__MACOSX/train/._{mirror.train_names[0]}.jpg"]
    assert train.directories == 1
    names = sorted(p.name for p in layout.images_dir("jpeg", "train").iterdir())
    assert names == sorted(f"{n}.jpg" for n in mirror.train_names)
    for p in layout.images_dir("jpeg", "train").iterdir():
        assert not p.stat().st_mode & 0o002
    assert "readme" in " ".join(rep.summary_lines())
    d = rep.to_dict()
    json.dumps(d)
    assert d["archives"][1]["non_images"] == ["ISIC_2020_Test_Input/readme.txt"]
    assert Records(layout.records_path).extracted["ISIC_2020_Training_JPEG.zip"]["images"] == 24
    # dicom too, flat, .dcm
    rep = extract(split="test", fmt="dicom", data_dir=layout.root, manifest=mirror.manifest_path)
    assert rep.archives[0].written == 12
    assert len(list(layout.images_dir("dicom", "test").glob("ISIC_*.dcm"))) == 12


def test_rerun_of_complete_extraction_does_no_work(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    extract(data_dir=layout.root, manifest=mirror.manifest_path)
    before = files_under(layout.root / "jpeg")
    rep = extract(data_dir=layout.root, manifest=mirror.manifest_path)
    assert [a.status for a in rep.archives] == ["skipped", "skipped"]
    assert all(a.written == 0 and a.bytes_written == 0 for a in rep.archives)
    assert files_under(layout.root / "jpeg") == before
    # Archive deleted after extraction (--no-keep-archives): still fine, reported as such
    for p in layout.archives_dir.iterdir():
        p.unlink()
    rep = extract(data_dir=layout.root, manifest=mirror.manifest_path)
    assert [a.status for a in rep.archives] == ["absent", "absent"]
    # A deleted image makes the next run extract again (only what is missing)
    install(mirror, layout.root, metadata=False)
    victim = layout.images_dir("jpeg", "train") / f"{mirror.train_names[3]}.jpg"
    victim.unlink()
    rep = extract(split="train", data_dir=layout.root, manifest=mirror.manifest_path)
    assert rep.archives[0].written == 1 and rep.archives[0].already_present == 23
    assert victim.exists()


def test_bad_crc_named_and_interrupted_extraction_resumes(stored, tmp_path: Path) -> None:
    clean = install(stored, tmp_path / "clean")
    extract(split="train", data_dir=clean.root, manifest=stored.manifest_path, workers=1)
    layout = install(stored, tmp_path / "data")
    zpath = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    victim = f"train/{stored.train_names[20]}.jpg"
    flip_byte(zpath, victim)
    with pytest.raises(VerificationError) as ei:
        extract(split="train", data_dir=layout.root, manifest=stored.manifest_path, workers=1)
    assert victim in ei.value.message and "damaged" in ei.value.message
    dest = layout.images_dir("jpeg", "train")
    done = sorted(p.name for p in dest.iterdir())
    assert len(done) == 20  # the members before the damaged one are complete
    assert not any(n.startswith(".") for n in done)  # no temp file left behind
    assert "ISIC_2020_Training_JPEG.zip" not in Records(layout.records_path).extracted
    # the archive is fetched again: the re-run continues where it stopped
    shutil.copyfile(stored.root / zpath.name, zpath)
    rep = extract(split="train", data_dir=layout.root, manifest=stored.manifest_path)
    a = rep.archives[0]
    assert a.already_present == 20 and a.written == 20 and a.images == 40
    assert files_under(dest) == files_under(clean.images_dir("jpeg", "train"))


@pytest.mark.slow
def test_killed_extraction_resumes(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "m", n_train=4000, n_test=10)
    layout = install(ds, tmp_path / "data")
    env = {"ISIC2020_MANIFEST": str(ds.manifest_path), "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "isic2020", "extract", "--split", "train",
         "--data-dir", str(layout.root), "-q"], env={**os.environ, **env},
    )
    dest = layout.images_dir("jpeg", "train")
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dest.is_dir() and sum(1 for _ in os.scandir(dest)) > 200:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sum(1 for p in dest.iterdir() if not p.name.startswith("."))
    assert 0 < partial < 4000
    r = _run("extract", "--split", "train", "--data-dir", str(layout.root), "--json", env=env)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)["archives"][0]
    assert a["already_present"] >= partial - 2 and a["images"] == 4000
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.jpg" for n in ds.train_names)


@pytest.mark.parametrize(
    "entry",
    ["../evil.jpg", "train/../../evil.jpg", "/tmp/isic2020-evil/ISIC_0000001.jpg",
     "C:\\evil\\ISIC_0000001.jpg", "train/CON.jpg", "train/ISIC_0000002.jpg (symlink)"],
)
def test_zip_slip_refused_and_nothing_written(mirror, tmp_path: Path, entry: str) -> None:
    layout = install(mirror, tmp_path / "data")
    zpath = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    if entry.endswith("(symlink)"):
        name = entry.split(" ")[0]
        add_symlink(zpath, name, "/etc/passwd")
    else:
        name = entry
        add_entry(zpath, name, b"\xff\xd8evil\xff\xd9")
    with pytest.raises(VerificationError) as ei:
        extract_archive(layout, mirror.manifest.archive("train", "jpeg"),
                        records=Records(layout.records_path))
    assert repr(name) in ei.value.message and "unsafe" in ei.value.message
    assert not layout.images_dir("jpeg", "train").exists()
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "data" / "evil.jpg").exists()
    assert not Path("/tmp/isic2020-evil").exists()


def test_zip_slip_via_cli_is_one_line(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    add_entry(layout.archives_dir / "ISIC_2020_Test_JPEG.zip", "../../evil.jpg")
    r = _run("extract", "--data-dir", str(layout.root), "--manifest", str(mirror.manifest_path))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "'../../evil.jpg'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "evil.jpg").exists()


def test_zip_bomb_refused(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    add_zip_bomb(layout.archives_dir / "ISIC_2020_Training_JPEG.zip", "train/ISIC_0000009.jpg")
    with pytest.raises(VerificationError) as ei:
        extract(split="train", data_dir=layout.root, manifest=mirror.manifest_path)
    assert "zip bomb" in ei.value.message and "ISIC_0000009" in ei.value.message
    assert not layout.images_dir("jpeg", "train").exists()


def test_zip64_archive_extracts(tmp_path: Path) -> None:
    ds = build_dataset(tmp_path / "m", n_train=12, n_test=4, force_zip64=True)
    raw = (ds.root / "ISIC_2020_Training_JPEG.zip").read_bytes()
    assert raw[18:26] == b"\xff" * 8  # sizes live in the ZIP64 extra field
    layout = install(ds, tmp_path / "data")
    rep = extract(data_dir=layout.root, manifest=ds.manifest_path)
    assert sum(a.written for a in rep.archives) == 16
    import zipfile

    with zipfile.ZipFile(ds.root / "ISIC_2020_Training_JPEG.zip") as zf:
        for n in ds.train_names:
            got = (layout.images_dir("jpeg", "train") / f"{n}.jpg").read_bytes()
            assert got == zf.read(f"train/{n}.jpg")


def test_missing_archive_is_a_usage_error(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data", archives=False)
    with pytest.raises(UsageError) as ei:
        extract(data_dir=layout.root, manifest=mirror.manifest_path)
    assert "isic2020 fetch" in (ei.value.hint or "")
    r = _run("extract", "--data-dir", str(layout.root), "--manifest", str(mirror.manifest_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def _limit_fsize() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))


def test_disk_full_is_a_clean_disk_error_and_resumable(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    r = _run("extract", "--split", "train", "--data-dir", str(layout.root),
             "--manifest", str(mirror.manifest_path), preexec_fn=_limit_fsize)
    assert r.returncode == DiskError.exit_code, r.stderr
    assert "file too large" in r.stderr and r.stderr.count("\n") == 1
    dest = layout.images_dir("jpeg", "train")
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    r = _run("extract", "--split", "train", "--data-dir", str(layout.root),
             "--manifest", str(mirror.manifest_path))
    assert r.returncode == 0, r.stderr
    assert len(list(dest.iterdir())) == 24
