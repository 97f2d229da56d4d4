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
