"""A data directory filled by a real ``isic2020 fetch`` from a real local server, and a way to
run the CLI without root's power to read anything (for "permission denied" tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support.cli import CliResult, cli_cmd, cli_env, run_cli

PREFIX = "/challenges/2020/"


def fetch_into(data: Path, url: str, manifest: Path, *args: str, **env: str) -> CliResult:
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", url, "--json", *args,
                env=cli_env(manifest, **env))
    assert r.returncode == 0, r.stderr
    return r


def run_unprivileged(*args: str, env: dict[str, str], timeout: float = 120) -> CliResult:
    """The CLI as a user for whom mode bits count: as root, without the capabilities that let
    root read any file (``setpriv`` drops them from the bounding set before the exec)."""
    cmd = cli_cmd(*args)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test permissions as root"
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    kw: dict[str, Any] = {"capture_output": True, "text": True, "timeout": timeout}
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, check=False, **kw)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
