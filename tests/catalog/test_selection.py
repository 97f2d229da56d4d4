"""Subsets chosen from the metadata: --where, --images FILE, --sample N --seed S.

Over the frame ``load_metadata`` returns for a synthetic dataset (real CSV formats), so the
expressions users write in notebooks are the ones tested here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
from support.dataset import install

from isic2020.catalog.selection import (
    Selection,
    load_selection,
    make_selection,
    read_images_file,
    save_selection,
    select_images,
    selection_path,
    stratified_sample,
)
from isic2020.catalog.tables import load_metadata
from isic2020.errors import UsageError
from isic2020.synthetic import build_dataset


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("sel")
    ds = build_dataset(root / "m", n_train=2000, n_test=300, seed=3)
    layout = install(ds, root / "data", archives=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_metadata("train", layout.root, image_format=None, manifest=ds.manifest_path)
        test = load_metadata("test", layout.root, image_format=None, manifest=ds.manifest_path)
    return train, test


def test_where_gives_exactly_the_matching_names(frames) -> None:
    train, _ = frames
    got = select_images(train, where="target == 1 and sex == 'female'")
    want = train[(train["target"] == 1) & (train["sex"] == "female")]["image_name"].tolist()
    assert got == want and 0 < len(got) < len(train)
    sites = select_images(train, where="anatom_site_general_challenge in ['torso', 'head/neck']")
    assert set(sites) == set(
        train[train["anatom_site_general_challenge"].isin(["torso", "head/neck"])]["image_name"]
    )
    assert select_images(train, where="age_approx >= 60") == train[
        train["age_approx"] >= 60
    ]["image_name"].tolist()


@pytest.mark.parametrize(
    "expr", ["target === 1", "no_such_column == 1", "sex == ", "target.foo()"]
)
def test_bad_where_is_a_one_line_usage_error(frames, expr: str) -> None:
    train, _ = frames
    with pytest.raises(UsageError) as ei:
        select_images(train, where=expr)
    line = ei.value.one_line()
    assert "\n" not in line and expr in line and "image_name" in line


def test_where_matching_nothing_says_so(frames) -> None:
    train, _ = frames
    with pytest.raises(UsageError, match="matches no image"):
        select_images(train, where="age_approx > 500")


def test_sample_is_stratified_deterministic_and_in_metadata_order(frames) -> None:
    train, _ = frames
    a = select_images(train, sample=500, seed=7)
    assert a == select_images(train, sample=500, seed=7)
    assert len(a) == 500 and len(set(a)) == 500
    assert a != select_images(train, sample=500, seed=8)
    order = {n: i for i, n in enumerate(train["image_name"])}
    assert [order[n] for n in a] == sorted(order[n] for n in a)
    chosen = train[train["image_name"].isin(a)]
    rate, overall = chosen["target"].mean(), train["target"].mean()
    assert abs(rate * 500 - overall * 500) <= 1  # the malignant share, to one image
    # the row order of the CSV does not matter: a hash of seed and name decides
    shuffled = train.sample(frac=1, random_state=1)
    assert sorted(select_images(shuffled, sample=500, seed=7)) == sorted(a)


def test_small_sample_still_holds_a_malignant_image(frames) -> None:
    train, _ = frames
    names = stratified_sample(train, 10, seed=0)
    chosen = train[train["image_name"].isin(names)]
    assert len(names) == 10 and chosen["target"].sum() >= 1


def test_sample_of_test_split_has_no_target_and_is_plain(frames) -> None:
    _, test = frames
    names = select_images(test, sample=50, seed=1)
    assert len(names) == 50 and set(names) <= set(test["image_name"])
    assert names == select_images(test, sample=50, seed=1)
    assert select_images(test, sample=10_000) == test["image_name"].tolist()


def test_bad_sample_size(frames) -> None:
    train, _ = frames
    with pytest.raises(UsageError, match="positive"):
        select_images(train, sample=0)


def test_images_file_lines_comments_paths_and_csv(frames, tmp_path: Path) -> None:
    train, _ = frames
    names = train["image_name"].tolist()
    lines = tmp_path / "list.txt"
    lines.write_text(
        f"# my picks\n{names[5]}\n\n  {names[2]}.jpg  # a comment\ntrain/{names[9]}.jpg\n"
        f"{names[5]}\n",
        encoding="utf-8",
    )
    assert read_images_file(lines) == [names[5], names[2], names[9]]
    assert select_images(train, images_file=lines) == [names[2], names[5], names[9]]
    csv = tmp_path / "picks.csv"
    csv.write_text(f"patient_id,image_name,target\r\nIP_1,{names[7]},0\r\nIP_2,{names[3]},1\r\n",
                   encoding="utf-8-sig")
    assert select_images(train, images_file=csv) == [names[3], names[7]]


def test_unknown_and_malformed_names_are_listed(frames, tmp_path: Path) -> None:
    train, _ = frames
    f = tmp_path / "list.txt"
    f.write_text("ISIC_0000000x\nhello\n" + train["image_name"].iloc[0] + "\n")
    with pytest.raises(UsageError) as ei:
        select_images(train, images_file=f)
    assert "line 1" in ei.value.message and "'hello'" in ei.value.message
    unknown = [f"ISIC_99999{i:02d}" for i in range(8)]
    unknown = [n for n in unknown if n not in set(train["image_name"])]
    f.write_text("\n".join([train["image_name"].iloc[0], *unknown]) + "\n")
    with pytest.raises(UsageError) as ei:
        select_images(train, images_file=f)
    msg = ei.value.message
    assert f"{len(unknown)} of {len(unknown) + 1}" in msg and unknown[0] in msg
    assert "more" in msg
    with pytest.raises(UsageError, match="does not exist"):
        select_images(train, images_file=tmp_path / "nope.txt")


def test_where_then_images_then_sample(frames, tmp_path: Path) -> None:
    train, _ = frames
    female = set(select_images(train, where="sex == 'female'"))
    picks = train["image_name"].tolist()[:400]
    f = tmp_path / "list.txt"
    f.write_text("\n".join(picks))
    both = select_images(train, where="sex == 'female'", images_file=f)
    assert set(both) == female & set(picks)
    some = select_images(train, where="sex == 'female'", images_file=f, sample=20, seed=4)
    assert len(some) == 20 and set(some) <= set(both)
    assert some == select_images(train, where="sex == 'female'", images_file=f, sample=20,
                                 seed=4)


def test_selection_record_round_trip(frames, tmp_path: Path) -> None:
    train, _ = frames
    sel = make_selection(train, "train", where="target == 1", sample=5, seed=2, fmt="jpeg")
    path = selection_path(tmp_path / ".isic2020", "train", "jpeg")
    assert path == tmp_path / ".isic2020" / "selections" / "train-jpeg.json"
    save_selection(path, sel)
    back = load_selection(path)
    assert back == sel and back.fingerprint == sel.fingerprint
    assert back.describe() == '--where "target == 1" --sample 5 --seed 2'
    assert Selection.from_dict(sel.to_dict()) == sel
    path.write_text("{broken")
    assert load_selection(path) is None


def test_the_pandas_free_table_chooses_the_same_images_as_the_frame(
    frames, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``fetch --sample``/``--images`` choose from ``load_metadata_table`` (no pandas): the same
    names, in the same order, as from ``load_metadata``'s frame, and as main chose before
    (the digests were computed with the frame-only code)."""
    import hashlib

    from isic2020.catalog.manifest import load_manifest
    from isic2020.catalog.tables import load_metadata_table

    train, test = frames
    root = tmp_path_factory.mktemp("sel_table")
    ds = build_dataset(root / "m", n_train=2000, n_test=300, seed=3)
    layout = install(ds, root / "data", archives=False)
    man = load_manifest(ds.manifest_path)
    tables = {s: load_metadata_table(s, layout.root, man) for s in ("train", "test")}
    listing = root / "names.txt"
    listing.write_text("\n".join(train["image_name"].iloc[::7].tolist()[::-1]) + "\n")
    digests = {}
    for split, frame in (("train", train), ("test", test)):
        for kw in ({"sample": 37, "seed": 5}, {"sample": 1, "seed": 0}, {"sample": 500},
                   {"images_file": listing, "sample": 20, "seed": 2}, {}):
            if split == "test" and "images_file" in kw:
                continue
            got = select_images(tables[split], **kw)
            assert got == select_images(frame, **kw), (split, kw)
            digests[f"{split} {sorted(kw)} {kw.get('sample')}"] = got
    assert stratified_sample(tables["train"], 10, seed=0) == stratified_sample(train, 10, seed=0)
    text = repr(sorted(digests.items())).replace(str(root), "ROOT")
    assert hashlib.sha256(text.encode()).hexdigest() == PINNED_SELECTIONS, text[:200]
    with pytest.raises(UsageError, match="positive"):
        select_images(tables["train"], sample=0)


#: sha256 of the selections above as main's frame-only code made them.
PINNED_SELECTIONS = "121405531cc91914e12578f140108b9b59670064c4fde089bb2ec51eb41aa21f"
