"""Row 1c (the default fetch's adaptive connection count against aria2c -x16 where every
connection is capped) and row 13 (the metadata CSVs side by side, against one after another)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import PREFIX, TRAIN_ZIP, MiB
from .data import Dataset, build_download_mirror, human
from .harness import Sample, rmtree
from .isic import archive_entry, check_file, fetch_report, isic, isic_env
from .results import Bench, Tool, find, fmt_ratio, ratio, verdict
from .rows_download import download_tools

#: Row 1c: the per-connection cap (S3's per-stream limit, as the issue measures it).
CAPPED_RATE = 2 * MiB
#: Row 13: seconds a server takes before it answers any request (a far region's round trips).
LATENCY = 0.1


def _fresh(d: Path) -> Callable[[int], None]:
    def f(rep: int) -> None:
        rmtree(d)
        d.mkdir(parents=True)
    return f


def row_capped(b: Bench) -> None:
    """The default fetch (no --connections) vs aria2c -x16 -s16, 2 MiB/s per connection."""
    from support.servers import NginxServer

    size = b.p.archive_bytes
    name = (f"1c capped connections {human(size)}, {CAPPED_RATE / MiB:.0f} MiB/s per conn: "
            "default fetch (adaptive) vs aria2c -x16")
    if b.nginx is None:
        b.skipped.append("row 1c: nginx missing")
        return
    mirror, manifest = build_download_mirror(b.work, size)
    d = b.work / "run" / "capped" / "isic-default"

    def after(rep: int, s: Sample) -> None:
        entry = archive_entry(fetch_report(s))
        check_file(d / "archives" / TRAIN_ZIP, size)
        s.extra["engine_s"] = entry["seconds"]
        rmtree(d)

    with NginxServer(mirror, PREFIX, limit_rate=CAPPED_RATE) as srv:
        mine = Tool("isic2020 (default)", lambda rep: isic(
            "fetch", "--split", "train", "--format", "jpeg", "--no-extract", "--json",
            "--quiet", "--mirror", srv.url, "--data-dir", str(d)),
            is_isic=True, env=isic_env(manifest, b.p.chunk_size), before=_fresh(d),
            after=after, work_bytes=size)
        tools = [mine, *download_tools(b, srv.url, mirror, manifest, size, "capped", (),
                                       (16,), curl=False)]
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 1c", tools)
    aria = find(tools, "aria2c -x16 -s16")
    ideal16 = size / (16 * CAPPED_RATE)
    for t in tools:
        r = tgt = ""
        notes = f"ideal at 16 conns {ideal16:.2f} s, at 64 {ideal16 / 4:.2f} s"
        if t is mine:
            rr = ratio(t, aria)
            r = fmt_ratio(rr, "aria2c -x16 -s16")
            tgt = verdict(None if rr is None else rr <= 0.6, "<= 0.6x aria2c -x16")
            eng = t.med_extra("engine_s")
            if eng is not None:
                notes = f"archive alone {eng:.2f} s in-engine; " + notes
        b.add(name, t, r, tgt, notes + f"; load {os.getloadavg()[0]:.1f}")


class _Slow:
    """A FaultServer that waits ``LATENCY`` before it answers each request (HEAD or GET), as
    a far server's round trips do; built lazily (support.servers is on sys.path only then)."""

    @staticmethod
    def make(root: Path) -> Any:
        from support.servers import FaultServer

        class SlowServer(FaultServer):
            def _select_faults(self, req: Any) -> Any:  # per request, outside the lock
                time.sleep(LATENCY)
                return super()._select_faults(req)

        return SlowServer(root, PREFIX)


def row_small_files(b: Bench, ds: Dataset, baseline: Path | None) -> None:
    """``fetch --format none`` (the CSVs only) from a server with per-request latency: this
    code (side by side) vs ``--baseline-src`` (one after another)."""
    name = (f"13 the metadata CSVs (fetch --format none) from a server with "
            f"{LATENCY * 1000:.0f} ms per request")
    out = b.work / "run" / "small"
    tools: list[Tool] = []
    with _Slow.make(ds.mirror) as srv:
        for label, src in (("isic2020 (CSVs side by side)", None),
                           ("isic2020 --baseline-src (one after another)", baseline)):
            if label.startswith("isic2020 --baseline") and src is None:
                continue
            d = out / ("new" if src is None else "old")
            env = isic_env(ds.manifest)
            if src is not None:
                env["PYTHONPATH"] = str(src)

            def after(rep: int, s: Sample, d: Path = d) -> None:
                doc = fetch_report(s)
                s.extra["files"] = len(doc["files"])
                rmtree(d)

            tools.append(Tool(label, lambda rep, d=d: isic(
                "fetch", "--split", "all", "--format", "none", "--json", "--quiet",
                "--mirror", srv.url, "--data-dir", str(d)),
                is_isic=True, env=env, before=_fresh(d), after=after))
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 13", tools)
    new = tools[0]
    old = tools[1] if len(tools) > 1 else None
    for t in tools:
        r = tgt = ""
        files = t.med_extra("files")
        notes = (f"{files:.0f} files; " if files else "") + f"load {os.getloadavg()[0]:.1f}"
        if t is new and old is not None:
            rr = ratio(new, old)
            r = fmt_ratio(rr, "one after another")
            tgt = verdict(None if rr is None else rr < 1.0, "faster than one after another")
        b.add(name, t, r, tgt, notes)
