"""Real filesystems with real limits for the tests: a full disk, a read-only data directory.

As root (CI) a tmpfs is mounted for the test, so the errors are the kernel's own (ENOSPC,
EROFS), not simulations. Elsewhere the tests fall back to what a user can do (chmod) or skip
(which tests/conftest.py turns into a failure in CI).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(path: Path, options: str) -> str | None:
    """Mount a tmpfs on ``path``; None when mounted, else why not (skip reason)."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()}"


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[Path]:
    """``path`` becomes a tmpfs of ``size_bytes``: writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    why = _mount(path, f"size={size_bytes},mode=0755")
    if why is not None:
        pytest.skip(why)
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
    why = _mount(path, "ro,size=1m")
    if why is not None:
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_size(path: Path, size_bytes: int) -> None:
    """Grow a :func:`small_filesystem` (the user freed space)."""
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)
