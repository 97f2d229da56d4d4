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
from support.snapshot import changed, snapshot

from isic2020.archive.local import extract_archive
from isic2020.commands.extract import extract
from isic2020.errors import DiskError, UsageError, VerificationError
from isic2020.store.records import Records
from isic2020.synthetic import build_dataset

ZIP = "ISIC_2020_Training_JPEG.zip"


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


def _kept(dest: Path) -> dict[str, tuple[int, int]]:
    """The finished images (final names) in ``dest``: name -> (inode, mtime_ns)."""
    return {e.name: (e.inode(), e.stat().st_mtime_ns) for e in os.scandir(dest)
            if not e.name.startswith(".")}


def _assert_kept_untouched_and_exact(dest: Path, kept: dict[str, tuple[int, int]],
                                     zip_path: Path) -> None:
    """The resume left the images it found alone (same inode and mtime: not rewritten), and
    every image in ``dest`` is byte for byte its member in ``zip_path``."""
    now = _kept(dest)
    rewritten = [n for n, st in kept.items() if now.get(n) != st]
    assert not rewritten, f"kept images rewritten by the resume: {rewritten[:5]}"
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        members = {i.filename.rsplit("/", 1)[-1]: i.filename for i in zf.infolist()
                   if i.filename.endswith(".jpg") and "__MACOSX" not in i.filename}
        for n in now:
            assert (dest / n).read_bytes() == zf.read(members[n]), n


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
    env = {"ISIC2020_MANIFEST": str(ds.manifest_path)}  # PYTHONPATH inherited: this tree's code
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
    _wait_no_workers(str(layout.root))
    kept = _kept(dest)
    partial = len(kept)
    assert 0 < partial < 4000
    r = _run("extract", "--split", "train", "--data-dir", str(layout.root), "--json", env=env)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)["archives"][0]
    assert a["already_present"] >= partial - 2 and a["images"] == 4000
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.jpg" for n in ds.train_names)
    _assert_kept_untouched_and_exact(dest, kept, layout.archives_dir / ZIP)


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
    before, cwd_before = snapshot(tmp_path), sorted(os.listdir())
    with pytest.raises(VerificationError) as ei:
        extract_archive(layout, mirror.manifest.archive("train", "jpeg"),
                        records=Records(layout.records_path))
    assert repr(name) in ei.value.message and "unsafe" in ei.value.message
    # nothing was written anywhere in the test's tree but the tool's own state folder (no
    # image, no image folder), nor in the working directory, nor at the absolute path
    assert changed(before, snapshot(tmp_path), allowed=(layout.root / ".isic2020",)) == []
    assert not layout.images_dir("jpeg", "train").exists()
    assert sorted(os.listdir()) == cwd_before
    assert not Path("/tmp/isic2020-evil").exists()


def test_zip_slip_via_cli_is_one_line(mirror, tmp_path: Path) -> None:
    layout = install(mirror, tmp_path / "data")
    add_entry(layout.archives_dir / "ISIC_2020_Test_JPEG.zip", "../../evil.jpg")
    before = snapshot(tmp_path.parent)  # ../../ of the images folder is above the data dir
    r = _run("extract", "--data-dir", str(layout.root), "--manifest", str(mirror.manifest_path))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "'../../evil.jpg'" in r.stderr
    assert "Traceback" not in r.stderr
    # the training zip is fine and may be unpacked; nothing else changed anywhere around
    allowed = (layout.root / ".isic2020", layout.images_dir("jpeg", "train"))
    assert changed(before, snapshot(tmp_path.parent), allowed=allowed) == []


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


def test_disk_full_is_a_clean_disk_error_and_resumable(mirror, tmp_path: Path) -> None:
    """RLIMIT_FSIZE while ``extract`` runs: exit 3, one line, no temp file. One image at the
    end of the archive is bigger than the limit, so the images before it finish first: the
    resume without the limit keeps them untouched, and every image is exact."""
    layout = install(mirror, tmp_path / "data")
    zpath = layout.archives_dir / ZIP
    add_entry(zpath, "train/ISIC_9999999.jpg", b"\xff\xd8" + os.urandom(8192) + b"\xff\xd9")
    limit = 4096  # above every synthetic image (< 1 KB), below the one added

    def limit_fsize() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = _run("extract", "--split", "train", "--data-dir", str(layout.root),
             "--manifest", str(mirror.manifest_path), preexec_fn=limit_fsize)
    assert r.returncode == DiskError.exit_code, r.stderr
    assert "file too large" in r.stderr and r.stderr.count("\n") == 1
    dest = layout.images_dir("jpeg", "train")
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    kept = _kept(dest)
    assert 0 < len(kept) <= 24 and "ISIC_9999999.jpg" not in kept
    r = _run("extract", "--split", "train", "--data-dir", str(layout.root),
             "--manifest", str(mirror.manifest_path))
    assert r.returncode == 0, r.stderr
    assert len(list(dest.iterdir())) == 25
    _assert_kept_untouched_and_exact(dest, kept, zpath)


