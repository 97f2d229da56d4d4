"""``import isic2020`` loads nothing but the package, and each command only what it needs.

Why a user cares: every run of the CLI pays its imports first. ``requests`` with urllib3, ssl
and http.client is ~0.2 s here, the export's object-store client more; ``isic2020 verify`` and
``--version`` need neither, and a CI step that verifies a cache on every job pays them each
time. Each case runs in a fresh interpreter (``python -c``) and prints the modules it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.cli import cli_env

_PROBE = """\
import json, runpy, sys
sys.argv = ["isic2020", *sys.argv[1:]]
code = 0
if sys.argv[1:] == ["--import-only"]:
    import isic2020
else:
    try:
        runpy.run_module("isic2020", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""

HEAVY = ("requests", "urllib3", "pandas", "pydicom", "PIL", "boto3")


def _loaded(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          env=cli_env(), timeout=120)
    return proc.returncode, set(json.loads(proc.stderr.strip().splitlines()[-1]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def test_import_isic2020_loads_no_command(tmp_path: Path) -> None:
    _, mods = _loaded(tmp_path, "--import-only")
    assert _heavy(mods) == []
    assert sorted(m for m in mods if m.startswith("isic2020.")) == ["isic2020.version"]


def test_version_and_verify_never_import_the_network_stack(tmp_path: Path) -> None:
    code, mods = _loaded(tmp_path, "--version")
    assert code == 0 and _heavy(mods) == []
    data = tmp_path / "empty"
    data.mkdir()
    code, mods = _loaded(tmp_path, "verify", "--data-dir", str(data))
    assert code == 2  # nothing there to verify: a usage answer, after the verify's imports
    assert "isic2020.checks.verify" in mods
    assert _heavy(mods) == []
    # process pools (multiprocessing, ~20 ms) only for the DICOM checks that use them
    assert not any(m.startswith(("multiprocessing", "concurrent.futures.process")) for m in mods)


def test_the_api_names_are_the_commands_functions() -> None:
    import isic2020
    from isic2020.checks.verify import verify
    from isic2020.commands.export import export
    from isic2020.commands.fetch import fetch

    assert (isic2020.fetch, isic2020.verify, isic2020.export) == (fetch, verify, export)
    from isic2020 import extract, list_files

    assert callable(extract) and callable(list_files)
