"""Real filesystems with real limits for the tests: a full disk, a read-only data directory.

As root (CI) a tmpfs is mounted for the test, so the errors are the kernel's own (ENOSPC,
EROFS), not simulations. Elsewhere the tests fall back to what a user can do (chmod) or skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[Path]:
    """``path`` becomes a tmpfs of ``size_bytes``: writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount(path, f"size={size_bytes},mode=0755"):
        if os.environ.get("CI") == "true":  # CI runs as root: a skip there would hide a row
            pytest.fail(f"could not mount a {size_bytes}-byte tmpfs at {path} under CI=true")
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` exists and nothing can be created in it (EROFS as root, EACCES otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if not _mount(path, "ro,size=1m"):
        pytest.skip("mounting a read-only tmpfs failed")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_size(path: Path, size_bytes: int) -> None:
    """Grow a :func:`small_filesystem` (the user freed space)."""
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)
