"""export --layout webdataset: tar shards that the webdataset library reads, byte-identical
on every run, resumable after a damaged image or a full disk, refusing a DEST that is not ours.

Everything a user does goes through the real CLI; the data directory is the synthetic metadata
with real (tiny) JPEGs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.jpegs import write_jpegs
from support.metadata import make_synthetic

INDEX = "isic2020-index.json"
KAGGLE_TRAIN = [
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
]


def _data(tmp_path: Path, folds: bool = True):
    data = tmp_path / "data"
    syn = make_synthetic(data)
    images = write_jpegs(data, {"train": list(syn.train["image_name"]),
                                "test": list(syn.test["image_name"])})
    if folds:
        r = run_cli("folds", "--data-dir", str(data), "--json")
        assert r.returncode == 0, r.stderr
    return data, syn, images


def _export(data: Path, dest: Path, *extra: str, env=None):
    return run_cli("export", "--layout", "webdataset", "--data-dir", str(data), str(dest),
                   "--json", *extra, env=env)


def _shards(dest: Path, split: str) -> list[Path]:
    return sorted(dest.glob(f"isic2020-{split}-*.tar"))


def _snapshot(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(dest.iterdir())}


def test_shards_read_back_with_webdataset(tmp_path: Path) -> None:
    """Every training image is one sample: KEY.jpg the verified bytes, KEY.json the row with
    Kaggle's names plus fold, KEY.cls the target; the index matches the files."""
    wds = pytest.importorskip("webdataset")
    import pandas as pd

    data, syn, images = _data(tmp_path)
    dest = tmp_path / "shards"
    r = _export(data, dest, "--shard-size", "50KB")
    assert r.returncode == 0, r.stderr
    train = _shards(dest, "train")
    assert len(train) > 3 and len(_shards(dest, "test")) >= 1
    folds = pd.read_csv(data / "folds.csv").set_index("image_name")["fold"]
    truth = syn.train.set_index("image_name")
    ds = wds.WebDataset([str(p) for p in train], shardshuffle=False).decode()
    seen = []
    for sample in ds:
        key = sample["__key__"]
        seen.append(key)
        assert sample["jpg"] == images[key]  # not decoded: .decode() leaves jpg bytes alone
        assert sample["cls"] == int(truth.loc[key, "target"])
        meta = sample["json"]
        assert list(meta)[: len(KAGGLE_TRAIN)] == KAGGLE_TRAIN
        assert meta["fold"] == int(folds[key])
        assert meta["patient_id"] == truth.loc[key, "patient_id"]
        age = truth.loc[key, "age_approx"]
        assert meta["age_approx"] == (int(age) if age else None)
    assert seen == sorted(syn.train["image_name"])

    index = json.loads((dest / INDEX).read_text())
    entries = index["splits"]["train"]["shards"]
    assert [e["name"] for e in entries] == [p.name for p in train]
    assert sum(e["samples"] for e in entries) == len(syn.train)
    for e, p in zip(entries, train):
        blob = p.read_bytes()
        assert e["bytes"] == len(blob) and e["sha256"] == hashlib.sha256(blob).hexdigest()
        assert len(blob) <= 50_000 or e["samples"] == 1
    test_keys = [s["__key__"] for s in wds.WebDataset(
        [str(p) for p in _shards(dest, "test")], shardshuffle=False)]
    assert test_keys == sorted(syn.test["image_name"])
    with tarfile.open(_shards(dest, "test")[0]) as tf:
        names = tf.getnames()
    assert not any(n.endswith(".cls") for n in names)  # the test split has no labels


