"""The README's quick start, run as written, in order, against a local stand-in of the bucket.

Why: the quick start is the first thing a newcomer runs; when the README and the tool drift
apart (a ``verify`` that checks a split never fetched, a data directory the next command does
not look in), this is where they find out. The commands are taken from the README's block
marked ``<!-- quickstart ... -->`` and run through ``bash`` unchanged; only the source and the
manifest are substituted, the way a user would: ``ISIC2020_MIRROR`` and ``ISIC2020_MANIFEST``
point at a FaultServer serving the synthetic dataset. ``pip install`` is not run (the package
under test is what it would install): ``isic2020`` on ``PATH`` runs this interpreter's
``python -m isic2020``, so the lines run this checkout's code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

import isic2020
from isic2020.synthetic import build_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- quickstart\b[^>]*-->\s*```(?:sh|bash|console)?\n(.*?)```", re.S)


def quickstart_commands(text: str) -> list[str]:
    """The shell lines of the marked block: comments and blank lines dropped, ``\\``
    continuations joined."""
    m = BLOCK.search(text)
    assert m, "README.md has no ```sh block after <!-- quickstart --> (the test finds it so)"
    lines: list[str] = []
    pending = ""
    for raw in m.group(1).splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("syn"), n_train=60, n_test=10, image_size=32)


def _shim(bin_dir: Path) -> None:
    """``isic2020`` on PATH: this interpreter's ``python -m isic2020`` (what pip installs)."""
    bin_dir.mkdir()
    exe = bin_dir / "isic2020"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m isic2020 "$@"\n')
    exe.chmod(0o755)


def test_the_readme_quickstart_runs_as_written_and_the_result_verifies(dataset, tmp_path):
    commands = quickstart_commands(README.read_text(encoding="utf-8"))
    assert commands and commands[0].startswith("pip install"), commands
    work = tmp_path / "work"
    work.mkdir()
    _shim(tmp_path / "bin")
    with FaultServer(dataset.root, prefix="/challenges/2020/") as mirror:
        env = cli_env(dataset.manifest_path, ISIC2020_MIRROR=mirror.url,
                      HOME=str(tmp_path / "home"))
        env.pop("XDG_DATA_HOME", None)
        # The code under test, whatever the working directory (PYTHONPATH=src is relative).
        here = str(Path(isic2020.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(
            [here, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        ran = []
        for line in commands[1:]:  # pip install: the package under test is "installed"
            proc = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{proc.stderr}"
            ran.append(line)
        assert any(c.startswith("isic2020 fetch") for c in ran)
        assert any(c.startswith("isic2020 verify") for c in ran)
    data = work / "isic2020-data"
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == sorted(
        dataset.train_names)
    # The final state verifies, as the quick start fetched it; nothing went to the default.
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                "--json", env=cli_env(dataset.manifest_path))
    assert v.returncode == 0 and v.json["ok"], v.stdout
    assert not (tmp_path / "home" / ".local" / "share" / "isic2020").exists()


def test_the_quickstart_parser_reads_continuations_and_skips_comments():
    text = ("x\n<!-- quickstart -->\n```sh\n# a comment\npip install .\n"
            "isic2020 fetch \\\n  --split train\n\nisic2020 verify  # trailing\n```\n")
    assert quickstart_commands(text) == [
        "pip install .", "isic2020 fetch --split train", "isic2020 verify  # trailing"]
