#!/usr/bin/env python3
"""Benchmark ``isic2020`` against its peers on the same work, in one run.

    python benchmarks/run.py            # full run: sizes as in the issue, medians of 3
    python benchmarks/run.py --quick    # smoke run (tiny sizes, 1 repetition, < 60 s)

Everything is local: the script builds its own data (cached under ``--workdir``, default
``benchmarks/out/``, which git ignores), starts its own servers on 127.0.0.1 (nginx from
``tests/support/servers/``; the pure-Python ``FaultServer`` for an MD5 ETag) and runs
``python -m isic2020`` and the peers (aria2c, curl, unzip, 7z: Debian's ``aria2 curl unzip
p7zip-full``) as subprocesses, alternating them (A B C A B C ...) so that drift in the machine
hits every tool alike. Each child is reaped with ``os.wait4``, which gives its own CPU time and
peak RSS (``ru_maxrss``), so every row has wall seconds, CPU seconds per GB and peak RSS.

Rows (see benchmarks/README.md for the why of each):
  1 throttled download (nginx ``limit_rate`` per request, like S3's cap per stream)
 1c the default fetch (adaptive connection count) vs aria2c -x16, 2 MiB/s per connection
  2 unthrottled loopback download, every check on (sha256 pinned; MD5 ETag via FaultServer);
    parts 2a (nginx), 2b (FaultServer, MD5 ETag), 2c (CPU per verified byte: isic2020's CPU
    over curl's + one openssl MD5 + one openssl SHA-256 pass, single-part and multipart ETag)
  3 extraction of a 33,126-member deflated zip (members 10-30 KB, real JPEGs)
  4 ``isic2020 verify`` fast and ``--deep`` on 33,126 + 10,982 images
  5 re-run of a complete ``isic2020 fetch``: seconds and bytes sent by the server
  6 peak RSS of every isic2020 row (a column; plus the same download at 1/10 of the size)
  7 a subset (``--sample 500``) of the row-3 zip by byte ranges vs its full download: seconds,
    bytes served (nginx's log) against the members' compressed bytes + central directory
  8 ``--direct`` vs download + extract vs the download alone, throttled like row 1; peak disk
  9 ``isic2020 folds`` on the real metadata (tests/data/isic2020-metadata): command and engine
 10 ``isic2020 resize --size 512`` of photo-sized JPEGs vs vipsthumbnail and ImageMagick
 11 ``isic2020 export --layout webdataset`` (and parquet) vs ``tar`` of the same JPEGs
 12 N nodes fetching at once from one local S3 endpoint (moto; nginx beside it) vs one alone
 13 the metadata CSVs (``fetch --format none``) from a server with per-request latency: side
    by side vs one after another (``--baseline-src`` of the old code, e.g. main's src/)

Exit status: 0 when every isic2020 run succeeded (missing peers are reported and skipped, and
missed targets are reported, not failures: timings are noisy); 1 when an isic2020 run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/support/servers/: NginxServer, FaultServer
sys.path.insert(0, str(ROOT / "src"))  # works from a checkout even when not installed
from bench.common import PEERS, MiB  # noqa: E402
from bench.data import build_image_mirror  # noqa: E402
from bench.harness import (  # noqa: E402
    FULL,
    QUICK,
    empty_trash,
    mount_scratch,
    rmtree,
    unmount_scratch,
    use_trash,
)
from bench.isic import set_isic_source, use_bytecode_cache  # noqa: E402
from bench.report import report  # noqa: E402
from bench.results import Bench  # noqa: E402
from bench.rows_adaptive import row_capped, row_small_files  # noqa: E402
from bench.rows_cluster import row_cluster  # noqa: E402
from bench.rows_download import row_throttled, row_unthrottled  # noqa: E402
from bench.rows_extract import row_extract  # noqa: E402
from bench.rows_folds import row_folds  # noqa: E402
from bench.rows_resize import row_resize  # noqa: E402
from bench.rows_shards import row_shards  # noqa: E402
from bench.rows_subset import row_direct, row_direct_few, row_subset  # noqa: E402
from bench.rows_verify import row_verify_and_rerun  # noqa: E402
from bench.vmmemory import hold_page_reporting, release_page_reporting  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny sizes, 1 repetition (CI)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--rows", default="1,1c,2,3,4,5,7,8,9,10,11,12,13",
                    help="which workloads to run, e.g. 1,2 or 2b,2c (2 is 2a+2b+2c; 6, peak "
                         "RSS, is every row's column)")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="row 13: the old code's folder holding isic2020/ (e.g. main's src/), "
                         "whose fetch downloads the CSVs one after another")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out",
                    help="data and scratch (cached between runs) [benchmarks/out]")
    ap.add_argument("--results", type=Path, default=None,
                    help="Markdown file to write [benchmarks/RESULTS.md; quick: WORKDIR/...]")
    ap.add_argument("--rate", type=float, default=None,
                    help="row 1 per-connection limit in MiB/s (default 8; quick 4)")
    ap.add_argument("--direct-rate", type=float, default=None,
                    help="row 8 per-connection limit in MiB/s (default 2; quick 8)")
    ap.add_argument("--scratch-fs", choices=("auto", "ram", "off"), default="auto",
                    help="auto (not with --quick): as root, timed runs write to a fresh ext4 "
                         "loop filesystem with a journal (WORKDIR/run.ext4, sparse); ram: the "
                         "same in /dev/shm, a disk faster than the network [auto]")
    ap.add_argument("--scratch-gb", type=int, default=64,
                    help="size of that filesystem in GiB (sparse: only what is written is used)")
    ap.add_argument("--src", type=Path, default=None,
                    help="run isic2020 from this folder (holding isic2020/) instead of src/, "
                         "to measure a patch against the same peers")
    args = ap.parse_args(argv)
    if args.src is not None:
        src = args.src.resolve()
        if not (src / "isic2020" / "__init__.py").is_file():
            ap.error(f"--src {args.src}: no isic2020/__init__.py there")
        set_isic_source(src)
    # SIGTERM (CI cancellation) must unwind the with-blocks, or nginx would outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raw_argv = list(argv if argv is not None else sys.argv[1:])
    p = QUICK if args.quick else FULL
    if args.reps:
        p = dataclasses.replace(p, reps=args.reps)
    if args.rate:
        p = dataclasses.replace(p, rate=int(args.rate * MiB))
    if args.direct_rate:
        p = dataclasses.replace(p, direct_rate=int(args.direct_rate * MiB))
    tokens = {x.strip().lower() for x in args.rows.split(",") if x.strip()}
    parts = {"2a", "2b", "2c"} if "2" in tokens else tokens & {"2a", "2b", "2c"}
    bad = tokens - parts - {"2", "1c"} - {str(n) for n in range(1, 14)}
    if bad:
        ap.error(f"--rows: no such row {', '.join(sorted(bad))} (1-13, 1c, 2a, 2b, 2c)")
    rows = {int(x) for x in tokens if x.isdigit()}
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    use_bytecode_cache(work / "pycache")
    use_trash(work / "trash")
    b = Bench(p, work)
    if args.scratch_fs != "off" and not p.quick:
        b.scratch_note = mount_scratch(work / "run", args.scratch_gb * 1024**3,
                                       ram=args.scratch_fs == "ram")
        b.log(b.scratch_note or "no scratch filesystem (needs root and mkfs.ext4): outputs "
              f"on {work}'s own filesystem, deletions through {work / 'trash'}")
    if not p.quick:  # timings are not judged in a quick run: the machine is left alone
        b.memory_note = hold_page_reporting()
        b.log(b.memory_note)
    if b.missing:
        b.log("MISSING peers, their rows are skipped: " + ", ".join(
            f"{t} (apt-get install {PEERS[t]})" for t in b.missing))
    if b.nginx is None:
        b.log("MISSING nginx (apt-get install nginx): download rows need it")
    t0 = time.monotonic()
    try:
        if 1 in rows:
            row_throttled(b)
        if "1c" in tokens:
            row_capped(b)
        if parts:
            row_unthrottled(b, parts)
        if rows & {3, 4, 5, 7, 8, 13}:
            b.log("building the image dataset (cached in " + str(work / "data") + ")")
            ds = build_image_mirror(work, p)
            if 3 in rows:
                row_extract(b, ds)
            if rows & {4, 5}:
                row_verify_and_rerun(b, ds)
            if 7 in rows:
                row_subset(b, ds)
            if 8 in rows:
                row_direct(b, ds)
                row_direct_few(b)
            if 13 in rows:
                row_small_files(b, ds, args.baseline_src)
        if 9 in rows:
            row_folds(b)
        if 10 in rows:
            row_resize(b)
        if 11 in rows:
            row_shards(b)
        if 12 in rows:
            row_cluster(b)
    finally:
        release_page_reporting()
        if b.scratch_note:
            unmount_scratch(work / "run")
        rmtree(work / "run")
        empty_trash()
    text = report(b, raw_argv, time.monotonic() - t0)
    print(text)
    results = args.results or (work / "RESULTS-quick.md" if p.quick
                               else ROOT / "benchmarks" / "RESULTS.md")
    results.write_text(text)
    b.log(f"written to {results}")
    if b.isic_failures:
        print("isic2020 failed a run:\n" + "\n".join(b.isic_failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
