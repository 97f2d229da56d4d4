"""The command's process-wide memory settings (``cli.app.flat_heap``) reach pyarrow too.

pandas 3 imports pyarrow whenever it is installed and keeps its strings in Arrow arrays;
pyarrow's default pool (mimalloc) keeps what it freed, which put ``isic2020 folds`` of the
33k-row ground truth at 161 MB of peak RSS, over the 150 MB every command keeps to. The
command hands pyarrow the system allocator, unless the user chose a pool or turned the
allocator settings off."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "from isic2020.cli.app import flat_heap; flat_heap(); import pyarrow; "
    "print(pyarrow.default_memory_pool().backend_name)"
)


def _pool(probe: str = PROBE, **env: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in ("ARROW_DEFAULT_MEMORY_POOL", "ISIC2020_MALLOC")}
    r = subprocess.run([sys.executable, "-c", probe], env={**base, **env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_command_gives_pyarrow_the_system_allocator() -> None:
    assert _pool() == "system"


def test_a_pool_the_user_chose_is_kept() -> None:
    assert _pool(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"


def test_with_the_settings_turned_off_pyarrow_keeps_its_own_default() -> None:
    own = _pool(PROBE.replace("flat_heap(); ", ""))
    assert own != "system"  # else this test shows nothing here
    assert _pool(ISIC2020_MALLOC="0") == own
