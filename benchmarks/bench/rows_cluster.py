"""Row 12: N nodes fetching at once from one local S3 endpoint (moto), issue 16.

In ``benchmarks/run.py --rows 12`` (4 nodes, 64 MB; ``--quick``: 2 nodes, 8 MB), or
standalone: ``PYTHONPATH=src:tests:benchmarks python benchmarks/bench/rows_cluster.py [--nodes 4]
[--size-mb 64]``. A synthetic training split whose JPEG zip is padded to ``--size-mb`` (a stored
member of random bytes) is published with ``isic2020 mirror s3://...`` (8 MiB multipart
parts), then fetched with ``fetch --mirror s3://... --manifest pinned.toml --no-extract`` once
alone and by N processes at once, each into its own data folder. Printed: each node's time,
the aggregate throughput, and the ratio to the single fetch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ARCHIVE = "ISIC_2020_Training_JPEG.zip"


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "isic2020", *args]


Result = tuple[str, tuple[float, list[float]], tuple[float, list[float]]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--size-mb", type=int, default=64)
    args = ap.parse_args(argv)
    size, publish, rows = measure(args.nodes, args.size_mb)
    mb = size / 1e6
    print(f"archive {mb:.1f} MB; mirror to s3:// (publish, 8 MiB parts) {publish:.2f}s")
    for label, (_, single), (wall, times) in rows:
        print(f"{label}: single node {single[0]:.2f}s ({mb / single[0]:.1f} MB/s); "
              f"{args.nodes} nodes at once: wall {wall:.2f}s, aggregate "
              f"{args.nodes * mb / wall:.1f} MB/s; per node "
              + ", ".join(f"{t:.2f}s" for t in times)
              + f" (x{sum(times) / len(times) / single[0]:.2f} the single fetch on average)")
    return 0


def row_cluster(b: object) -> None:
    """The benchmark row: one fetch alone, then N at once, per endpoint (moto via s3://, and
    nginx serving the same files when it is installed)."""
    from bench.results import Row

    nodes, size_mb = (2, 8) if b.p.quick else (4, 64)  # type: ignore[attr-defined]
    size, publish, results = measure(nodes, size_mb)
    mb = size / 1e6
    name = f"12 {nodes} nodes fetch one {mb:.0f} MB archive from one local endpoint"
    b.rows.append(Row(name, "isic2020 mirror s3:// (publish, 8 MiB parts)", publish))  # type: ignore[attr-defined]
    for label, (_, single), (wall, times) in results:
        mean = sum(times) / len(times)
        b.rows.append(Row(name, f"{label}: 1 node", single[0],  # type: ignore[attr-defined]
                          notes=f"{mb / single[0]:.1f} MB/s"))
        b.rows.append(Row(  # type: ignore[attr-defined]
            name, f"{label}: {nodes} nodes at once", wall,
            ratio=f"{mean / single[0]:.2f}x the single fetch per node",
            notes=f"aggregate {nodes * mb / wall:.1f} MB/s; per node "
            + ", ".join(f"{t:.2f} s" for t in times)))


def measure(nodes: int, size_mb: int) -> tuple[int, float, list[Result]]:
    """(archive bytes, publish seconds, per endpoint: (label, single run, N-node run))."""
    from support.servers import S3Server

    from bench.isic import isic_env
    from isic2020.catalog.manifest import load_manifest, manifest_to_toml
    from isic2020.synthetic import build_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    ds = build_dataset(work / "src", n_train=8, n_test=2)
    with zipfile.ZipFile(ds.path(ARCHIVE), "a") as z:
        z.writestr(zipfile.ZipInfo("train/padding.bin"), os.urandom(size_mb << 20))
    size = ds.path(ARCHIVE).stat().st_size
    man = load_manifest(ds.manifest_path)
    files = tuple(dataclasses.replace(f, size=None, etag=None, sha256=None,
                                      published_size=f"{size // 10**6} MB" if f.name == ARCHIVE
                                      else f.published_size) for f in man.files)
    unpinned = work / "unpinned.toml"
    unpinned.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    with S3Server(min_part_size=None) as s3:
        env = {**isic_env(unpinned), "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": s3.endpoint}
        s3.create_bucket("official")
        s3.create_bucket("lab")
        for f in man.files:
            if f.split == "train":
                s3.upload("official", f.name, ds.path(f.name))
        a = work / "A"
        subprocess.run(_cmd("fetch", "--data-dir", str(a), "--mirror", s3.bucket_url("official"),
                            "--split", "train", "--no-extract", "--quiet"), env=env, check=True)
        pinned = work / "pinned.toml"
        pinned.write_text(subprocess.run(_cmd("pin", "--data-dir", str(a)), env=env, check=True,
                                         capture_output=True, text=True).stdout)
        t = time.monotonic()
        subprocess.run(_cmd("mirror", "s3://lab/isic", "--data-dir", str(a), "--split", "train",
                            "--quiet"), env=env, check=True)
        publish = time.monotonic() - t

        def run(n: int, tag: str, mirror: str = "s3://lab/isic",
                check: str = "multipart") -> tuple[float, list[float]]:
            t0 = time.monotonic()
            procs = [subprocess.Popen(
                _cmd("fetch", "--data-dir", str(work / f"{tag}{i}"), "--mirror", mirror,
                     "--manifest", str(pinned), "--split", "train", "--no-extract", "--json",
                     "--quiet"), env=env, stdout=subprocess.PIPE, text=True) for i in range(n)]
            times = []
            for p in procs:
                out, _ = p.communicate(timeout=1800)
                assert p.returncode == 0
                doc = json.loads(out)
                entry = next(f for f in doc["files"] if f["name"] == ARCHIVE)
                assert check in entry["etag_check"], entry["etag_check"]
                times.append(float(doc["seconds"]))
            return time.monotonic() - t0, times

        rows: list[Result] = [("moto S3, s3:// presigned", run(1, "single"), run(nodes, "node"))]
        from support.servers import NginxServer

        if NginxServer.find_binary() is not None:  # the same files, a server that is not Python
            folder = work / "folder"
            subprocess.run(_cmd("mirror", str(folder), "--data-dir", str(a), "--split",
                                "train", "--quiet"), env=env, check=True)
            nginx = NginxServer(folder).start()
            try:
                rows.append(("nginx, http://", run(1, "nsingle", nginx.url, "sha256"),
                             run(nodes, "nnode", nginx.url, "sha256")))
            finally:
                nginx.close()
    return size, publish, rows


if __name__ == "__main__":
    raise SystemExit(main())