# --------------------------------------------------------------------------------------------
# Worker processes: damaged members, other compression methods, large members, signals


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory):
    """Enough members (deflated, distinct images) for several chunks per worker process."""
    return build_dataset(tmp_path_factory.mktemp("many"), n_train=400, n_test=8,
                         distinct_images=64, image_size=48)


def _workers_alive(marker: str) -> list[int]:
    """PIDs of processes whose command line mentions ``marker`` (our data directory)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _wait_no_workers(marker: str, timeout: float = 10) -> None:
    """Until no process mentions ``marker`` (workers stop by themselves after a kill -9)."""
    import time

    deadline = time.monotonic() + timeout
    while _workers_alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _workers_alive(marker), "a worker outlived the command"


def _no_children_left() -> bool:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return pid == 0 and not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text()


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_in_a_deflated_member_is_found_by_a_worker_process(
    many, tmp_path: Path, where: float
) -> None:
    """The CRC-32 (or the inflate) check runs in the worker processes: one flipped byte
    anywhere in a member is a VerificationError naming it, nothing half-written is left, no
    worker outlives the call, and the rest resumes once the archive is good again."""
    layout = install(many, tmp_path / "data")
    zpath = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    victim = f"train/{many.train_names[300]}.jpg"
    flip_byte(zpath, victim, where=where)
    with pytest.raises(VerificationError) as ei:
        extract(split="train", data_dir=layout.root, manifest=many.manifest_path, workers=2)
    assert repr(victim) in ei.value.message and "damaged" in ei.value.message
    dest = layout.images_dir("jpeg", "train")
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    assert f"{many.train_names[300]}.jpg" not in {p.name for p in dest.iterdir()}
    assert _no_children_left()
    assert "ISIC_2020_Training_JPEG.zip" not in Records(layout.records_path).extracted
    shutil.copyfile(many.root / zpath.name, zpath)
    rep = extract(split="train", data_dir=layout.root, manifest=many.manifest_path, workers=2)
    a = rep.archives[0]
    assert a.workers == 2 and a.images == 400 and a.written + a.already_present == 400
    import zipfile

    with zipfile.ZipFile(zpath) as zf:
        for n in many.train_names:
            assert (dest / f"{n}.jpg").read_bytes() == zf.read(f"train/{n}.jpg")


def test_processes_and_one_process_give_the_same_files(many, tmp_path: Path) -> None:
    one = install(many, tmp_path / "one")
    two = install(many, tmp_path / "two")
    r1 = extract(split="train", data_dir=one.root, manifest=many.manifest_path, workers=1)
    r2 = extract(split="train", data_dir=two.root, manifest=many.manifest_path, workers=2)
    assert r1.archives[0].workers == 1 and r2.archives[0].workers == 2
    assert r1.archives[0].bytes_written == r2.archives[0].bytes_written > 0
    assert files_under(one.images_dir("jpeg", "train")) == files_under(
        two.images_dir("jpeg", "train"))
    assert _no_children_left()


def _rezip(src: Path, dest: Path, compress: int, big: dict[str, bytes] | None = None) -> None:
    """Rewrite a zip with another compression method, optionally adding members."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", compress) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=compress)
        for name, data in (big or {}).items():
            zout.writestr(name, data, compress_type=compress)


