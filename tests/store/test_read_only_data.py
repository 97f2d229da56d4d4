"""A complete dataset shared read-only (a lab's NFS export, a colleague's folder): ``verify`` and
a ``fetch`` with nothing to do work without the exclusive lock, a fetch that has work fails in
one line, and a folder this user may not read says "permission denied", never an internal
error or "nothing to verify".

Permissions are the kernel's: the CLI runs without root's power to bypass mode bits
(:func:`support.fetched.run_unprivileged`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.cli import cli_env
from support.fetched import fetch_into, run_unprivileged
from support.fixtures import served_dataset

dataset, mirror = served_dataset("syn", n_train=24, n_test=6)


def _chmod_tree(root: Path, *, write: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode & 0o7777
        p.chmod(mode | 0o200 if write else mode & ~0o222)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _one_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.error_lines) == 1 and r.stderr.splitlines()[-1] == r.error_lines[0], r.stderr
    return r.error_lines[0]


def test_verify_and_a_no_op_fetch_work_on_a_read_only_dataset(dataset, mirror, tmp_path):
    data = tmp_path / "shared"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    env = cli_env(dataset.manifest_path)
    _chmod_tree(data, write=False)
    try:
        before = _snapshot(data)
        r = run_unprivileged("verify", "--split", "train", "--data-dir", str(data), env=env)
        assert r.returncode == 0, r.stderr
        r = run_unprivileged("fetch", "--split", "train", "--data-dir", str(data), "--mirror",
                             mirror.url, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert r.json["ok"] is True
        assert _snapshot(data) == before  # nothing written, nothing renamed
        # work to do (the test split): one line that says why, nothing partial left
        r = run_unprivileged("fetch", "--split", "test", "--data-dir", str(data), "--mirror",
                             mirror.url, env=env)
        assert r.returncode == 3
        line = _one_error(r)
        assert "cannot write" in line and "ermission denied" in line, line
        assert _snapshot(data) == before
    finally:
        _chmod_tree(data, write=True)


@pytest.mark.parametrize("command", [("verify", "--split", "train"), ("stats",),
                                     ("checksums",), ("status",)])
def test_an_unreadable_folder_says_permission_denied(dataset, mirror, tmp_path, command):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    folder = data / "jpeg" / "train"
    folder.chmod(0)
    try:
        r = run_unprivileged(*command, "--data-dir", str(data),
                             env=cli_env(dataset.manifest_path))
        assert r.returncode == 3, r.stderr
        line = _one_error(r)
        assert "permission denied" in line and str(folder) in line, line
        assert "internal error" not in line and "nothing to verify" not in line
    finally:
        folder.chmod(0o755)
    assert os.access(folder, os.R_OK)


def test_an_unreadable_data_directory_says_permission_denied(dataset, mirror, tmp_path):
    """DATA itself unreadable: the same "permission denied" line (exit 3) as a folder inside,
    not a usage error about the option."""
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    data.chmod(0)
    try:
        for command in (("verify", "--split", "train"), ("status",)):
            r = run_unprivileged(*command, "--data-dir", str(data),
                                 env=cli_env(dataset.manifest_path))
            assert r.returncode == 3, r.stderr
            line = _one_error(r)
            assert "permission denied" in line and str(data) in line, line
    finally:
        data.chmod(0o755)
