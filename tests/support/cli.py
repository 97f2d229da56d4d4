"""Run the real ``isic2020`` command in a subprocess, as users and CI scripts do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("isic2020: error")]


def cli_env(manifest: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a CLI run: no inherited isic2020 settings, fast retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISIC2020_")}
    if manifest is not None:
        env["ISIC2020_MANIFEST"] = str(manifest)
    env.setdefault("ISIC2020_RETRY_WINDOW", "5")
    env.setdefault("ISIC2020_READ_TIMEOUT", "5")
    env.update(extra)
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "isic2020", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, **kw: Any
) -> CliResult:
    proc = subprocess.run(
        cli_cmd(*args),
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
