"""Every file isic2020 writes whole is written one way (``isic2020.store.fsutil.atomic_file``).

What a user depends on: the files follow the umask like any other program's (a lab sharing
``folds.csv`` or an export under ``umask 002`` gets group-readable files, not 0600), none is
ever world-writable, and no temporary is left behind. Checked through the CLI, as users run it.
Also here: a filesystem that does not report its size (ramfs) is no reason to refuse a fetch.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.metadata import make_synthetic
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
UMASKS = pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("atomic"), n_train=40, n_test=4)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _expected(umask: int) -> int:
    return 0o666 & ~umask & ~0o002


def _no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert left == [], left


def _run(*args: str, umask: int, env: dict[str, str] | None = None):
    return run_cli(*args, env=env if env is not None else cli_env(),
                   preexec_fn=lambda: os.umask(umask))


@UMASKS
def test_state_and_notices_written_by_fetch_follow_the_umask(dataset, tmp_path, umask):
    """The lock, records.json, the selection, the cached central directory, CITATION.txt
    and LICENSE-DATA.txt (a subset fetch writes them all). The lock was 0644 whatever the
    umask."""
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = _run("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split", "train",
                 "--sample", "5", umask=umask, env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    state = data / ".isic2020"
    written = [
        state / "lock",
        state / "records.json",
        *sorted((state / "selections").iterdir()),
        *sorted((state / "remote").iterdir()),
        data / "CITATION.txt",
        data / "LICENSE-DATA.txt",
    ]
    assert len(written) == 6
    for p in written:
        assert _mode(p) == _expected(umask), p
    _no_temporaries(data)


@UMASKS
def test_folds_csv_and_folds_out_follow_the_umask(tmp_path, umask):
    data = tmp_path / "d"
    make_synthetic(data, patients=30)
    r = _run("folds", "--data-dir", str(data), "--k", "3", umask=umask)
    assert r.returncode == 0, r.stderr
    assert _mode(data / "folds.csv") == _expected(umask)
    out = tmp_path / "shared" / "my-folds.csv"
    out.parent.mkdir()
    r = _run("folds", "--data-dir", str(data), "--k", "3", "--out", str(out), umask=umask)
    assert r.returncode == 0, r.stderr
    assert _mode(out) == _expected(umask)
    assert out.read_bytes() == (data / "folds.csv").read_bytes()
    _no_temporaries(tmp_path)


@UMASKS
def test_export_csvs_follow_the_umask(tmp_path, umask):
    """Kaggle's train.csv, test.csv and sample_submission.csv (and the export's marker)."""
    data = tmp_path / "d"
    make_synthetic(data, patients=30, images=("jpeg",))
    dest = tmp_path / "kaggle"
    r = _run("export", "--layout", "kaggle", "--data-dir", str(data), str(dest), umask=umask)
    assert r.returncode == 0, r.stderr
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        assert _mode(dest / name) == _expected(umask), name
    marker = [p for p in dest.iterdir() if p.name.startswith(".") and p.is_file()]
    assert marker and all(_mode(p) == _expected(umask) for p in marker)
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------
# A filesystem that does not report its size


@pytest.fixture
def ramfs(tmp_path: Path):
    """A real ramfs: ``statvfs`` says 0 bytes free of 0 total. CI runs as root, so a mount
    failure is a failure here, not a skip."""
    mnt = tmp_path / "ram"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a ramfs (the test needs root): {r.stderr.strip()}")
    try:
        st = os.statvfs(mnt)
        assert st.f_blocks == 0 and st.f_bfree == 0
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_a_fetch_onto_a_filesystem_without_a_size_works(dataset, ramfs):
    data = ramfs / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        env = cli_env(dataset.manifest_path)
        dry = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split",
                      "train", "--dry-run", env=env)
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split", "train",
                    "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "free unknown" in dry.stdout + dry.stderr
    assert r.returncode == 0, r.stderr
    assert r.json["verification"]["ok"] is True
    assert len(list((data / "jpeg" / "train").iterdir())) == 40
