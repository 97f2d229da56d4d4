"""Results: contenders, rows, and the Bench that runs contenders alternately."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .common import MB, PEERS
from .harness import DiskUse, Params, Sample, load_average, run_child, sync


@dataclass
class Tool:
    """One contender in a workload: how to prepare, run and check one repetition."""

    label: str
    argv: Callable[[int], Sequence[str]]  # rep -> argv
    is_isic: bool = False
    env: dict[str, str] | None = None
    before: Callable[[int], None] | None = None  # untimed, before each repetition
    after: Callable[[int, Sample], None] | None = None  # untimed: check output, clean up
    work_bytes: int = 0  # bytes of payload for CPU s/GB
    items: int = 0  # images for items/s
    disk: Path | None = None  # measure peak disk use under this directory (DiskUse)
    samples: list[Sample] = field(default_factory=list)
    failed: str = ""

    def med(self, attr: str) -> float:
        vals = [getattr(s, attr) for s in self.samples]
        return statistics.median(vals) if vals else float("nan")

    def med_extra(self, key: str) -> float | None:
        vals = [s.extra[key] for s in self.samples if key in s.extra]
        return statistics.median(vals) if vals else None


@dataclass
class Row:
    workload: str
    tool: str
    wall: float | None
    ratio: str = ""
    cpu_per_gb: float | None = None
    rss: float | None = None
    target: str = ""
    notes: str = ""


class Bench:
    def __init__(self, params: Params, work: Path, verbose: bool = True) -> None:
        self.p = params
        self.work = work
        self.verbose = verbose
        self.rows: list[Row] = []
        self.isic_failures: list[str] = []
        self.skipped: list[str] = []
        self.missing = [t for t in PEERS if shutil.which(t) is None]
        self.nginx = nginx_binary()
        self.load_before = load_average()
        #: Steal (CPU given to other guests) and wall time summed over every timed run.
        self.steal_s = self.timed_s = 0.0
        self.scratch_note: str | None = None  # where timed runs wrote (harness.mount_scratch)
        self.memory_note = ""  # the VM's free page reporting (vmmemory.hold_page_reporting)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    # -- running tools alternately ------------------------------------------------------
    def run_tools(self, name: str, tools: list[Tool], reps: int | None = None) -> list[Tool]:
        """A B C A B C ...: every tool once per repetition, in the same order."""
        tools = [t for t in tools if t is not None]
        reps = self.p.reps if reps is None else reps
        for rep in range(reps):
            for t in tools:
                if t.failed:
                    continue
                if t.before:
                    t.before(rep)
                sync()
                disk = DiskUse(t.disk) if t.disk is not None else None
                s = run_child(t.argv(rep), env=t.env, poll=disk.poll if disk else None)
                if disk is not None:
                    s.extra["disk_peak"] = disk.finish()
                if s.rc != 0:
                    t.failed = f"exit {s.rc}: {(s.stderr or s.stdout).strip()[-400:]}"
                    self.log(f"{name}: {t.label} FAILED ({t.failed})")
                    if t.is_isic:
                        self.isic_failures.append(f"{name}: {t.label}: {t.failed}")
                    continue
                if t.after:
                    try:
                        t.after(rep, s)
                    except Exception as exc:  # noqa: BLE001 - a wrong result is a failure
                        t.failed = f"wrong result: {exc}"
                        self.log(f"{name}: {t.label} FAILED ({t.failed})")
                        if t.is_isic:
                            self.isic_failures.append(f"{name}: {t.label}: {t.failed}")
                        continue
                t.samples.append(s)
                steal = s.extra.get("steal_s")
                if steal is not None:
                    self.steal_s += steal
                    self.timed_s += s.wall
                self.log(
                    f"{name}: {t.label} rep {rep + 1}/{reps}: {s.wall:.2f} s, "
                    f"cpu {s.cpu:.2f} s, rss {s.rss_mb:.0f} MB" + (
                        f", disk {s.extra['disk_peak'] / MB:.0f} MB" if disk else "") + (
                        f", host steal {steal:.2f} CPU-s" if steal is not None else "")
                )
        return tools

    def add(self, workload: str, t: Tool, ratio: str = "", target: str = "",
            notes: str = "") -> None:
        if t.failed and not t.samples:
            self.rows.append(Row(workload, t.label, None, notes=f"FAILED: {t.failed[:120]}"))
            return
        cpu = t.med("cpu")
        gb = t.work_bytes / 1e9 if t.work_bytes else 0
        self.rows.append(
            Row(
                workload, t.label, t.med("wall"), ratio,
                cpu / gb if gb else None,
                t.med("rss_mb") if t.is_isic else t.med("rss_mb"),
                target, notes,
            )
        )


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def ratio(a: Tool, b: Tool | None) -> float | None:
    if b is None or not a.samples or not b.samples:
        return None
    return a.med("wall") / b.med("wall")


def fmt_ratio(r: float | None, peer: str) -> str:
    return "" if r is None else f"{r:.2f}x {peer}"


def verdict(ok: bool | None, what: str) -> str:
    if ok is None:
        return f"n/a ({what}: peer missing)"
    return f"{'yes' if ok else 'NO'} ({what})"

def find(tools: list[Tool], label: str) -> Tool | None:
    for t in tools:
        if t.label == label and t.samples:
            return t
    return None
