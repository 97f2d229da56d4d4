"""The peak RSS of one command run, its own: measured by a small Python parent in between.

Linux carries a process's peak RSS across fork and exec: a child exec'ed straight from pytest
reports (``wait4``, ``RUSAGE_CHILDREN``) at least the memory pytest had when it forked, and
pytest holds hundreds of MB after a few hundred tests. Measured that way, a memory bound passes
when its file runs alone and fails late in the whole suite. The command is therefore forked
from a fresh interpreter of a few MB, whose ``RUSAGE_CHILDREN`` is the command's own peak; that
parent also enforces the timeout, so a command that hangs is killed, never orphaned.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PARENT = """\
import json, resource, subprocess, sys
report, timeout, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
try:
    code, timed_out = subprocess.run(argv, timeout=timeout).returncode, False
except subprocess.TimeoutExpired:
    code, timed_out = -9, True
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(report, "w") as fh:
    json.dump({"returncode": code, "timed_out": timed_out, "peak_kb": peak_kb}, fh)
"""


@dataclass(frozen=True)
class MeasuredRun:
    """One finished run: exit code (negative: killed by that signal), output, own peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes
    timed_out: bool


def run_with_peak_rss(
    argv: Sequence[str], *, env: Mapping[str, str], timeout: float
) -> MeasuredRun:
    """Run ``argv`` (stdin closed) and return its result and its own peak RSS in bytes."""
    with tempfile.TemporaryDirectory(prefix="isic2020-rss-") as tmp:
        report = Path(tmp, "report.json")
        with open(Path(tmp, "out"), "w+b") as out, open(Path(tmp, "err"), "w+b") as err:
            subprocess.run(
                [sys.executable, "-c", _PARENT, str(report), str(timeout), *argv],
                env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                timeout=timeout + 60, check=False,
            )
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        doc = json.loads(report.read_text())
    return MeasuredRun(doc["returncode"], stdout, stderr, doc["peak_kb"] * 1024,
                       doc["timed_out"])
