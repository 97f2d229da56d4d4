"""Subsets and direct mode through the real CLI: only the chosen members' byte ranges travel,
straight into the layout, and `verify` checks a subset against its recorded selection."""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile

from support.cli import cli_env, run_cli
from support.fixtures import served_dataset

from isic2020.catalog.selection import select_images
from isic2020.catalog.tables import load_metadata

dataset, mirror = served_dataset("syn", n_train=400, n_test=30, image_size=64)


def _fetch(data, mirror, dataset, *args):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--json", *args,
                   env=cli_env(dataset.manifest_path))


def _metadata(data, split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_metadata(split, data, image_format=None)


def test_sample_fetches_only_the_chosen_images_and_verify_checks_the_subset(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    r = _fetch(data, mirror, dataset, "--split", "train", "--sample", "12", "--seed", "3")
    assert r.returncode == 0, r.stderr
    expected = select_images(_metadata(data, "train"), sample=12, seed=3)
    got = sorted(p.stem for p in (data / "jpeg" / "train").iterdir())
    assert got == sorted(expected)
    assert not (data / "archives" / "ISIC_2020_Training_JPEG.zip").exists()
    # Server side: the tail, the central directory and 12 members, not the archive.
    zip_name = "ISIC_2020_Training_JPEG.zip"
    assert mirror.bytes_sent(zip_name) < dataset.path(zip_name).stat().st_size / 4
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        for info in zf.infolist():
            stem = info.filename.rsplit("/", 1)[-1][:-4]
            if stem in expected:
                assert (data / "jpeg" / "train" / f"{stem}.jpg").read_bytes() == zf.read(info)
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--json",
                env=cli_env(dataset.manifest_path))
    assert v.returncode == 0, v.stdout + v.stderr
    names = [c["name"] for c in v.json["checks"]]
    assert "images/jpeg/train/selection" in names


def test_where_selects_by_metadata(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    r = _fetch(data, mirror, dataset, "--split", "train", "--where", "target == 1")
    assert r.returncode == 0, r.stderr
    df = _metadata(data, "train")
    expected = sorted(df.loc[df["target"] == 1, "image_name"])
    assert expected, "the synthetic set has malignant images"
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == expected


def test_bad_where_is_a_usage_error_in_one_line(dataset, mirror, tmp_path):
    r = _fetch(tmp_path / "d", mirror, dataset, "--split", "train", "--where", "target ==")
    assert r.returncode == 2
    assert len(r.error_lines) == 1 and "--where" in r.error_lines[0]


def test_subset_needs_one_split(dataset, mirror, tmp_path):
    r = _fetch(tmp_path / "d", mirror, dataset, "--sample", "3")
    assert r.returncode == 2 and "--split" in r.error_lines[0]


def test_direct_gives_the_same_files_as_download_then_extract_without_the_archive(
    dataset, mirror, tmp_path
):
    direct, classic = tmp_path / "direct", tmp_path / "classic"
    r = _fetch(direct, mirror, dataset, "--split", "test", "--direct")
    assert r.returncode == 0, r.stderr
    assert r.json["verification"]["ok"] is True
    assert _fetch(classic, mirror, dataset, "--split", "test").returncode == 0
    a = {p.name: p.read_bytes() for p in (direct / "jpeg" / "test").iterdir()}
    b = {p.name: p.read_bytes() for p in (classic / "jpeg" / "test").iterdir()}
    assert a == b and len(a) == len(dataset.test_names)
    assert not (direct / "archives").exists() or not any((direct / "archives").iterdir())
    again = _fetch(direct, mirror, dataset, "--split", "test", "--direct")
    assert again.returncode == 0, again.stderr
    assert again.json["bytes_transferred"] == 0  # directory cached, every image present


def test_inspect_reports_members_against_the_metadata(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    assert _fetch(data, mirror, dataset, "--format", "none", "--split", "train").returncode == 0
    r = run_cli("inspect", "--data-dir", str(data), "--mirror", mirror.url, "--split", "train",
                "--json", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    (arch,) = r.json["archives"]
    assert arch["images"] == len(dataset.train_names)
    zip_name = "ISIC_2020_Training_JPEG.zip"
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        assert arch["entries"] == len(zf.infolist())
    # The tail and the central directory only: a small part of the archive.
    assert mirror.bytes_sent(zip_name) < dataset.path(zip_name).stat().st_size / 4


# --------------------------------------------------------------------------------------------
# --dry-run of subsets and --direct: the figures of the fetch that follows, nothing written


def _snapshot(root):
    """Every path under ``root`` with its bytes' digest, size and mtime (folders: mtime), so
    a file created and removed again (a lock, a temporary) still shows as a change."""
    if not root.exists():
        return None
    out = {".": root.stat().st_mtime_ns}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def _zip_row(doc, zip_name):
    (row,) = [x for x in doc["dry_run"] if x["name"] == zip_name]
    return row


def test_dry_run_of_a_sample_predicts_the_fetch_and_writes_nothing(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    zip_name = "ISIC_2020_Training_JPEG.zip"
    assert _fetch(data, mirror, dataset, "--split", "train", "--format", "none").returncode == 0
    before = _snapshot(data)
    r = _fetch(data, mirror, dataset, "--split", "train", "--sample", "12", "--seed", "3",
               "--dry-run")
    assert r.returncode == 0, r.stderr
    row = _zip_row(r.json, zip_name)
    assert row["mode"] == "subset" and row["selection"] == "--sample 12 --seed 3"
    assert (row["images"], row["not_in_archive"], row["present"], row["to_fetch"]) == (
        12, 0, 0, 12
    )
    assert row["archive_images"] == len(dataset.train_names)
    assert not row["directory_cached"] and row["directory_bytes"] > 0
    assert row["to_transfer"] == row["directory_bytes"] + row["member_bytes"]
    # Nothing written: not the images, not the directory cache, no lock, no selection record.
    assert _snapshot(data) == before
    assert not (data / ".isic2020" / "remote").exists()
    # The dry run read the directory (tail and CD) and no member.
    dry_bytes = mirror.bytes_sent(zip_name)
    assert dry_bytes == row["directory_bytes"]
    expected = select_images(_metadata(data, "train"), sample=12, seed=3)
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        sizes = {i.filename.rsplit("/", 1)[-1][:-4]: i.file_size for i in zf.infolist()}
    # Unpacked images are counted in whole blocks of the data directory's filesystem.
    assert row["disk_needed"] == _in_blocks((sizes[n] for n in expected), data)

    real = _fetch(data, mirror, dataset, "--split", "train", "--sample", "12", "--seed", "3")
    assert real.returncode == 0, real.stderr
    served = mirror.bytes_sent(zip_name) - dry_bytes
    assert abs(served - row["to_transfer"]) <= 0.01 * row["to_transfer"], (served, row)

    # After that partial fetch: a larger sample finds the ones already there, and the cached
    # directory costs nothing (the HEAD only).
    bigger = select_images(_metadata(data, "train"), sample=30, seed=3)
    have = len(set(bigger) & set(expected))
    assert have, "samples of one seed overlap"
    before = _snapshot(data)
    sent = mirror.bytes_sent(zip_name)
    again = _fetch(data, mirror, dataset, "--split", "train", "--sample", "30", "--seed", "3",
                   "--dry-run")
    assert again.returncode == 0, again.stderr
    row = _zip_row(again.json, zip_name)
    assert (row["images"], row["present"], row["to_fetch"]) == (30, have, 30 - have)
    assert row["directory_cached"] and row["directory_bytes"] == 0
    assert mirror.bytes_sent(zip_name) == sent
    assert _snapshot(data) == before
    real = _fetch(data, mirror, dataset, "--split", "train", "--sample", "30", "--seed", "3")
    assert real.returncode == 0, real.stderr
    assert mirror.bytes_sent(zip_name) - sent == row["to_transfer"]
    (out,) = [f for f in real.json["files"] if f["name"] == zip_name]
    assert out["extraction"]["skipped"] == have

    human = run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--split",
                    "train", "--sample", "30", "--seed", "3", "--dry-run",
                    env=cli_env(dataset.manifest_path))
    assert human.returncode == 0, human.stderr
    assert "nothing was written" in human.stdout
    assert "30 images chosen, 0 not in the archive; 30 already present, 0 to fetch" in human.stdout



def _in_blocks(sizes, where) -> int:
    """What files of ``sizes`` take on the filesystem of ``where``: each a whole number of
    its blocks (``st_blksize``)."""
    block = os.stat(where).st_blksize
    return sum(-(-n // block) * block for n in sizes)


def test_direct_dry_run_on_an_empty_data_dir(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    zip_name = "ISIC_2020_Test_JPEG.zip"
    r = _fetch(data, mirror, dataset, "--split", "test", "--direct", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not data.exists()
    row = _zip_row(r.json, zip_name)
    n = len(dataset.test_names)
    assert row["mode"] == "direct" and row["selection"] == "all images"
    assert (row["images"], row["not_in_archive"], row["present"], row["to_fetch"]) == (n, 0, 0, n)
    with zipfile.ZipFile(dataset.path(zip_name)) as zf:
        images = [i for i in zf.infolist() if i.filename.endswith(".jpg")]
        assert row["disk_needed"] == _in_blocks((i.file_size for i in images), tmp_path)
    # The CSV rows are the plain dry run's: a HEAD each, the whole file to transfer.
    csv_rows = [x for x in r.json["dry_run"] if x["name"] != zip_name]
    assert csv_rows and all("selection" not in x for x in csv_rows)
    assert all(x["to_transfer"] == x["size"] for x in csv_rows)
    dry_bytes = mirror.bytes_sent(zip_name)
    real = _fetch(data, mirror, dataset, "--split", "test", "--direct")
    assert real.returncode == 0, real.stderr
    assert mirror.bytes_sent(zip_name) - dry_bytes == row["to_transfer"]
    assert len(list((data / "jpeg" / "test").iterdir())) == n


def test_subset_dry_run_without_the_csvs_says_they_come_first(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, "--split", "train",
                "--sample", "5", "--dry-run", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    assert not data.exists()
    assert "needs the metadata CSVs: they are downloaded first, the subset cannot be sized" \
        in r.stdout
    assert "--format none" in r.stdout
    j = _fetch(data, mirror, dataset, "--split", "train", "--sample", "5", "--dry-run")
    assert j.returncode == 0, j.stderr
    row = _zip_row(j.json, "ISIC_2020_Training_JPEG.zip")
    assert row["images"] is None and row["to_fetch"] is None
    assert row["state"].startswith("needs the metadata CSVs")
    # The CSVs themselves are still planned, to be downloaded whole.
    assert any(x["name"].endswith(".csv") and x["to_transfer"] > 0 for x in j.json["dry_run"])
    assert not data.exists()


def test_subset_still_refuses_no_extract_and_a_bad_where_in_a_dry_run(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    r = _fetch(data, mirror, dataset, "--split", "train", "--sample", "3", "--no-extract")
    assert r.returncode == 2 and "--no-extract" in r.error_lines[0]
    assert _fetch(data, mirror, dataset, "--split", "train", "--format", "none").returncode == 0
    before = _snapshot(data)
    bad = _fetch(data, mirror, dataset, "--split", "train", "--where", "target ==", "--dry-run")
    assert bad.returncode == 2 and "--where" in bad.error_lines[0]
    assert _snapshot(data) == before
