"""When a member fetch stages (``isic2020.archive.staging.open_member_staging``), on real folders.

What a user depends on: members written in place go to the state folder only where the whole
staging can later become the images folder with one rename (the folder empty or missing, no
link, the same filesystem, a version of the archive named by an ETag); anywhere else nothing is
staged and the members land at their final paths as before. A staging made for another version
of the archive is never reused: its files are removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isic2020.archive.staging import IMAGES_DIR, OBJECT_FILE, Stage, open_member_staging

IDENT = {"size": 1000, "etag": "abc", "last_modified": None}


def _open(stage: Stage, ident: dict = IDENT) -> int | None:
    fd = open_member_staging(stage, ident)
    if fd is not None:
        os.close(fd)
    return fd


def _stage(tmp_path: Path) -> Stage:
    return Stage(tmp_path / "d" / ".isic2020" / "staging" / "a.zip",
                 tmp_path / "d" / "jpeg" / "train")


def test_a_missing_or_empty_folder_is_staged_for_this_version(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    assert _open(stage) is not None  # missing
    assert (stage.staging / IMAGES_DIR).is_dir()
    assert (stage.staging / OBJECT_FILE).is_file()
    stage.folder.mkdir(parents=True)
    (stage.staging / IMAGES_DIR / "ISIC_0000001.jpg").write_bytes(b"x" * 10)
    assert _open(stage) is not None  # empty; the same version keeps what was staged
    assert (stage.staging / IMAGES_DIR / "ISIC_0000001.jpg").is_file()


def test_another_version_of_the_archive_drops_what_was_staged(tmp_path: Path) -> None:
    stage = _stage(tmp_path)
    assert _open(stage) is not None
    (stage.staging / IMAGES_DIR / "ISIC_0000001.jpg").write_bytes(b"old version")
    assert _open(stage, {**IDENT, "etag": "def"}) is not None
    assert os.listdir(stage.staging / IMAGES_DIR) == []


@pytest.mark.parametrize("why", ["holds-a-file", "a-link", "no-etag"])
def test_nothing_is_staged_where_one_rename_could_not_move_it_in(tmp_path: Path,
                                                                 why: str) -> None:
    stage = _stage(tmp_path)
    ident = IDENT
    if why == "holds-a-file":
        stage.folder.mkdir(parents=True)
        (stage.folder / "ISIC_0000002.jpg").write_bytes(b"already here")
    elif why == "a-link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        stage.folder.parent.mkdir(parents=True)
        stage.folder.symlink_to(elsewhere)
    else:
        ident = {**IDENT, "etag": None}
    assert _open(stage, ident) is None
    assert not stage.staging.exists()


def test_nothing_is_staged_for_a_folder_on_another_filesystem(tmp_path: Path) -> None:
    from support.fs import small_filesystem

    stage = _stage(tmp_path)
    stage.folder.parent.mkdir(parents=True)
    with small_filesystem(stage.folder, 1024 * 1024):
        assert _open(stage) is None
        assert not stage.staging.exists()  # judged before anything is made


@pytest.mark.parametrize("unpacking", ["threads", "processes", "fork-fails"])
def test_staged_members_land_in_the_folder_however_they_are_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unpacking: str
) -> None:
    """Threads, forked children, or threads after the fork failed: the staged members are
    written in the staging (named relative to it) and moved into the folder, byte-identical;
    nothing lands in the working directory, nothing is left staged."""
    import zipfile

    from support.servers import FaultServer

    from isic2020.archive import members as rm
    from isic2020.archive import remote as rz
    from isic2020.archive import unpack_worker
    from isic2020.synthetic import build_dataset

    ds = build_dataset(tmp_path / "ds", n_train=40, n_test=2, image_size=32)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if unpacking == "fork-fails":
        def no_fork(*_a, **_k):
            raise OSError("no fork here")
        monkeypatch.setattr(unpack_worker, "fork_child", no_fork)
    stage = _stage(tmp_path)
    with FaultServer(ds.root, prefix="/challenges/2020/") as srv:
        remote = rz.read_central_directory(srv.url_for("ISIC_2020_Training_JPEG.zip"))
        chosen = rm.image_members(remote, "jpeg")
        res = rm.fetch_members(
            remote, list(chosen.values()), lambda m: f"{stage.folder}/{m.image_file_name()}",
            connections=2, stage=stage, process_min=1 << 60 if unpacking == "threads" else 0)
    assert res.processes == (rm.UNPACKERS if unpacking == "processes" else 0)
    assert res.written == 40
    with zipfile.ZipFile(ds.archive("train", "jpeg")) as zf:
        for name in ds.train_names:
            assert (stage.folder / f"{name}.jpg").read_bytes() == zf.read(f"train/{name}.jpg")
    assert sorted(os.listdir(stage.folder)) == sorted(f"{n}.jpg" for n in ds.train_names)
    assert os.listdir(cwd) == []
    assert not stage.staging.exists()
