"""isic2020 command lines and checks of their reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import ROOT, TRAIN_ZIP
from .harness import Sample

_source = [ROOT / "src"]  # --src: A/B a patched copy of the package


def isic_source() -> Path:
    """The folder holding the isic2020 package that every isic2020 run imports."""
    return _source[0]


def set_isic_source(folder: Path) -> None:
    """Run isic2020 from ``folder`` (``--src``) instead of this checkout's src/."""
    _source[0] = folder


_pycache: list[Path | None] = [None]


def use_bytecode_cache(folder: Path) -> None:
    """Run isic2020 from bytecode compiled now (untimed) into ``folder``, as an installed
    package runs from its ``.pyc``: with ``PYTHONDONTWRITEBYTECODE`` in the environment every
    timed run would otherwise compile the whole package first (~0.3 s of CPU per run, which
    is no cost a user pays). The source tree is left untouched (``PYTHONPYCACHEPREFIX``)."""
    _pycache[0] = folder
    env = bytecode_env(dict(os.environ))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(isic_source() / "isic2020")],
                   env=env, check=False, timeout=600, stdout=subprocess.DEVNULL)


def bytecode_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` made to read (and write) bytecode in the cache of :func:`use_bytecode_cache`."""
    if _pycache[0] is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_pycache[0])
    return env


def isic_env(manifest: Path, chunk: int | None = None) -> dict[str, str]:
    env = bytecode_env(dict(os.environ))
    env["ISIC2020_MANIFEST"] = str(manifest)
    env.pop("ISIC2020_MIRROR", None)
    env.pop("ISIC2020_DATA_DIR", None)
    if chunk:
        env["ISIC2020_CHUNK_SIZE"] = str(chunk)
    pp = str(isic_source())
    env["PYTHONPATH"] = pp + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def isic(*args: str) -> list[str]:
    return [sys.executable, "-m", "isic2020", *args]


def fetch_report(s: Sample) -> dict[str, Any]:
    doc = json.loads(s.stdout)
    if not doc.get("ok", False):
        raise RuntimeError(f"fetch reported not ok: {s.stdout[-300:]}")
    return doc


def archive_entry(doc: dict[str, Any], name: str = TRAIN_ZIP) -> dict[str, Any]:
    for f in doc.get("files", []):
        if f.get("name") == name:
            return f
    raise RuntimeError(f"{name} not in the fetch report")


def check_file(path: Path, size: int) -> None:
    got = path.stat().st_size
    if got != size:
        raise RuntimeError(f"{path.name}: {got} bytes, expected {size}")
