"""The Markdown report: machine, table, verdicts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .common import PEERS
from .harness import load_average
from .isic import isic_source
from .results import Bench, Row, nginx_binary, verdict


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
            return "missing"
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "missing"
        text = (r.stdout + r.stderr).strip().splitlines()
        return next((t.strip() for t in text if t.strip()), "?")[:80]

    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "aria2c": version(["aria2c", "--version"]),
        "curl": version(["curl", "--version"]),
        "unzip": version(["unzip", "-v"]),
        "7z": version(["7z", "i"]) if shutil.which("7z") else "missing",
        "nginx": version([nginx_binary() or "nginx", "-v"]),
    }



def _f(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def table(rows: list[Row]) -> str:
    head = ("| workload | tool | median wall s | ratio vs peer | CPU s/GB | peak RSS MB "
            "| target met? | notes |")
    lines = [head, "|" + "---|" * 8]
    last = None
    for r in rows:
        w = r.workload if r.workload != last else ""
        last = r.workload
        lines.append(
            f"| {w} | {r.tool} | {_f(r.wall)} | {r.ratio} | {_f(r.cpu_per_gb, 1)} | "
            f"{_f(r.rss, 0)} | {r.target} | {r.notes} |"
        )
    return "\n".join(lines)


def report(b: Bench, argv: list[str], seconds: float) -> str:
    m = machine()
    isic_rows = [r for r in b.rows if r.tool.startswith("isic2020") and r.rss is not None]
    peak = max((r.rss for r in isic_rows if r.rss is not None), default=0.0)
    rss_ok = peak < 150
    p = b.p
    out = [
        "# isic2020 benchmark results",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}; "
        f"{m['date']}.",
        f"Peers: {m['aria2c']}; {m['curl']}; {m['unzip']}; 7z: {m['7z']}; {m['nginx']}.",
        f"isic2020 from: {isic_source()}.",
        f"Reproduce: `{' '.join(['python', 'benchmarks/run.py', *argv])}` "
        f"(this run: {'--quick, ' if p.quick else ''}{p.reps} repetition(s), medians; "
        f"{seconds / 60:.1f} min in all; load average before/after: {b.load_before} / "
        f"{load_average()}).",
        "Disk: " + (b.scratch_note or "outputs on the work folder's own filesystem") + ".",
        "Memory: " + (b.memory_note or "not looked at") + ".",
        *([f"Host steal (CPU the hypervisor gave other guests) during the timed runs: "
           f"{b.steal_s:.1f} CPU-s over {b.timed_s:.0f} s of wall on {m['nproc']} CPUs "
           f"({100 * b.steal_s / (b.timed_s * int(m['nproc'])):.1f} %); each run's is in the "
           "log. Runs that compare should have had about the same."]
          if b.timed_s > 0 and str(m['nproc']).isdigit() else []),
        "",
        table(b.rows),
        "",
        f"6 peak RSS: the largest of every isic2020 row above is {peak:.0f} MB: "
        f"{verdict(rss_ok, '< 150 MB in every row')}.",
    ]
    if b.missing:
        out.append("")
        out.append("Missing peers (skipped): " + ", ".join(
            f"{t} (apt-get install {PEERS[t]})" for t in b.missing) + ".")
    if b.skipped:
        out.append("")
        out.append("Skipped: " + "; ".join(b.skipped) + ".")
    if b.isic_failures:
        out.append("")
        out.append("isic2020 FAILURES:")
        out.extend(f"- {f}" for f in b.isic_failures)
    out.append("")
    out.append(
        "Wall time is the whole command as a user runs it (Python start-up included for "
        "isic2020); CPU s/GB is the child's user+sys CPU per GB of payload (from wait4); peak "
        "RSS is the larger of wait4's ru_maxrss (the child forked from a small parent, so the "
        "figure is its own) and the VmHWM of the child and its descendants polled from /proc. "
        "Ratios are isic2020's median wall over the peer's, "
        "measured in the same run with the tools alternating. The served files stay in the page "
        "cache; `sync` runs before every timed run. Other work on the machine during the "
        "run (see the load average) adds noise to every row alike."
    )
    return "\n".join(out) + "\n"
