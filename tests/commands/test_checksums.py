"""``isic2020 checksums`` and ``isic2020 verify --against``: a lab pins every image once, every
other machine checks its copy. On a really fetched synthetic dataset; the list is checked by
the real coreutils ``sha256sum -c`` too, since that is what people without isic2020 run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.fetched import PREFIX, fetch_into, run_unprivileged
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

LINE = re.compile(r"^[0-9a-f]{64}  jpeg/(train|test)/ISIC_[0-9]{7}\.jpg$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("syn"), n_train=24, n_test=12)


@pytest.fixture(scope="module")
def fetched(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both splits, fetched once; tests that change files work on a copy."""
    data = tmp_path_factory.mktemp("fetched") / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        fetch_into(data, srv.url, dataset.manifest_path, "--split", "all")
    return data


def _cli(dataset, *args: str):
    return run_cli(*args, env=cli_env(dataset.manifest_path))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_checksums_to_stdout_lists_every_image_sorted_with_its_sha256(dataset, fetched):
    r = _cli(dataset, "checksums", "--data-dir", str(fetched))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    images = sorted(str(p.relative_to(fetched)) for p in fetched.glob("jpeg/*/*.jpg"))
    assert len(lines) == len(dataset.train_names) + len(dataset.test_names) == len(images)
    assert all(LINE.match(ln) for ln in lines), lines[:3]
    assert [ln.split("  ", 1)[1] for ln in lines] == images  # relative to DATA, sorted
    for ln in lines:
        digest, rel = ln.split("  ", 1)
        assert digest == hashlib.sha256((fetched / rel).read_bytes()).hexdigest()
    assert "isic2020: error" not in r.stderr

    only = _cli(dataset, "checksums", "--data-dir", str(fetched), "--split", "test",
                "--format", "jpeg")
    assert only.returncode == 0, only.stderr
    assert only.stdout.splitlines() == [ln for ln in lines if "/test/" in ln]


def test_checksums_file_is_accepted_by_coreutils_sha256sum(dataset, fetched, tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("an older list\n")
    r = _cli(dataset, "checksums", "--data-dir", str(fetched), "--out", str(sums), "--json")
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert (doc["command"], doc["ok"], doc["exit_code"]) == ("checksums", True, 0)
    assert doc["images"] == 36 and doc["out"] == str(sums)
    assert doc["bytes_hashed"] == sum(p.stat().st_size for p in fetched.glob("jpeg/*/*.jpg"))
    assert sums.read_text() == _cli(dataset, "checksums", "--data-dir", str(fetched)).stdout
    assert sums.stat().st_mode & 0o777 == 0o644  # under umask 022, like any file users write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS"]  # no temporary left
    check = subprocess.run(["sha256sum", "-c", "--strict", str(sums)], cwd=fetched,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK\n") == 36


def test_checksums_out_that_cannot_be_written_is_one_line_and_leaves_nothing(
    dataset, fetched, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = _cli(dataset, "checksums", "--data-dir", str(fetched), "--out", str(blocker / "SUMS"))
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.error_lines, r.stderr
    assert "cannot write" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_checksums_of_a_data_directory_without_images_is_a_clear_error(dataset, tmp_path):
    r = _cli(dataset, "checksums", "--data-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "no images to hash" in r.stderr
    assert "isic2020 fetch" in r.stderr


def test_an_unreadable_image_is_permission_denied_not_a_checksum(dataset, fetched, tmp_path):
    copy = _copy(fetched, tmp_path / "copy")
    os.chmod(tmp_path, 0o755)
    victim = sorted((copy / "jpeg" / "train").iterdir())[2]
    victim.chmod(0)
    r = run_unprivileged("checksums", "--data-dir", str(copy), "--out", str(tmp_path / "S"),
                         env=cli_env(dataset.manifest_path))
    assert r.returncode == 3, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert str(victim) in r.stderr and "permission denied" in r.stderr
    assert not (tmp_path / "S").exists()  # no half list


def test_verify_against_accepts_an_exact_copy(dataset, fetched, tmp_path):
    sums = tmp_path / "SHA256SUMS"
    assert _cli(dataset, "checksums", "--data-dir", str(fetched), "--out",
                str(sums)).returncode == 0
    copy = _copy(fetched, tmp_path / "copy")
    (copy / "jpeg" / "train" / "NOTES.txt").write_text("not an image: verify's business")
    r = _cli(dataset, "verify", "--against", str(sums), "--data-dir", str(copy), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = r.json
    assert (doc["command"], doc["ok"], doc["exit_code"]) == ("verify", True, 0)
    assert doc["listed"] == doc["matched"] == 36
    assert doc["missing"] == doc["differing"] == doc["unlisted"] == []
    human = _cli(dataset, "verify", "--against", str(sums), "--data-dir", str(copy))
    assert human.returncode == 0 and "OK, 36 of 36 listed files match" in human.stdout


def test_verify_against_names_missing_differing_and_unlisted_images(dataset, fetched, tmp_path):
    sums = tmp_path / "SHA256SUMS"
    assert _cli(dataset, "checksums", "--data-dir", str(fetched), "--out",
                str(sums)).returncode == 0
    copy = _copy(fetched, tmp_path / "copy")
    train = sorted((copy / "jpeg" / "train").iterdir())
    train[0].unlink()
    damaged = bytearray(train[1].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, one bit pattern off: only a hash sees it
    train[1].write_bytes(bytes(damaged))
    stray = copy / "jpeg" / "test" / "ISIC_9999999.jpg"
    stray.write_bytes(train[2].read_bytes())

    r = _cli(dataset, "verify", "--against", str(sums), "--data-dir", str(copy), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    doc = r.json
    assert doc["ok"] is False and doc["exit_code"] == 1
    rel = [str(p.relative_to(copy)) for p in train]
    assert doc["missing"] == [rel[0]]
    assert doc["differing"] == [rel[1]]
    assert doc["unlisted"] == ["jpeg/test/ISIC_9999999.jpg"]
    assert doc["matched"] == 34 and doc["failed"] == ["missing", "differing", "unlisted"]
    assert len(r.error_lines) == 1 and "missing, differing, unlisted" in r.error_lines[0]
    human = _cli(dataset, "verify", "--against", str(sums), "--data-dir", str(copy))
    assert human.returncode == 1
    assert rel[0] in human.stdout and rel[1] in human.stdout and "ISIC_9999999" in human.stdout


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("0" * 64 + "  ../../etc/passwd", "not a plain path relative"),
        ("0" * 64 + "  /etc/passwd", "not a plain path relative"),
        ("not a checksum line", "is not a sha256sum line"),
    ],
)
def test_verify_against_refuses_a_list_that_points_outside_or_is_not_one(
    dataset, fetched, tmp_path, line, what
):
    sums = tmp_path / "SUMS"
    sums.write_text(f"{'a' * 64}  jpeg/train/ISIC_0000000.jpg\n{line}\n")
    r = _cli(dataset, "verify", "--against", str(sums), "--data-dir", str(fetched))
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.error_lines, r.stderr
    assert what in r.stderr and f"{sums} line 2" in r.stderr
