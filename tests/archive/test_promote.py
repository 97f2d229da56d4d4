"""Staged images into the layout (``isic2020.archive.staging.promote``), on real files.

What a user depends on: into an empty or missing ``jpeg/train`` the staged images folder moves
in one rename (33,126 images: one ``renameat``), holding exactly the verified members (a short
file from a killed write, a temporary, a stray folder never comes along); into a folder that
already holds files (a resume, a subset) they move one by one and what was there stays; and a
link planted in ``DATA/.isic2020`` never makes promotion list, move or delete anything outside
DATA.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from support.snapshot import snapshot

from isic2020.archive.local import plan_archive
from isic2020.archive.rules import Member
from isic2020.archive.staging import IMAGES_DIR, OBJECT_FILE, promote
from isic2020.catalog.manifest import load_manifest
from isic2020.store.fsutil import StateLinkError, temp_name
from isic2020.synthetic import build_dataset

TRAIN = "ISIC_2020_Training_JPEG.zip"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Member]]:
    ds = build_dataset(tmp_path_factory.mktemp("promote"), n_train=12, n_test=2,
                       image_size=32)
    (entry,) = [f for f in load_manifest(ds.manifest_path).files if f.name == TRAIN]
    path = ds.files[TRAIN] if TRAIN in ds.files else next(ds.root.rglob(TRAIN))
    return path, plan_archive(path, entry).members


def _stage(data: Path, archive: tuple[Path, list[Member]]) -> tuple[Path, dict[str, bytes]]:
    """``DATA/.isic2020/staging/<zip>/images`` holding every member, as streaming leaves it."""
    path, members = archive
    staging = data / ".isic2020" / "staging" / TRAIN
    (staging / IMAGES_DIR).mkdir(parents=True)
    (staging / OBJECT_FILE).write_text('{"etag": "e", "size": 1}')
    want: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as zf:
        for m in members:
            want[m.final] = zf.read(m.entry.name)
            (staging / IMAGES_DIR / m.final).write_bytes(want[m.final])
    return staging, want


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


@pytest.mark.parametrize("dest_exists", [True, False])
def test_an_empty_destination_becomes_the_staged_folder_in_one_rename(
    archive, tmp_path, dest_exists
):
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    images = staging / IMAGES_DIR
    first, second = sorted(want)[:2]
    (images / first).write_bytes(want[first][:-5])  # a write killed midway: short
    (images / temp_name(second)).write_bytes(want[second])  # an old temporary
    (images / "stray.txt").write_bytes(b"x")
    inode = images.stat().st_ino
    dest = data / "jpeg" / "train"
    if dest_exists:
        dest.mkdir(parents=True)
    done = promote(staging, dest, archive[1])
    assert dest.stat().st_ino == inode  # the folder itself moved: one rename
    expect = {k: v for k, v in want.items() if k != first}
    assert _files(dest) == expect
    assert done.images == len(expect)
    assert done.present == {k: len(v) for k, v in expect.items()}
    assert not staging.exists()


def test_a_destination_holding_files_receives_the_images_one_by_one_and_keeps_its_own(
    archive, tmp_path
):
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    dest = data / "jpeg" / "train"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_bytes(b"mine\n")
    some = sorted(want)[0]
    (dest / some).write_bytes(want[some])  # already there (a subset, a resume)
    inode = dest.stat().st_ino
    done = promote(staging, dest, archive[1])
    assert dest.stat().st_ino == inode
    assert _files(dest) == {**want, "notes.txt": b"mine\n"}
    assert done.images == len(want) and done.present is None
    assert not staging.exists()


@pytest.mark.parametrize("dest_holds_files", [False, True])
def test_only_vouched_images_that_moved_come_back_as_checked(archive, tmp_path,
                                                             dest_holds_files):
    """``vouched``: what the writer checked as it wrote it. What promote moves of it is
    ``checked`` (the closing verify will not read it back); a name vouched for but not
    there is not, nor is any image it did not vouch for; a short file stays out."""
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    names = sorted(want)
    short = names[0]
    (staging / IMAGES_DIR / short).write_bytes(want[short][:-5])  # a killed write
    dest = data / "jpeg" / "train"
    if dest_holds_files:
        dest.mkdir(parents=True)
        (dest / "notes.txt").write_bytes(b"mine\n")
    vouched = set(names[1:4]) | {"ISIC_9999999.jpg"}
    done = promote(staging, dest, archive[1], vouched)
    assert done.checked == set(names[1:4])
    moved = _files(dest)
    assert short not in moved
    assert {n: moved[n] for n in names[1:]} == {n: want[n] for n in names[1:]}


def test_a_folder_inside_the_staged_images_never_reaches_the_layout(archive, tmp_path):
    """A folder named like a member (it cannot be unlinked) must not ride along with a
    one-rename move: the images then go one by one."""
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    name = sorted(want)[0]
    (staging / IMAGES_DIR / name).unlink()
    (staging / IMAGES_DIR / name).mkdir()
    (staging / IMAGES_DIR / name / "payload").write_bytes(b"x")
    dest = data / "jpeg" / "train"
    done = promote(staging, dest, archive[1])
    assert _files(dest) == {k: v for k, v in want.items() if k != name}
    assert done.present is None


def test_an_images_folder_someone_else_owns_does_not_become_the_layout_folder(
    archive, tmp_path
):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the folder to another user")
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    os.chown(staging / IMAGES_DIR, 4242, 4242)
    dest = data / "jpeg" / "train"
    dest.mkdir(parents=True)
    done = promote(staging, dest, archive[1])
    assert dest.stat().st_uid == os.geteuid()
    assert _files(dest) == want and done.present is None


def _decoy(root: Path, want: dict[str, bytes]) -> Path:
    """Outside DATA: files named and sized like staged images, and a folder like a staging."""
    root.mkdir(parents=True)
    for name, body in want.items():
        (root / name).write_bytes(body)
    (root / "precious.txt").write_bytes(b"keep\n")
    (root / IMAGES_DIR).mkdir()
    (root / IMAGES_DIR / sorted(want)[0]).write_bytes(want[sorted(want)[0]])
    (root / OBJECT_FILE).write_text('{"etag": "e", "size": 1}')
    return root


@pytest.mark.parametrize("planted", ["images", "zip", "staging"])
def test_a_link_planted_in_the_staging_moves_and_deletes_nothing_outside_data(
    archive, tmp_path, planted
):
    """``staging/<zip>/images``, ``staging/<zip>`` or ``staging`` itself a link to a folder
    outside DATA: promotion refuses, and the decoy ends exactly as it was."""
    data = tmp_path / "d"
    staging, want = _stage(data, archive)
    decoy = _decoy(tmp_path / "decoy", want)
    target = {"images": staging / IMAGES_DIR, "zip": staging, "staging": staging.parent}[planted]
    os.rename(target, tmp_path / "moved-away")
    target.symlink_to(decoy, target_is_directory=True)
    before = snapshot(decoy)
    dest = data / "jpeg" / "train"
    dest.mkdir(parents=True)
    with pytest.raises(StateLinkError):
        promote(staging, dest, archive[1])
    assert snapshot(decoy) == before
    assert list(dest.iterdir()) == []
