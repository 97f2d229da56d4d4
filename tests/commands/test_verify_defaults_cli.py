"""`verify` without `--split`/`--format` checks what was fetched (issue 13, defect 1).

A newcomer runs `fetch --split train` and then a plain `verify`: it must check train (not fail
on the test CSV never asked for), keep a deleted file expected (the records remember it), and
when something is wrong name the one fetch that puts back exactly that: running the command
its error line names must make `verify` pass again. Explicit options still win.
"""

from __future__ import annotations

import re
import shlex

from support.cli import cli_env, run_cli
from support.fixtures import served_dataset

dataset, mirror = served_dataset("syn", n_train=80, n_test=12, image_size=32)


def _cli(dataset, mirror, *args):
    return run_cli(*args, env=cli_env(dataset.manifest_path, ISIC2020_MIRROR=mirror.url))


def _advice(r) -> list[str]:
    """The command the one error line names (between backquotes), as argv."""
    assert len(r.error_lines) == 1, r.stderr
    m = re.search(r"`(isic2020 fetch [^`]*)`", r.error_lines[0])
    assert m, r.error_lines[0]
    return shlex.split(m.group(1))


def test_plain_verify_after_fetching_train_checks_train_only(dataset, mirror, tmp_path):
    data = str(tmp_path / "d")
    assert _cli(dataset, mirror, "fetch", "--split", "train", "--data-dir", data,
                "-q").returncode == 0
    v = _cli(dataset, mirror, "verify", "--data-dir", data, "--json")
    assert v.returncode == 0, v.stdout + v.stderr
    assert (v.json["split"], v.json["format"]) == ("train", "jpeg")
    assert not any("Test" in c["name"] for c in v.json["checks"])
    # Explicit options win: --split all checks the test split too, and fails on it.
    every = _cli(dataset, mirror, "verify", "--data-dir", data, "--split", "all", "--json")
    assert every.returncode == 1
    assert "metadata/ISIC_2020_Test_Metadata.csv" in every.json["failed"]


def test_the_advice_of_a_failed_verify_fetches_exactly_what_was_checked(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    assert _cli(dataset, mirror, "fetch", "--split", "train", "--data-dir", str(data),
                "-q").returncode == 0
    gone = sorted((data / "jpeg" / "train").iterdir())[:3]
    for p in gone:
        p.unlink()
    (data / "metadata" / "ISIC_2020_Training_Duplicates.csv").unlink()
    v = _cli(dataset, mirror, "verify", "--data-dir", str(data))
    assert v.returncode == 1
    # The records keep the deleted CSV expected; nothing of the test split is asked for.
    assert "metadata/ISIC_2020_Training_Duplicates.csv" in v.error_lines[0]
    argv = _advice(v)
    assert argv[argv.index("--split") + 1] == "train", argv
    assert argv[argv.index("--format") + 1] == "jpeg", argv
    assert argv[argv.index("--data-dir") + 1] == str(data), argv
    fixed = _cli(dataset, mirror, *argv[1:], "-q")
    assert fixed.returncode == 0, fixed.stderr
    assert all(p.exists() for p in gone)
    assert not (data / "metadata" / "ISIC_2020_Test_Metadata.csv").exists()
    assert _cli(dataset, mirror, "verify", "--data-dir", str(data)).returncode == 0


def test_the_advice_for_a_subset_repeats_the_subset(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    assert _cli(dataset, mirror, "fetch", "--split", "train", "--sample", "6", "--seed", "2",
                "--data-dir", str(data), "-q").returncode == 0
    victim = sorted((data / "jpeg" / "train").iterdir())[0]
    victim.unlink()
    v = _cli(dataset, mirror, "verify", "--data-dir", str(data))
    assert v.returncode == 1
    argv = _advice(v)
    assert argv[argv.index("--sample") + 1] == "6" and argv[argv.index("--seed") + 1] == "2"
    assert _cli(dataset, mirror, *argv[1:], "-q").returncode == 0
    assert victim.exists()
    assert len(list((data / "jpeg" / "train").iterdir())) == 6


def test_metadata_only_and_two_splits_are_checked_as_fetched(dataset, mirror, tmp_path):
    data = str(tmp_path / "d")
    assert _cli(dataset, mirror, "fetch", "--split", "train", "--data-dir", data,
                "-q").returncode == 0
    assert _cli(dataset, mirror, "fetch", "--split", "test", "--format", "none",
                "--data-dir", data, "-q").returncode == 0
    v = _cli(dataset, mirror, "verify", "--data-dir", data, "--json")
    assert v.returncode == 0, v.stdout
    names = {c["name"] for c in v.json["checks"]}
    assert "metadata/ISIC_2020_Test_Metadata.csv" in names
    assert "images/jpeg/train/names" in names and "images/jpeg/test/names" not in names
