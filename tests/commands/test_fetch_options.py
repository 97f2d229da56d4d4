"""``isic2020.fetch`` takes its options as three small objects (what, where, how) and still
takes every keyword it always took: a script written for either form fetches the same files,
and a misspelt keyword is an error, never silently ignored.

Against a real FaultServer on 127.0.0.1 serving a synthetic mirror.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.servers import FaultServer

import isic2020
from isic2020.commands.fetch import FetchHow, FetchPlace, FetchWhat
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"

#: Every keyword ``isic2020.fetch`` takes (the 18 it took before the option objects, then the
#: newer ones), each with a non-default value.
OLD_KEYWORDS = {
    "split": "train", "fmt": "dicom", "images": "names.txt", "sample": 5, "seed": 7,
    "where": "target == 1",
    "reset_selection": True,
    "data_dir": "/d", "manifest": "m.toml", "mirrors": ("http://127.0.0.1:1/",),
    "keep_archives": False,
    "connections": 3, "extract": False, "direct": True, "dry_run": True, "lock_timeout": 2.0,
    "progress": True, "log": print, "options": None,
    # Added since, each a field of FetchHow like the rest:
    "limit_rate": "1M", "read_timeout": 5.0, "connect_timeout": 2.0, "retry_window": 9.0,
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("syn"), n_train=20, n_test=5, image_size=32,
                         formats=("jpeg",))


def test_every_old_keyword_lands_in_the_field_of_its_name() -> None:
    """Each keyword is a field of exactly one option object, with that value."""
    from isic2020.commands.fetch_options import options_from_keywords

    what, place, how = options_from_keywords(None, None, None, dict(OLD_KEYWORDS))
    got = {**dataclasses.asdict(what), **dataclasses.asdict(place), **dataclasses.asdict(how)}
    assert got == OLD_KEYWORDS
    # A keyword replaces that field of an object given, and leaves its other fields.
    what, _, _ = options_from_keywords(FetchWhat(split="test", seed=3), None, None,
                                       {"split": "train"})
    assert (what.split, what.seed) == ("train", 3)


def test_an_unknown_keyword_or_a_wrong_object_is_a_type_error(tmp_path: Path) -> None:
    """Nothing is fetched (or written) for a call that is not what it seems."""
    with pytest.raises(TypeError, match="'formt'"):
        isic2020.fetch(split="test", formt="none", data_dir=tmp_path / "d")
    with pytest.raises(TypeError, match="FetchPlace"):
        isic2020.fetch(FetchWhat(), FetchWhat())
    assert not (tmp_path / "d").exists()


def test_objects_and_keywords_fetch_the_same_files(dataset, tmp_path: Path) -> None:
    """The same fetch written both ways: the same files, the same bytes from the server."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        by_keywords = isic2020.fetch(split="train", fmt="jpeg", data_dir=tmp_path / "k",
                                     manifest=dataset.manifest_path, mirrors=[srv.url],
                                     keep_archives=False)
        sent_k = srv.bytes_sent()
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        by_objects = isic2020.fetch(
            FetchWhat(split="train", fmt="jpeg"),
            FetchPlace(data_dir=tmp_path / "o", manifest=dataset.manifest_path,
                       mirrors=[srv.url], keep_archives=False),
            FetchHow(connections=2),
        )
        sent_o = srv.bytes_sent()
    assert by_keywords.exit_code == by_objects.exit_code == 0
    assert sent_k == sent_o == by_objects.to_dict()["bytes_transferred"] > 0

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and ".isic2020" not in p.parts)

    assert files(tmp_path / "k") == files(tmp_path / "o")
    assert sorted(p.stem for p in (tmp_path / "o" / "jpeg" / "train").iterdir()) == sorted(
        dataset.train_names
    )
    assert not (tmp_path / "o" / "archives" / "ISIC_2020_Training_JPEG.zip").exists()
