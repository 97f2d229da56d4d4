"""A folder judged complete against its archive's saved directory, and the memo of that
judgement (``saved.check_folder``).

What a user depends on: a complete re-run of ``fetch`` costs one listing of each image folder
(the memo), yet any change a listing can see (an image deleted, truncated, renamed; a stray
file) is judged again against the directory and the damaged image named; a memo made against
another directory, or with the directory gone, is never trusted.
"""

from __future__ import annotations

import os
import zipfile

import pytest

from isic2020.archive.rules import image_file_name
from isic2020.archive.saved import check_folder, directory_path, save_directory
from isic2020.synthetic import build_dataset

TRAIN = "ISIC_2020_Training_JPEG.zip"
ETAG, SHA = '"e1"', "2" * 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("memo"), n_train=40, n_test=2, image_size=32)


@pytest.fixture
def unpacked(dataset, tmp_path):
    """``(state dir, folder, archive size)``: the train zip's images unpacked as ``fetch``
    lays them out, and its directory saved as ``fetch`` saves it."""
    zpath = dataset.root / TRAIN
    state, folder = tmp_path / ".isic2020", tmp_path / "jpeg" / "train"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            final = image_file_name(info.filename, "jpg")
            if final is not None:
                (folder / final).write_bytes(zf.read(info))
    assert save_directory(zpath, directory_path(state, TRAIN), "http://m/" + TRAIN, ETAG, SHA)
    return state, folder, zpath.stat().st_size


def _check(unpacked, etag: str = ETAG):
    state, folder, size = unpacked
    return check_folder(state, TRAIN, "jpeg", folder, size, etag, SHA)


def test_a_complete_folder_is_judged_once_then_by_its_memo(unpacked):
    first = _check(unpacked)
    assert first is not None and first.remote is not None, "the directory was not loaded"
    assert first.missing.members == []
    memo = directory_path(unpacked[0], TRAIN).with_name(f"{TRAIN}.complete.json")
    assert memo.is_file()
    second = _check(unpacked)
    assert second is not None and second.missing.members == []
    assert second.remote is None, "the memo did not stand in for loading the directory"


@pytest.mark.parametrize("change", ["truncated", "deleted", "renamed", "stray"])
def test_any_change_the_listing_sees_is_judged_again(unpacked, change):
    state, folder, _ = unpacked
    assert _check(unpacked).remote is not None
    assert _check(unpacked).remote is None
    victim = sorted(folder.iterdir())[3]
    if change == "truncated":  # in place, mtime put back: only the size says it
        st = victim.stat()
        os.truncate(victim, st.st_size - 1)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "deleted":
        victim.unlink()
    elif change == "renamed":
        victim.rename(folder / "ISIC_9999999.jpg")
    else:
        (folder / "notes.txt").write_text("stray\n")
    again = _check(unpacked)
    assert again is not None and again.remote is not None, "a stale memo was trusted"
    if change == "stray":
        assert again.missing.members == []
        assert _check(unpacked).remote is None, "the new listing's memo was not kept"
    else:
        assert again.missing.names == [victim.name]
        assert (again.missing.wrong_size if change == "truncated"
                else again.missing.absent) == [victim.name]


def test_a_memo_is_not_trusted_for_another_archive_or_without_its_directory(unpacked):
    state, _, _ = unpacked
    assert _check(unpacked).missing.members == []
    assert _check(unpacked).remote is None
    assert _check(unpacked, etag='"another"') is None, "a memo stood in for another archive"
    directory_path(state, TRAIN).unlink()
    assert _check(unpacked) is None, "a memo stood in for a directory that is gone"


def test_a_rewritten_directory_misses_the_memo(unpacked, dataset):
    state, _, _ = unpacked
    assert _check(unpacked).missing.members == []
    path = directory_path(state, TRAIN)
    st = path.stat()
    assert save_directory(dataset.root / TRAIN, path, "http://m/" + TRAIN, ETAG, SHA)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = _check(unpacked)
    assert again is not None and again.remote is not None
    assert again.missing.members == []


def test_memo_writes_stay_in_the_state_folder(unpacked, tmp_path):
    """A link planted where the memo goes is replaced, its target untouched."""
    state, _, _ = unpacked
    outside = tmp_path / "outside.json"
    outside.write_text("keep\n")
    memo = directory_path(state, TRAIN).with_name(f"{TRAIN}.complete.json")
    memo.symlink_to(outside)
    assert _check(unpacked).missing.members == []
    assert outside.read_text() == "keep\n"
    assert not memo.is_symlink() and memo.is_file()
    assert _check(unpacked).remote is None