@pytest.mark.parametrize("method", ["bzip2", "lzma"])
def test_other_compression_methods_go_through_zipfile_and_its_crc(
    many, tmp_path: Path, method: str
) -> None:
    import zipfile

    compress = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}[method]
    layout = install(many, tmp_path / "data")
    zpath = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    _rezip(many.root / zpath.name, zpath, compress)
    rep = extract(split="train", data_dir=layout.root, manifest=many.manifest_path, workers=2)
    assert rep.archives[0].written == 400
    dest = layout.images_dir("jpeg", "train")
    with zipfile.ZipFile(zpath) as zf:
        for n in many.train_names[::37]:
            assert (dest / f"{n}.jpg").read_bytes() == zf.read(f"train/{n}.jpg")
    # a flipped byte: zipfile's CRC-32 check at the end of the stream (or its decoder) fires
    shutil.rmtree(dest)
    Records(layout.records_path).drop_extracted(zpath.name)
    victim = f"train/{many.train_names[5]}.jpg"
    flip_byte(zpath, victim, where=0.5)
    with pytest.raises(VerificationError) as ei:
        extract(split="train", data_dir=layout.root, manifest=many.manifest_path, workers=1)
    assert repr(victim) in ei.value.message
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("compress", ["stored", "deflate"])
def test_large_members_are_streamed_and_checked(tmp_path: Path, compress: str) -> None:
    """Members over SMALL_MEMBER are streamed 1 MiB at a time; a flipped byte is still found."""
    import random
    import zipfile

    from isic2020.archive.decode import BUFFER, SMALL_MEMBER

    ds = build_dataset(tmp_path / "m", n_train=4, n_test=2)
    layout = install(ds, tmp_path / "data")
    zpath = layout.archives_dir / "ISIC_2020_Training_JPEG.zip"
    rng = random.Random(1)
    size = SMALL_MEMBER + 3 * BUFFER + 12345
    big = b"\xff\xd8" + rng.randbytes(size // 2) + bytes(size // 2) + b"\xff\xd9"
    method = zipfile.ZIP_STORED if compress == "stored" else zipfile.ZIP_DEFLATED
    _rezip(ds.root / zpath.name, zpath, method, {"train/ISIC_9999999.jpg": big})
    rep = extract(split="train", data_dir=layout.root, manifest=ds.manifest_path, workers=1)
    assert rep.archives[0].written == 5
    assert (layout.images_dir("jpeg", "train") / "ISIC_9999999.jpg").read_bytes() == big
    shutil.rmtree(layout.images_dir("jpeg", "train"))
    Records(layout.records_path).drop_extracted(zpath.name)
    flip_byte(zpath, "train/ISIC_9999999.jpg", where=0.7)
    with pytest.raises(VerificationError) as ei:
        extract(split="train", data_dir=layout.root, manifest=ds.manifest_path, workers=1)
    assert "ISIC_9999999" in ei.value.message and "damaged" in ei.value.message
    assert not (layout.images_dir("jpeg", "train") / "ISIC_9999999.jpg").exists()
    assert not [p for p in layout.images_dir("jpeg", "train").iterdir()
                if p.name.startswith(".")]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("big"), n_train=20000, n_test=10,
                         extra_entries=False)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_during_extraction_in_processes_is_resumable(
    big, tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C / SIGTERM to a running `isic2020 extract` (workers in processes): exit 130 and
    one line, no temporary file at all, no worker left running. SIGKILL: the workers stop by
    themselves (parent-death signal). Then the same command finishes the job."""
    import time

    layout = install(big, tmp_path / "data")
    env = {"ISIC2020_MANIFEST": str(big.manifest_path)}
    marker = str(layout.root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "isic2020", "extract", "--split", "train",
         "--data-dir", marker, "-q"], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    dest = layout.images_dir("jpeg", "train")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dest.is_dir() and sum(1 for _ in os.scandir(dest)) > 1000:
            break
        time.sleep(0.005)
    assert len(_workers_alive(marker)) >= 2  # the parent and its workers
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while _workers_alive(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _workers_alive(marker), "a worker outlived the command"
    names = [p.name for p in dest.iterdir()]
    kept = _kept(dest)
    partial = len(kept)
    assert 0 < partial < 20000
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert sum(1 for n in names if n.startswith(".")) <= 2  # at most one per worker
    else:
        assert proc.returncode == 130, err
        assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
        assert not [n for n in names if n.startswith(".")]
    r = _run("extract", "--split", "train", "--data-dir", marker, "--json", env=env)
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)["archives"][0]
    assert a["images"] == 20000 and a["already_present"] >= partial - 2
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.jpg" for n in big.train_names)
    _assert_kept_untouched_and_exact(dest, kept, layout.archives_dir / ZIP)