def test_same_input_gives_byte_identical_shards(tmp_path: Path) -> None:
    """Two exports of the same data (fresh DESTs, different times) are byte for byte equal,
    with fixed headers; a third run into the same DEST rewrites nothing."""
    data, _, _ = _data(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert _export(data, a, "--shard-size", "40KB").returncode == 0
    os.utime(data / "jpeg" / "train", (1, 1))  # listing order and times must not matter
    assert _export(data, b, "--shard-size", "40KB").returncode == 0
    assert _snapshot(a) == _snapshot(b)
    with tarfile.open(_shards(a, "train")[0]) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
        names = tf.getnames()
    assert names == sorted(names)
    before = {p.name: p.stat().st_mtime_ns for p in a.iterdir() if p.suffix == ".tar"}
    again = _export(data, a, "--shard-size", "40KB")
    assert again.returncode == 0, again.stderr
    assert all(s["written"] == 0 and s["kept"] == s["shards"] for s in again.json["splits"])
    assert {p.name: p.stat().st_mtime_ns for p in a.iterdir() if p.suffix == ".tar"} == before


def test_damaged_image_stops_then_resumes(tmp_path: Path) -> None:
    """A truncated JPEG in the middle: one line naming it, exit 1, the shards before it
    finished and in the index, nothing at the next shard's name, no temporaries; once it is
    repaired the same command writes only what is left and ends identical to a clean export."""
    data, syn, images = _data(tmp_path)
    clean = tmp_path / "clean"
    assert _export(data, clean, "--shard-size", "40KB", "--split", "train").returncode == 0
    keys = sorted(syn.train["image_name"])
    bad = data / "jpeg" / "train" / f"{keys[len(keys) // 2]}.jpg"
    bad.write_bytes(images[bad.stem][:-50] + b"\x00" * 50)  # same size, no EOI
    dest = tmp_path / "out"
    r = _export(data, dest, "--shard-size", "40KB", "--split", "train")
    assert r.returncode == 1
    assert len(r.error_lines) == 1 and str(bad) in r.error_lines[0], r.stderr
    assert "truncated JPEG" in r.error_lines[0] and "Traceback" not in r.stderr
    index = json.loads((dest / INDEX).read_text())
    done = index["splits"]["train"]["shards"]
    assert done and not index["splits"]["train"]["complete"]
    on_disk = sorted(p.name for p in dest.iterdir())
    assert on_disk == sorted([INDEX, *(e["name"] for e in done)])  # nothing half-written
    for e in done:
        assert (dest / e["name"]).read_bytes() == (clean / e["name"]).read_bytes()

    bad.write_bytes(images[bad.stem])
    r2 = _export(data, dest, "--shard-size", "40KB", "--split", "train")
    assert r2.returncode == 0, r2.stderr
    (split,) = r2.json["splits"]
    assert split["kept"] == len(done) and split["written"] == split["shards"] - len(done)
    assert _snapshot(dest) == _snapshot(clean)


def test_resized_folder_is_exported_as_it_is(tmp_path: Path) -> None:
    """--format jpeg-512 takes DATA/jpeg-512/<split>/ (the resize command's folder), bytes as
    they are; the index says which format."""
    wds = pytest.importorskip("webdataset")
    data, syn, images = _data(tmp_path, folds=False)
    small = write_jpegs(data, {"train": list(syn.train["image_name"])}, fmt="jpeg-512",
                        size=(8, 8))
    dest = tmp_path / "out"
    r = _export(data, dest, "--format", "jpeg-512", "--split", "train")
    assert r.returncode == 0, r.stderr
    got = {s["__key__"]: s["jpg"] for s in wds.WebDataset(
        [str(p) for p in _shards(dest, "train")], shardshuffle=False)}
    assert got == small and got != {k: images[k] for k in got}
    doc = json.loads((dest / INDEX).read_text())
    assert doc["splits"]["train"]["format"] == "jpeg-512" and "test" not in doc["splits"]
    with tarfile.open(_shards(dest, "train")[0]) as tf:
        meta = json.loads(tf.extractfile(f"{min(got)}.json").read())
    assert "fold" not in meta  # no folds.csv: no fold column


def test_missing_images_are_left_out_and_exit_1(tmp_path: Path) -> None:
    data, syn, _ = _data(tmp_path, folds=False)
    gone = sorted(syn.train["image_name"])[:3]
    for n in gone:
        (data / "jpeg" / "train" / f"{n}.jpg").unlink()
    dest = tmp_path / "out"
    r = _export(data, dest, "--split", "train")
    assert r.returncode == 1
    assert r.json["splits"][0]["missing"] == 3
    assert r.json["splits"][0]["samples"] == len(syn.train) - 3
    assert any("3 of" in n and "not in" in n for n in r.json["notes"])
    with tarfile.open(_shards(dest, "train")[0]) as tf:
        assert not any(m.name.startswith(tuple(gone)) for m in tf.getmembers())


def test_bigger_shards_replace_the_old_ones(tmp_path: Path) -> None:
    """A new --shard-size re-plans: the shards that changed are rewritten, the ones past the
    new end are removed (a loader globbing the folder never sees stale samples)."""
    data, syn, _ = _data(tmp_path, folds=False)
    dest = tmp_path / "out"
    assert _export(data, dest, "--shard-size", "30KB", "--split", "train").returncode == 0
    many = len(_shards(dest, "train"))
    r = _export(data, dest, "--shard-size", "1GB", "--split", "train")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in _shards(dest, "train")] == ["isic2020-train-000000.tar"]
    assert len(r.json["splits"][0]["removed"]) == many - 1
    with tarfile.open(dest / "isic2020-train-000000.tar") as tf:
        assert sum(n.endswith(".jpg") for n in tf.getnames()) == len(syn.train)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--layout", "zarr"], 2, "'zarr' is not one of"),
        (["--layout", "webdataset", "--format", "png"], 2, "unknown image format 'png'"),
        (["--layout", "webdataset", "--shard-size", "lots"], 2, "bad shard size 'lots'"),
        (["--layout", "webdataset", "--split", "test"], 2, "no test metadata"),
        (["--layout", "kaggle", "--split", "train"], 2, "for the webdataset and parquet"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    data = tmp_path / "data"
    make_synthetic(data)
    if "test" in args:
        next((data / "metadata").glob("*Test*")).unlink()
    dest = tmp_path / "out"
    r = run_cli("export", "--data-dir", str(data), str(dest), *args)
    assert r.returncode == code, r.stderr
    assert len(r.error_lines) == 1 and words in r.error_lines[0], r.stderr
    assert not dest.exists() or not any(dest.iterdir())


def test_dest_inside_data_or_holding_other_files_is_refused(tmp_path: Path) -> None:
    data, _, _ = _data(tmp_path, folds=False)
    inside = _export(data, data / "shards")
    assert inside.returncode == 2 and "inside the data directory" in inside.error_lines[0]
    assert not (data / "shards").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = _export(data, mine)
    assert r.returncode == 2 and "notes.txt" in r.error_lines[0], r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # a parquet export is not updated as a webdataset one
    pq = tmp_path / "pq"
    pq.mkdir()
    (pq / INDEX).write_text(json.dumps({"tool": "isic2020", "layout": "parquet", "splits": {}}))
    r = _export(data, pq)
    assert r.returncode == 2 and "holds a parquet export" in r.error_lines[0], r.stderr


def _mount_tmpfs(path: Path, size: str) -> None:
    """A real tmpfs at ``path``; in CI (root) failing to mount is a failure, else a skip."""
    path.mkdir(parents=True, exist_ok=True)
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            why = f"mount -t tmpfs failed: {r.stderr.strip()}"
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run this test (as root)")
        pytest.skip(why)


def test_full_disk_keeps_finished_shards_and_resumes(tmp_path: Path) -> None:
    """DEST on a real, too small tmpfs: one line, exit 3, only finished shards (all in the
    index, with their digests) and no temporaries; with room the same command finishes,
    keeping what was there, and the result equals an export on a roomy disk."""
    data, _, _ = _data(tmp_path, folds=False)
    roomy = tmp_path / "roomy"
    assert _export(data, roomy, "--shard-size", "100KB", "--split", "train").returncode == 0
    total = sum(p.stat().st_size for p in roomy.iterdir())
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, f"{total // 3 // 4096 * 4096}")
    try:
        dest = mnt / "shards"
        env = cli_env()
        r = _export(data, dest, "--shard-size", "100KB", "--split", "train", env=env)
        assert r.returncode == 3, r.stderr
        assert len(r.error_lines) == 1 and "No space left" in r.error_lines[0], r.stderr
        index = json.loads((dest / INDEX).read_text())
        done = [e["name"] for e in index["splits"]["train"]["shards"]]
        assert done and sorted(p.name for p in dest.iterdir()) == sorted([INDEX, *done])
        for name in done:
            assert (dest / name).read_bytes() == (roomy / name).read_bytes()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True, timeout=30)
        r2 = _export(data, dest, "--shard-size", "100KB", "--split", "train", env=env)
        assert r2.returncode == 0, r2.stderr
        assert r2.json["splits"][0]["kept"] == len(done)
        assert _snapshot(dest) == _snapshot(roomy)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_index_sizes_are_the_planned_sizes(tmp_path: Path) -> None:
    """The plan knows each shard's size before writing (cut points never depend on timing)."""
    from isic2020.training.samples import SampleQuery, load_samples
    from isic2020.training.shards import plan_shards
    from isic2020.training.webdataset import WebDatasetFormat

    data, _, _ = _data(tmp_path, folds=False)
    dest = tmp_path / "out"
    assert _export(data, dest, "--shard-size", "40KB", "--split", "train").returncode == 0
    fmt = WebDatasetFormat()
    sset = load_samples(SampleQuery("train", data_dir=data))
    planned = plan_shards(sset.samples, fmt, "train", 40_000)
    sizes = [sum(fmt.cost(s) for s in p.samples) + 1024 for p in planned]
    assert sizes == [p.stat().st_size for p in _shards(dest, "train")]
    # the hand-made headers are the bytes tarfile itself writes for these fields
    from isic2020.training.webdataset import header, reference_header

    for name, size in [("ISIC_0000001.jpg", 123_456), ("ISIC_0000001.cls", 1), ("a" * 100, 0)]:
        assert header(name, size) == reference_header(name, size)
