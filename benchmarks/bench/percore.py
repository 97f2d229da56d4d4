#!/usr/bin/env python3
"""CPU seconds per GB of each stage of a verified download, per core: the measurement that the
"At scale" section of benchmarks/README.md scales up.

    python benchmarks/bench/percore.py [--gb 1] [--threads 1,2] [--workdir DIR]

Stages, each measured alone in this process with ``time.process_time`` (CPU, not wall: other
load disturbs it least) over ``--gb`` GB from a buffer in memory:

- ``md5``, ``sha256``: hashlib (OpenSSL) in one thread, 1 MiB blocks. Both are sequential
  over a file: one file's SHA-256 (and a single-part ETag's MD5) never uses more than one core.
- ``multipart md5 xK``: S3's per-part MD5s (8 MiB parts) on K threads, each hashing whole
  parts (hashlib releases the GIL): CPU per GB and the aggregate rate, i.e. how it scales.
- ``connection``: one loopback TCP stream received with ``recv_into`` a reused 256 KiB buffer
  and written with ``os.pwrite`` into a file, fresh pages as in a download (the file is
  truncated every 64 MiB, so the disk is not filled and the kernel's writeback, which is no
  CPU of this process, never starts): the kernel's copy in, the page cache's allocation and
  copy, and the Python calls around them. The sender (a child process) is not counted.

It prints one line per stage (CPU s/GB, GB/s of one core) and what a machine of ``--cores``
cores needs for ``--gbps`` (cores per stage at that rate; which stage caps one file first).
Nothing here is isic2020's own code: these are the floors the engine's measured CPU
(benchmarks row 2c) is compared with.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1 << 20
PART = 8 * MiB
BLOCK = 1 * MiB
RECV = 256 * 1024
REGION = 64 * MiB

_SENDER = """\
import socket, sys
port, total = int(sys.argv[1]), int(sys.argv[2])
buf = bytes(range(256)) * (4 << 12)  # 4 MiB
s = socket.create_connection(("127.0.0.1", port))
left = total
while left > 0:
    n = min(left, len(buf))
    s.sendall(memoryview(buf)[:n])
    left -= n
s.close()
"""


def payload() -> memoryview:
    """64 MiB of incompressible-looking bytes, hashed over and over."""
    seed = hashlib.sha256(b"percore").digest()
    chunk = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(32768))
    return memoryview(chunk * (REGION // len(chunk)))


def hash_cost(alg: str, data: memoryview, total: int) -> float:
    """CPU seconds to hash ``total`` bytes with ``alg`` in one thread."""
    h = hashlib.new(alg)
    t0 = time.process_time()
    done = 0
    while done < total:
        for off in range(0, len(data), BLOCK):
            h.update(data[off:off + BLOCK])
        done += len(data)
    h.digest()
    return time.process_time() - t0


def multipart_cost(data: memoryview, total: int, threads: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for the per-part MD5s of ``total`` bytes on ``threads``."""
    parts = [(i % (len(data) // PART)) * PART for i in range(total // PART)]

    def work(k: int) -> None:
        for n, off in enumerate(parts):
            if n % threads == k:
                h = hashlib.md5()
                for o in range(off, off + PART, BLOCK):
                    h.update(data[o:o + BLOCK])
                h.digest()

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    c0, w0 = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.process_time() - c0, time.perf_counter() - w0


def connection_cost(total: int, workdir: Path) -> float:
    """CPU seconds of this process to receive ``total`` bytes over loopback and pwrite them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(port), str(total)])
    conn, _ = srv.accept()
    buf = bytearray(RECV)
    view = memoryview(buf)
    with tempfile.NamedTemporaryFile(dir=workdir) as fh:
        fd = fh.fileno()
        t0 = time.process_time()
        got = 0
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            os.pwrite(fd, view[:n], got % REGION)
            got += n
            if got % REGION < n:  # wrapped: drop the region's pages, the next are fresh
                os.ftruncate(fd, 0)
        cpu = time.process_time() - t0
    conn.close()
    srv.close()
    sender.wait(timeout=60)
    if got != total:
        raise RuntimeError(f"received {got} of {total} bytes")
    return cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="GB per stage [1]")
    ap.add_argument("--threads", default="1,2", help="multipart MD5 thread counts [1,2]")
    ap.add_argument("--cores", type=int, default=16, help="cores of the machine to size [16]")
    ap.add_argument("--gbps", default="10,25,100", help="link rates to size, Gbit/s")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args(argv)
    total = max(REGION, int(args.gb * 1e9) // REGION * REGION)
    gb = total / 1e9
    data = payload()
    costs: dict[str, float] = {}
    for alg in ("md5", "sha256"):
        costs[alg] = hash_cost(alg, data, total) / gb
    lines = [f"{'stage':<22} {'CPU s/GB':>9} {'GB/s per core':>14}"]
    for alg in ("md5", "sha256"):
        lines.append(f"{alg:<22} {costs[alg]:>9.3f} {1 / costs[alg]:>14.2f}")
    for k in (int(x) for x in args.threads.split(",") if x.strip()):
        cpu, wall = multipart_cost(data, total, k)
        costs[f"mp{k}"] = cpu / gb
        lines.append(f"{f'multipart md5 x{k}':<22} {cpu / gb:>9.3f} {1 / (cpu / gb):>14.2f}"
                     f"   aggregate {gb / wall:.2f} GB/s on {k} thread(s) (wall: idle only)")
    costs["conn"] = connection_cost(total, args.workdir) / gb
    lines.append(f"{'connection (recv+pwrite)':<22} {costs['conn']:>9.3f} "
                 f"{1 / costs['conn']:>14.2f}")
    lines.append("")
    lines.append(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
                 f"{os.cpu_count()} CPUs here")
    for rate in (float(x) for x in args.gbps.split(",") if x.strip()):
        gbs = rate / 8
        need = {"sha256": costs["sha256"], "md5 (multipart, parallel)": costs["md5"],
                "connections (recv+pwrite)": costs["conn"]}
        cores = sum(v * gbs for v in need.values())
        one_file = min(1 / costs["sha256"], 1 / costs["md5"])
        lines.append(
            f"{rate:g} Gbit/s = {gbs:.2f} GB/s: "
            + ", ".join(f"{k} {v * gbs:.1f} cores" for k, v in need.items())
            + f"; total {cores:.1f} of {args.cores} cores"
            + f"; one file's sequential SHA-256 caps at {1 / costs['sha256']:.2f} GB/s"
            + (f" ({'under' if gbs > 1 / costs['sha256'] else 'over'} the link)")
            + f"; a single-part MD5 ETag at {one_file:.2f} GB/s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
