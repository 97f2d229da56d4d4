#!/usr/bin/env python3
"""Benchmark ``isic2020`` against its peers on the same work, in one run (issue 5).

    python benchmarks/run.py            # full run: sizes as in the issue, medians of 3
    python benchmarks/run.py --quick    # smoke run (tiny sizes, 1 repetition, < 60 s)

Everything is local: the script builds its own data (cached under ``--workdir``, default
``benchmarks/out/``, which git ignores), starts its own servers on 127.0.0.1 (nginx from
``tests/support/servers.py``; the pure-Python ``FaultServer`` for an MD5 ETag) and runs
``python -m isic2020`` and the peers (aria2c, curl, unzip, 7z: Debian's ``aria2 curl unzip
p7zip-full``) as subprocesses, alternating them (A B C A B C ...) so that drift in the machine
hits every tool alike. Each child is reaped with ``os.wait4``, which gives its own CPU time and
peak RSS (``ru_maxrss``), so every row has wall seconds, CPU seconds per GB and peak RSS.

Rows (see benchmarks/README.md for the why of each):
  1 throttled download (nginx ``limit_rate`` per request, like S3's cap per stream)
  2 unthrottled loopback download, every check on (sha256 pinned; MD5 ETag via FaultServer)
  3 extraction of a 33,126-member deflated zip (members 10-30 KB, real JPEGs)
  4 ``isic2020 verify`` fast and ``--deep`` on 33,126 + 10,982 images
  5 re-run of a complete ``isic2020 fetch``: seconds and bytes sent by the server
  6 peak RSS of every isic2020 row (a column; plus the same download at 1/10 of the size)
  7 a subset (``--sample 500``) of the row-3 zip by byte ranges vs its full download: seconds,
    bytes served (nginx's log) against the members' compressed bytes + central directory
  8 ``--direct`` vs download + extract vs the download alone, throttled like row 1; peak disk

Exit status: 0 when every isic2020 run succeeded (missing peers are reported and skipped, and
missed targets are reported, not failures: timings are noisy); 1 when an isic2020 run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/support/servers.py: NginxServer, FaultServer
sys.path.insert(0, str(ROOT / "src"))  # works from a checkout even when not installed

from isic2020.manifest import load_manifest, manifest_to_toml  # noqa: E402
from isic2020.synthetic import ARCHIVE_FOLDERS, build_dataset, jpeg_bytes  # noqa: E402

PREFIX = "/challenges/2020/"
TRAIN_ZIP = "ISIC_2020_Training_JPEG.zip"
TEST_ZIP = "ISIC_2020_Test_JPEG.zip"
MB = 10**6
MiB = 1 << 20
EXTRACTALL = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
PEERS = {
    "aria2c": "aria2",
    "curl": "curl",
    "unzip": "unzip",
    "7z": "p7zip-full",
}


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Params:
    quick: bool
    reps: int
    archive_bytes: int  # rows 1, 2
    rate: int  # row 1: nginx limit_rate per request, bytes/s
    connections: tuple[int, ...]  # row 1: isic2020 at these connection counts
    n_train: int  # rows 3-5
    n_test: int
    member_min: int
    member_max: int
    zip_level: int
    chunk_size: int | None  # ISIC2020_CHUNK_SIZE for isic2020 download runs (None: default)
    sample_n: int  # row 7: --sample N of the train zip
    direct_rate: int  # row 8: nginx limit_rate per request, bytes/s


FULL = Params(
    quick=False, reps=3, archive_bytes=400 * MB, rate=8 * MiB, connections=(1, 4, 8, 16),
    n_train=33126, n_test=10982, member_min=10_000, member_max=30_000, zip_level=6,
    chunk_size=None, sample_n=500, direct_rate=2 * MiB,
)
QUICK = Params(
    quick=True, reps=1, archive_bytes=8 * MB, rate=4 * MiB, connections=(1, 8),
    n_train=500, n_test=200, member_min=10_000, member_max=30_000, zip_level=1,
    chunk_size=1 * MiB,  # 8 MB is a single 8 MiB chunk: smaller chunks so parallelism shows
    sample_n=50, direct_rate=8 * MiB,
)


# --------------------------------------------------------------------------------------------
# Running one child and measuring it


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mb: float
    rc: int
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _hwm_kb(pid: int) -> int:
    """Peak RSS (VmHWM) of ``pid``'s current program, in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.append(int(k))
            todo.append(int(k))
    return out


def run_child(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900.0,
              cwd: Path | None = None, poll: Callable[[], None] | None = None) -> Sample:
    """Run ``argv``: wall time; CPU (user+sys) of the child and its children from ``wait4``;
    peak RSS polled from /proc (VmHWM of the child and its descendants); ``poll`` (cheap: it
    runs every 2-20 ms) is called beside the RSS polling.

    Not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` starts from the RSS of the process that
    forked it (exec keeps the old address space's high-water mark), i.e. this script's ~100 MB.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            env=env, cwd=cwd,
        )
        deadline = t0 + timeout
        peaks: dict[int, int] = {}
        reaped = False
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    reaped = True
                    break
                for p in [proc.pid, *_descendants(proc.pid)]:
                    kb = _hwm_kb(p)
                    if kb > peaks.get(p, 0):
                        peaks[p] = kb
                if poll is not None:
                    poll()
                if time.perf_counter() > deadline:
                    proc.kill()
                    pid, status, ru = os.wait4(proc.pid, 0)
                    reaped = True
                    break
                # VmHWM only grows: poll often at first (short runs), then gently (2 CPUs).
                time.sleep(0.002 if time.perf_counter() - t0 < 0.2 else 0.02)
        finally:
            if not reaped:  # interrupted: leave no child behind
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc  # reaped by wait4: tell Popen so it does not try again
        out.seek(0)
        err.seek(0)
        return Sample(
            wall=wall,
            cpu=ru.ru_utime + ru.ru_stime,
            rss_mb=max(peaks.values(), default=0) / 1024.0,
            rc=rc,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def sync() -> None:
    """Flush dirty pages outside the timed region, so no run pays for its predecessor."""
    os.sync()


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


class DiskUse:
    """Peak disk use under the data directory ``root`` during a run, polled beside the RSS:
    blocks allocated (``st_blocks``, like ``du``; ext4 counts delayed allocations in it).

    Not ``statvfs`` of the filesystem: anything else writing to it (another benchmark, a test
    run) would be counted. Not a full walk every poll either: 33,126 ``stat`` calls cost
    ~0.14 s of CPU on a 2-CPU machine. The walk is incremental: every directory is listed
    (``getdents``, no ``stat``: ~25 ms for 33,126 names) and a file is ``stat``-ed again only
    when it may still grow: hidden names (the ``.NAME.part`` temporaries), files in small
    directories (``archives/``, the partial download, ``metadata/``) and names not seen before
    (by inode). An image reaches its final name complete (atomic rename), so a known name and
    inode keeps its size. Polls are spaced by >= 5x their own cost (>= 0.2 s, so the poller
    takes < 1/5 of a core); the end of the run is always measured. A file that vanished between
    two polls (an inode no longer under ``root``: ``--no-keep-archives`` deleting the zip) is
    counted as if deleted just before the second poll, so the peak just before a deletion is
    not missed (it is over-estimated by at most what was written in those <= 0.2 s)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.known: dict[tuple[str, int], int] = {}
        self.inodes: dict[int, int] = {}
        self.peak = 0
        self.next = 0.0

    def poll(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now < self.next:
            return
        used = self._walk()
        cost = time.perf_counter() - now
        self.next = time.perf_counter() + max(0.2, 5 * cost)
        self.peak = max(self.peak, used)

    def finish(self) -> int:
        self.poll(force=True)
        return self.peak

    def _walk(self) -> int:
        total = 0
        seen: dict[tuple[str, int], int] = {}
        todo = [str(self.root)]
        while todo:
            try:
                with os.scandir(todo.pop()) as it:
                    entries = list(it)
            except OSError:
                continue
            small = len(entries) <= 64
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                        continue
                    key = (e.path, e.inode())
                    blocks = None if small or e.name.startswith(".") else self.known.get(key)
                    if blocks is None:
                        blocks = e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:  # gone meanwhile (a temporary renamed, the zip deleted)
                    continue
                seen[key] = blocks
                total += blocks
        self.known = seen
        inodes = {ino: blocks for (_path, ino), blocks in seen.items()}
        vanished = sum(b for ino, b in self.inodes.items() if ino not in inodes)
        self.inodes = inodes
        return total + vanished


def du_bytes(d: Path) -> int:
    """Blocks allocated under ``d`` (files and directories, like ``du -s``), in bytes."""
    total = 0
    todo = [d]
    while todo:
        try:
            it = os.scandir(todo.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    todo.append(Path(e.path))
    return total


# --------------------------------------------------------------------------------------------
# Results


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
        self.nginx = _nginx_binary()
        self.load_before = _load()

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
                self.log(
                    f"{name}: {t.label} rep {rep + 1}/{reps}: {s.wall:.2f} s, "
                    f"cpu {s.cpu:.2f} s, rss {s.rss_mb:.0f} MB" + (
                        f", disk {s.extra['disk_peak'] / MB:.0f} MB" if disk else "")
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


def _nginx_binary() -> str | None:
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


# --------------------------------------------------------------------------------------------
# Data (cached under WORK/data; a stamp records the parameters it was built with)


def _stamp_ok(folder: Path, key: dict[str, Any]) -> bool:
    stamp = folder / "stamp.json"
    try:
        return json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _write_stamp(folder: Path, key: dict[str, Any]) -> None:
    (folder / "stamp.json").write_text(json.dumps(key))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _human(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} B"


def _repoint(manifest_path: Path, out: Path, mirror: Path, changes: dict[str, int]) -> None:
    """Write ``out``: the manifest with the archives in ``changes`` (name -> images) pinned to
    the exact size and sha256 of the files now in ``mirror``."""
    man = load_manifest(manifest_path)
    files = []
    for f in man.files:
        if f.name in changes:
            path = mirror / f.name
            size = path.stat().st_size
            f = dataclasses.replace(
                f, size=size, sha256=_sha256(path), etag=None, published_size=_human(size),
                images=changes[f.name] if changes[f.name] >= 0 else f.images,
            )
        files.append(f)
    text = "# benchmarks/run.py: synthetic mirror, exact sizes and sha256\n"
    out.write_text(text + manifest_to_toml(dataclasses.replace(man, files=tuple(files))))


def build_download_mirror(work: Path, size: int) -> tuple[Path, Path]:
    """A mirror with the train CSVs and a ``size``-byte train 'archive' of random bytes
    (download rows use --no-extract: the bytes only need to be incompressible and exact)."""
    folder = work / "data" / f"download-{size}"
    key = {"kind": "download", "size": size, "v": 1}
    manifest = folder / "manifest.toml"
    if _stamp_ok(folder, key):
        return folder / "mirror", manifest
    rmtree(folder)
    mirror = folder / "mirror"
    ds = build_dataset(mirror, n_train=24, n_test=12, formats=("jpeg",), seed=5)
    rng = random.Random(size)
    with open(mirror / TRAIN_ZIP, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(rng.randbytes(n))
            left -= n
    _repoint(ds.manifest_path, manifest, mirror, {TRAIN_ZIP: -1})
    _write_stamp(folder, key)
    return mirror, manifest


def _jpeg_pool(lo: int, hi: int, seed: int, count: int = 48) -> list[bytes]:
    """``count`` real JPEGs (noise over a gradient: entropy like a photo's) of lo..hi bytes."""
    from PIL import Image

    rng = random.Random(seed)
    pool: list[bytes] = []
    targets = [lo + (hi - lo) * (i + 0.5) / count for i in range(count)]
    side = 128
    for target in targets:
        for _ in range(12):  # adjust the side until the size is in range
            raw = bytearray(rng.randbytes(side * side * 3))
            for i in range(0, len(raw), 3):  # a colour cast, so it is no pure noise
                raw[i] = (raw[i] >> 1) + 100
            im = Image.frombytes("RGB", (side, side), bytes(raw))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
            data = buf.getvalue()
            if lo <= len(data) <= hi and abs(len(data) - target) < (hi - lo) / count * 2:
                break
            side = max(16, int(side * (target / len(data)) ** 0.5))
        pool.append(data)
    return pool


def _write_image_zip(path: Path, folder: str, names: list[str], pool: list[bytes], level: int,
                     extras: list[tuple[str, bytes]]) -> int:
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for i, name in enumerate(names):
            data = jpeg_bytes(pool[(i * 7919) % len(pool)], name)
            info = zipfile.ZipInfo(f"{folder}/{name}.jpg", date_time=(2020, 5, 26, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
            total += len(data)
        for n, data in extras:
            zf.writestr(n, data)
    tmp.replace(path)
    return total


@dataclass
class Dataset:
    mirror: Path
    manifest: Path
    n_train: int
    n_test: int
    train_bytes: int  # uncompressed bytes of the train zip's images
    train_zip: Path


def build_image_mirror(work: Path, p: Params) -> Dataset:
    """The synthetic dataset (official CSVs for n_train + n_test images), with both JPEG zips
    rebuilt from 10-30 KB real JPEGs under the official member folders."""
    folder = work / "data" / f"images-{p.n_train}-{p.n_test}"
    key = {"kind": "images", "n_train": p.n_train, "n_test": p.n_test, "lo": p.member_min,
           "hi": p.member_max, "level": p.zip_level, "v": 1}
    manifest = folder / "manifest.toml"
    mirror = folder / "mirror"
    if not _stamp_ok(folder, key):
        rmtree(folder)
        ds = build_dataset(mirror, n_train=p.n_train, n_test=p.n_test, formats=("jpeg",), seed=7)
        pool = _jpeg_pool(p.member_min, p.member_max, seed=11)
        train_bytes = _write_image_zip(
            mirror / TRAIN_ZIP, ARCHIVE_FOLDERS[("train", "jpeg")], ds.train_names, pool,
            p.zip_level, [(f"__MACOSX/train/._{ds.train_names[0]}.jpg", b"\x00\x05\x16\x07")],
        )
        _write_image_zip(
            mirror / TEST_ZIP, ARCHIVE_FOLDERS[("test", "jpeg")], ds.test_names, pool,
            p.zip_level, [("ISIC_2020_Test_Input/readme.txt", b"synthetic\r\n")],
        )
        _repoint(ds.manifest_path, manifest, mirror, {TRAIN_ZIP: -1, TEST_ZIP: -1})
        key_out = dict(key, train_bytes=train_bytes)
        (folder / "info.json").write_text(json.dumps(key_out))
        _write_stamp(folder, key)
    info = json.loads((folder / "info.json").read_text())
    return Dataset(mirror, manifest, p.n_train, p.n_test, info["train_bytes"],
                   mirror / TRAIN_ZIP)


# --------------------------------------------------------------------------------------------
# isic2020 command lines


ISIC_SRC = ROOT / "src"  # --src: A/B a patched copy of the package


def isic_env(manifest: Path, chunk: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["ISIC2020_MANIFEST"] = str(manifest)
    env.pop("ISIC2020_MIRROR", None)
    env.pop("ISIC2020_DATA_DIR", None)
    if chunk:
        env["ISIC2020_CHUNK_SIZE"] = str(chunk)
    pp = str(ISIC_SRC)
    env["PYTHONPATH"] = pp + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def isic(*args: str) -> list[str]:
    return [sys.executable, "-m", "isic2020", *args]


def fetch_report(s: Sample) -> dict[str, Any]:
    doc = json.loads(s.stdout)
    if not doc.get("ok", False):
        raise RuntimeError(f"fetch reported not ok: {s.stdout[-300:]}")
    return doc


def archive_entry(doc: dict[str, Any], name: str = TRAIN_ZIP) -> dict[str, Any]:
    for f in doc.get("files", []):
        if f.get("name") == name:
            return f
    raise RuntimeError(f"{name} not in the fetch report")


def check_file(path: Path, size: int) -> None:
    got = path.stat().st_size
    if got != size:
        raise RuntimeError(f"{path.name}: {got} bytes, expected {size}")


# --------------------------------------------------------------------------------------------
# Rows 1 and 2: downloads


def download_tools(b: Bench, url_base: str, mirror: Path, manifest: Path, size: int,
                   tag: str, isic_conns: Sequence[int], aria_conns: Sequence[int],
                   aria_checksum: bool = False, curl: bool = True,
                   curl_sync: bool = False) -> list[Tool]:
    out = b.work / "run" / tag
    sha = _sha256(mirror / TRAIN_ZIP) if aria_checksum else ""
    url = url_base + TRAIN_ZIP
    tools: list[Tool] = []

    def fresh(d: Path) -> Callable[[int], None]:
        def f(rep: int) -> None:
            rmtree(d)
            d.mkdir(parents=True)
        return f

    for c in isic_conns:
        d = out / f"isic-c{c}"

        def after(rep: int, s: Sample, d: Path = d) -> None:
            doc = fetch_report(s)
            entry = archive_entry(doc)
            check_file(d / "archives" / TRAIN_ZIP, size)
            s.extra["engine_s"] = entry["seconds"]
            s.extra["etag_check"] = entry["etag_check"]
            s.extra["bytes"] = doc["bytes_transferred"]
            rmtree(d)

        tools.append(Tool(
            f"isic2020 -c{c}", lambda rep, d=d, c=c: isic(
                "fetch", "--split", "train", "--format", "jpeg", "--no-extract", "--json",
                "--quiet", "--connections", str(c), "--mirror", url_base, "--data-dir", str(d)),
            is_isic=True, env=isic_env(manifest, b.p.chunk_size), before=fresh(d), after=after,
            work_bytes=size,
        ))
    if shutil.which("aria2c"):
        for c in aria_conns:
            for checksum in ([False, True] if aria_checksum else [False]):
                d = out / f"aria-x{c}{'-sha' if checksum else ''}"
                argv = ["aria2c", f"-x{c}", f"-s{c}", "--file-allocation=falloc",
                        "--allow-overwrite=true", "--auto-file-renaming=false",
                        "--console-log-level=error", "--summary-interval=0",
                        "--download-result=hide", "-q", "-d", str(d), "-o", TRAIN_ZIP]
                if checksum:
                    argv.append(f"--checksum=sha-256={sha}")
                argv.append(url)

                def after_a(rep: int, s: Sample, d: Path = d) -> None:
                    check_file(d / TRAIN_ZIP, size)
                    rmtree(d)

                label = f"aria2c -x{c} -s{c}" + (" --checksum=sha-256" if checksum else "")
                tools.append(Tool(label, lambda rep, argv=argv: argv, before=fresh(d),
                                  after=after_a, work_bytes=size))
    if curl and shutil.which("curl"):
        for with_sync in ([False, True] if curl_sync else [False]):
            d = out / ("curl-sync" if with_sync else "curl")

            def after_c(rep: int, s: Sample, d: Path = d) -> None:
                check_file(d / TRAIN_ZIP, size)
                rmtree(d)

            argv = ["curl", "-sS", "--fail", "-o", str(d / TRAIN_ZIP), url]
            if with_sync:  # isic2020 fsyncs before the rename: the same durability
                argv = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + " && sync"]
            tools.append(Tool("curl && sync" if with_sync else "curl", lambda rep, a=argv: a,
                              before=fresh(d), after=after_c, work_bytes=size))
    return tools


def find(tools: list[Tool], label: str) -> Tool | None:
    for t in tools:
        if t.label == label and t.samples:
            return t
    return None


def row_throttled(b: Bench) -> None:
    from support.servers import NginxServer

    name = f"1 throttled download {_human(b.p.archive_bytes)}, {b.p.rate / MiB:.0f} MiB/s per conn"
    if b.nginx is None:
        b.skipped.append("row 1: nginx missing")
        return
    mirror, manifest = build_download_mirror(b.work, b.p.archive_bytes)
    with NginxServer(mirror, PREFIX, limit_rate=b.p.rate) as srv:
        conns = b.p.connections
        aria = [c for c in (8, 16) if c in conns or c == 16] if not b.p.quick else [8]
        tools = download_tools(b, srv.url, mirror, manifest, b.p.archive_bytes, "throttled",
                               conns, aria)
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 1", tools)
    curl = find(tools, "curl")
    ideal = b.p.archive_bytes / b.p.rate
    for t in tools:
        r, tgt = "", ""
        if t.label.startswith("isic2020"):
            c = int(t.label.split("-c")[1])
            peer = find(tools, f"aria2c -x{c} -s{c}")
            if peer is not None:
                rr = ratio(t, peer)
                r = fmt_ratio(rr, peer.label)
                tgt = verdict(rr is not None and rr <= 1.05, "<= 1.05x aria2c")
            elif c == 1 and curl is not None:
                r = fmt_ratio(ratio(t, curl), "curl")
            tgt = tgt or ""
            eng = t.med_extra("engine_s")
            notes = (f"archive alone {eng:.2f} s in-engine; ideal {ideal / c:.2f} s"
                     if eng is not None else "")
        else:
            n = 1 if t.label == "curl" else int(t.label.split("-x")[1].split()[0])
            notes = f"ideal {ideal / n:.2f} s"
        b.add(name, t, r, tgt, notes)


def row_unthrottled(b: Bench) -> None:
    from support.servers import FaultServer, NginxServer

    size = b.p.archive_bytes
    name = f"2 unthrottled download {_human(size)} (nginx, sha256 pinned)"
    if b.nginx is None:
        b.skipped.append("row 2 (nginx part): nginx missing")
    mirror, manifest = build_download_mirror(b.work, size)
    small = max(size // 10, MiB)
    s_mirror, s_manifest = build_download_mirror(b.work, small)
    if b.nginx is not None:
        with NginxServer(mirror, PREFIX) as srv, NginxServer(s_mirror, PREFIX) as srv_small:
            tools = download_tools(b, srv.url, mirror, manifest, size, "nginx",
                                   (8, 16) if not b.p.quick else (8,),
                                   (8, 16) if not b.p.quick else (8,), aria_checksum=True,
                                   curl_sync=True)
            small_t = download_tools(b, srv_small.url, s_mirror, s_manifest, small,
                                     "nginx-small", (8,), (), curl=False)[0]
            small_t.label = f"isic2020 -c8 ({_human(small)} archive)"
            tools.append(small_t)
            b.log(f"{name}: {', '.join(t.label for t in tools)}")
            tools = b.run_tools("row 2", tools)
        curl = find(tools, "curl")
        for t in tools:
            r = tgt = notes = ""
            mbps = size / t.med("wall") / MB if t.samples else 0
            if t is small_t:
                notes = "same download at 1/10 of the size: RSS must not grow with size"
                b.add(name, t, "", "", notes)
                continue
            if t.label.startswith("isic2020"):
                rr = ratio(t, curl)
                r = fmt_ratio(rr, "curl")
                tgt = verdict(None if rr is None else rr <= 2.0, ">= 50% of curl's throughput")
                c = t.label.split("-c")[1]
                a = find(tools, f"aria2c -x{c} -s{c}")
                ra = ratio(t, a)
                if a is not None and ra is not None:
                    r += f"; {ra:.2f}x {a.label}"
                chk = t.samples[0].extra.get("etag_check", "?") if t.samples else "?"
                notes = f"{mbps:.0f} MB/s; checks: size + {chk}"
            else:
                notes = f"{mbps:.0f} MB/s" + ("; verifies sha256 after" if "checksum" in t.label
                                              else "; verifies nothing")
            b.add(name, t, r, tgt, notes)
        nginx_curl = find(tools, "curl")
    else:
        nginx_curl = None

    # The same with an S3-like MD5 ETag: FaultServer (pure Python, in this process).
    name2 = f"2b unthrottled download {_human(size)} (FaultServer, MD5 ETag + sha256)"
    with FaultServer(mirror, PREFIX, etag="md5") as fsrv:
        fsrv.etag_for(TRAIN_ZIP)  # hash once before timing (the server caches it)
        tools = download_tools(b, fsrv.url, mirror, manifest, size, "fault",
                               (8,), (8,) if not b.p.quick else ())
        b.log(f"{name2}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 2b", tools)
    curl = find(tools, "curl")
    for t in tools:
        r = tgt = notes = ""
        mbps = size / t.med("wall") / MB if t.samples else 0
        if t.label.startswith("isic2020"):
            rr = ratio(t, curl)
            r = fmt_ratio(rr, "curl")
            tgt = verdict(None if rr is None else rr <= 2.0, ">= 50% of curl's throughput")
            chk = t.samples[0].extra.get("etag_check", "?") if t.samples else "?"
            notes = f"{mbps:.0f} MB/s; checks: size + sha256 + ETag {chk}"
        else:
            notes = f"{mbps:.0f} MB/s"
            ref = nginx_curl if t.label == "curl" else None
            if ref is not None and t.samples:
                notes += (f" (from nginx: {size / ref.med('wall') / MB:.0f} MB/s: the Python "
                          f"server {'is' if t.med('wall') > 1.2 * ref.med('wall') else 'is not'}"
                          " the bottleneck)")
        b.add(name2, t, r, tgt, notes)


# --------------------------------------------------------------------------------------------
# Row 3: extraction


def count_files(d: Path) -> int:
    n = 0
    for _root, _dirs, files in os.walk(d):
        n += len(files)
    return n


def row_extract(b: Bench, ds: Dataset) -> None:
    name = f"3 extract {ds.n_train:,} members ({_human(ds.train_bytes)}, deflated)"
    out = b.work / "run" / "extract"
    zip_path = ds.train_zip
    n_members = ds.n_train
    tools: list[Tool] = []

    def fresh(d: Path) -> Callable[[int], None]:
        def f(rep: int) -> None:
            rmtree(d)
            d.mkdir(parents=True)
            sync()
        return f

    def check(d: Path, want: int) -> Callable[[int, Sample], None]:
        def f(rep: int, s: Sample) -> None:
            n = count_files(d)
            if n < want:
                raise RuntimeError(f"{n} files extracted, expected {want}")
            rmtree(d)
        return f

    d_isic = out / "isic"

    def before_isic(rep: int) -> None:
        rmtree(d_isic)
        (d_isic / "archives").mkdir(parents=True)
        os.link(zip_path, d_isic / "archives" / TRAIN_ZIP)  # same file, no copy
        sync()

    def after_isic(rep: int, s: Sample) -> None:
        doc = json.loads(s.stdout)
        a = doc["archives"][0]
        if a["images"] != n_members or a["written"] != n_members:
            raise RuntimeError(f"extract wrote {a['written']} of {a['images']} images")
        s.extra["engine_s"] = a["seconds"]
        n = count_files(d_isic / "jpeg" / "train")
        if n != n_members:
            raise RuntimeError(f"{n} images on disk, expected {n_members}")
        rmtree(d_isic)

    tools.append(Tool(
        "isic2020 extract", lambda rep: isic("extract", "--split", "train", "--format", "jpeg",
                                             "--json", "--quiet", "--data-dir", str(d_isic)),
        is_isic=True, env=isic_env(ds.manifest), before=before_isic, after=after_isic,
        work_bytes=ds.train_bytes,
    ))
    if shutil.which("unzip"):
        d = out / "unzip"
        tools.append(Tool("unzip -q", lambda rep, d=d: ["unzip", "-q", str(zip_path), "-d",
                                                        str(d)],
                          before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
        d2 = out / "unzip-sync"
        tools.append(Tool("unzip -q && sync", lambda rep, d=d2: [
            "sh", "-c", f'unzip -q "{zip_path}" -d "{d}" && sync'],
            before=fresh(d2), after=check(d2, n_members), work_bytes=ds.train_bytes))
    if shutil.which("7z"):
        d = out / "7z"
        tools.append(Tool("7z x", lambda rep, d=d: ["7z", "x", "-y", "-bd", "-bso0", "-bsp0",
                                                    f"-o{d}", str(zip_path)],
                          before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
    d = out / "python"
    tools.append(Tool(
        "python zipfile.extractall",
        lambda rep, d=d: [sys.executable, "-c", EXTRACTALL, str(zip_path), str(d)],
        before=fresh(d), after=check(d, n_members), work_bytes=ds.train_bytes))
    b.log(f"{name}: {', '.join(t.label for t in tools)}")
    tools = b.run_tools("row 3", tools)
    isic_t = tools[0]
    seven, unz = find(tools, "7z x"), find(tools, "unzip -q")
    for t in tools:
        r = tgt = notes = ""
        rate = n_members / t.med("wall") if t.samples else 0
        if t is isic_t:
            r7, ru = ratio(t, seven), ratio(t, unz)
            parts = [fmt_ratio(r7, "7z"), fmt_ratio(ru, "unzip")]
            r = "; ".join(p for p in parts if p)
            ok7 = None if r7 is None else r7 <= 1.0
            oku = None if ru is None else ru <= 0.7
            tgt = "; ".join([verdict(ok7, "<= 1.0x 7z"), verdict(oku, "<= 0.7x unzip")])
            eng = t.med_extra("engine_s")
            notes = f"{rate:,.0f} files/s; CRC-32 checked, flat layout, os.sync()" + (
                f"; {eng:.2f} s in-engine" if eng is not None else "")
        else:
            notes = f"{rate:,.0f} files/s; CRC-32 checked"
        b.add(name, t, r, tgt, notes)


# --------------------------------------------------------------------------------------------
# Rows 4 and 5: verify, and the re-run of a complete fetch


def row_verify_and_rerun(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    data = b.work / "run" / "complete"
    n_images = ds.n_train + ds.n_test
    env = isic_env(ds.manifest)
    srv = NginxServer(ds.mirror, PREFIX) if b.nginx is not None else None
    if srv is not None:
        srv.start()
    try:
        base = srv.url if srv is not None else ds.mirror.resolve().as_uri() + "/"
        rmtree(data)
        b.log("rows 4/5: a complete fetch of the whole synthetic dataset (setup, timed once)")
        sync()
        s = run_child(isic("fetch", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                           "--mirror", base, "--data-dir", str(data)), env=env)
        if s.rc != 0:
            b.isic_failures.append(f"complete fetch: exit {s.rc}: {s.stderr.strip()[-400:]}")
            return
        doc = fetch_report(s)
        total = sum(f.get("size", 0) for f in doc["files"])
        setup = Tool("isic2020 fetch (first, complete)", lambda rep: [], is_isic=True,
                     work_bytes=total)
        setup.samples.append(s)
        b.add("5a complete fetch, all JPEG (first run, once)", setup, "", "",
              f"{_human(doc['bytes_transferred'])} transferred; download + extract + verify of "
              f"{n_images:,} images")

        # Row 4: verify
        name = f"4 verify {ds.n_train:,} + {ds.n_test:,} images"
        tools = []
        for deep in (False, True):
            argv = isic("verify", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                        "--data-dir", str(data)) + (["--deep"] if deep else [])

            def after_v(rep: int, s: Sample) -> None:
                doc = json.loads(s.stdout)
                if doc.get("exit_code", 1) != 0 and not doc.get("ok", True):
                    raise RuntimeError("verify failed")
                secs = 0.0
                for c in doc.get("checks", []):
                    figs = c.get("figures") or {}
                    if c.get("name", "").endswith("/integrity"):
                        secs += float(figs.get("seconds", 0))
                s.extra["integrity_s"] = secs

            tools.append(Tool("isic2020 verify" + (" --deep" if deep else ""),
                              lambda rep, argv=argv: argv, is_isic=True, env=env,
                              after=after_v, items=n_images))
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 4", tools)
        for t in tools:
            if not t.samples:
                b.add(name, t)
                continue
            rate = n_images / t.med("wall")
            tgt = ""
            notes = f"{rate:,.0f} images/s (whole command, {os.cpu_count()} CPUs)"
            if "--deep" not in t.label:
                tgt = verdict(rate >= 20000, ">= 20,000 images/s")
                ins = t.med_extra("integrity_s")
                if ins:
                    notes += f"; integrity check alone {n_images / ins:,.0f} images/s"
            else:
                notes += "; decodes every JPEG, re-hashes archives"
            b.add(name, t, "", tgt, notes)

        # Row 5: re-runs
        name = "5b re-run of a complete fetch"
        rerun_tools = []
        for label, extra in (("isic2020 fetch (re-run, all, extract+verify)", []),
                             ("isic2020 fetch --no-extract (re-run, train)",
                              ["--no-extract", "--split", "train"])):
            argv = isic("fetch", "--split", "all", "--format", "jpeg", "--json", "--quiet",
                        "--mirror", base, "--data-dir", str(data), *extra)
            if extra:
                argv = isic("fetch", "--format", "jpeg", "--json", "--quiet", "--mirror", base,
                            "--data-dir", str(data), *extra)
            box: dict[str, Any] = {}

            def before_r(rep: int, box: dict[str, Any] = box) -> None:
                if srv is not None:
                    es = srv.log_entries()
                    box["n"], box["bytes"] = len(es), sum(e.body_bytes_sent for e in es)

            def after_r(rep: int, s: Sample, box: dict[str, Any] = box) -> None:
                doc = fetch_report(s)
                s.extra["reported"] = doc["bytes_transferred"]
                if srv is not None:
                    time.sleep(0.05)
                    es = srv.log_entries()
                    s.extra["requests"] = len(es) - box["n"]
                    s.extra["sent"] = sum(e.body_bytes_sent for e in es) - box["bytes"]

            rerun_tools.append(Tool(label, lambda rep, argv=argv: argv, is_isic=True, env=env,
                                    before=before_r, after=after_r))
        b.log(f"{name}: {', '.join(t.label for t in rerun_tools)}")
        rerun_tools = b.run_tools("row 5", rerun_tools)
        for t in rerun_tools:
            if not t.samples:
                b.add(name, t)
                continue
            sent = max(s.extra.get("sent", 0) for s in t.samples)
            reqs = max(s.extra.get("requests", 0) for s in t.samples)
            rep_bytes = max(s.extra.get("reported", 0) for s in t.samples)
            ok = t.med("wall") < 1.0 and sent == 0 and rep_bytes == 0
            b.add(name, t, "", verdict(ok, "< 1 s, 0 bytes"),
                  f"server sent {sent} bytes in {reqs} requests; report says {rep_bytes} bytes")
    finally:
        if srv is not None:
            srv.close()


# --------------------------------------------------------------------------------------------
# Rows 7 and 8: subsets and --direct (byte ranges of the remote zip), bytes served, peak disk


def zip_layout(path: Path) -> tuple[dict[str, zipfile.ZipInfo], int]:
    """The zip's members by name, and its central directory's size in bytes (46 fixed bytes,
    name, extra field and comment per entry: exactly what a reader of the directory fetches)."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    cd = 0
    for zi in infos:
        enc = "utf-8" if zi.flag_bits & 0x800 else "cp437"
        cd += 46 + len(zi.orig_filename.encode(enc)) + len(zi.extra) + len(zi.comment)
    return {zi.filename: zi for zi in infos}, cd


class Served:
    """Bytes and requests nginx logged for one run (its access log: server-side counting)."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.n0 = 0

    def mark(self) -> None:
        self.n0 = len(self.srv.log_entries())

    def since(self, want: int | None = None) -> tuple[int, int, int]:
        """(body bytes of every request, of the train zip's, requests) since ``mark``. nginx
        logs a request when its response ends, a moment after the client is done: wait (2 s
        at most) until the total reaches ``want``, the client's own count."""
        zip_path = self.srv.url_path(TRAIN_ZIP)
        deadline = time.monotonic() + 2.0
        while True:
            es = self.srv.log_entries()[self.n0:]
            total = sum(e.body_bytes_sent for e in es)
            if want is None or total >= want or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        zbytes = sum(e.body_bytes_sent for e in es if e.path == zip_path)
        return total, zbytes, len(es)


def _fresh(d: Path) -> Callable[[int], None]:
    def f(rep: int) -> None:
        rmtree(d)
        d.mkdir(parents=True)
    return f


def _fetch_check(d: Path, served: Served, *, images: int | None, archive: int | None,
                 extracted: bool, status: str) -> Callable[[int, Sample], None]:
    """A check of one ``isic2020 fetch --split train --json`` run into ``d``: the report's ok,
    the zip's status, images on disk (``images``; None: none expected), the archive kept
    (``archive`` bytes) or not (None), bytes reported == bytes nginx logged; then records
    served bytes, disk use at the end (walk) and the engine's figures; removes ``d``."""

    def f(rep: int, s: Sample) -> None:
        doc = fetch_report(s)
        entry = archive_entry(doc)
        if entry.get("status") != status and not (status == "downloaded"
                                                  and entry.get("status") == "verified"):
            raise RuntimeError(f"{TRAIN_ZIP}: status {entry.get('status')}, expected {status}")
        total, zbytes, reqs = served.since(doc["bytes_transferred"])
        if total != doc["bytes_transferred"]:
            raise RuntimeError(f"report says {doc['bytes_transferred']} bytes transferred, "
                               f"nginx sent {total}")
        img_dir = d / "jpeg" / "train"
        n = count_files(img_dir) if img_dir.exists() else 0
        if n != (images or 0):
            raise RuntimeError(f"{n} images on disk, expected {images or 0}")
        zpath = d / "archives" / TRAIN_ZIP
        if archive is None:
            if zpath.exists():
                raise RuntimeError(f"{zpath.name} is on disk, expected no archive")
        else:
            check_file(zpath, archive)
        ex = entry.get("extraction") or {}
        if extracted:
            done = ex.get("written", 0) + ex.get("skipped", 0) + ex.get("already_present", 0)
            if done != images:
                raise RuntimeError(f"the report says {done} images unpacked, expected {images}")
        s.extra.update(served=total, served_zip=zbytes, requests=reqs,
                       reported=doc["bytes_transferred"], disk_end=du_bytes(d),
                       engine_s=entry.get("seconds", 0.0), names=sorted(
                           p.stem for p in img_dir.iterdir()) if status == "subset" else [])
        if ex.get("seconds") is not None:
            s.extra["extract_s"] = float(ex["seconds"])
        stream = ex.get("while_downloading") or {}
        if stream.get("members"):
            s.extra["streamed"] = stream.get("unpacked", 0) + stream.get("already_staged", 0)
            s.extra["stream_tail_s"] = float(stream.get("after_download_s", 0.0))
        if "bytes_wanted" in ex:
            s.extra["engine_wanted"] = ex["bytes_wanted"]
            s.extra["directory_bytes"] = ex.get("directory_bytes", 0)
        rmtree(d)

    return f


def _fetch_tool(b: Bench, label: str, base: str, ds: Dataset, d: Path, served: Served,
                extra: Sequence[str], env: dict[str, str] | None = None, **check: Any) -> Tool:
    def before(rep: int) -> None:
        rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        served.mark()

    argv = isic("fetch", "--split", "train", "--format", "jpeg", "--json", "--quiet",
                "--mirror", base, "--data-dir", str(d), *extra)
    return Tool(label, lambda rep, argv=argv: argv, is_isic=True,
                env={**isic_env(ds.manifest, b.p.chunk_size), **(env or {})}, before=before,
                after=_fetch_check(d, served, **check), work_bytes=ds.train_zip.stat().st_size,
                disk=d)


def _disk_note(t: Tool) -> str:
    peak = t.med_extra("disk_peak")
    end = t.med_extra("disk_end")
    if peak is None:
        return ""
    return f"peak disk {peak / MB:,.0f} MB (at the end {end / MB:,.0f} MB)" if end is not None \
        else f"peak disk {peak / MB:,.0f} MB"


def row_subset(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    n = min(b.p.sample_n, ds.n_train)
    zip_size = ds.train_zip.stat().st_size
    name = (f"7 subset --sample {n} of {ds.n_train:,} vs full download ({_human(zip_size)} zip, "
            "nginx, unthrottled)")
    if b.nginx is None:
        b.skipped.append("row 7: nginx missing")
        return
    out = b.work / "run" / "subset"
    members, cd_bytes = zip_layout(ds.train_zip)
    folder = ARCHIVE_FOLDERS[("train", "jpeg")]
    with NginxServer(ds.mirror, PREFIX) as srv:
        served = Served(srv)
        sub = _fetch_tool(b, f"isic2020 --sample {n} --seed 1", srv.url, ds, out / "sample",
                          served, ["--sample", str(n), "--seed", "1"], images=n, archive=None,
                          extracted=True, status="subset")
        full = _fetch_tool(b, "isic2020 --no-extract (full download)", srv.url, ds,
                           out / "full", served, ["--no-extract"], images=None,
                           archive=zip_size, extracted=False, status="downloaded")
        tools = [sub, full]
        b.log(f"{name}: {', '.join(t.label for t in tools)}")
        tools = b.run_tools("row 7", tools)
    # The members the sample chose (the same every run: --seed) and their compressed bytes.
    wanted = 0
    if sub.samples:
        names = sub.samples[0].extra["names"]
        if any(s.extra["names"] != names for s in sub.samples):
            b.isic_failures.append("row 7: --sample chose different images in different runs")
        for nm in names:
            zi = members.get(f"{folder}/{nm}.jpg")
            if zi is None:
                b.isic_failures.append(f"row 7: {nm}.jpg is not a member of the zip")
                continue
            wanted += zi.compress_size
    sub.work_bytes = wanted + cd_bytes  # CPU s/GB of what a subset has to move
    for t in tools:
        r = tgt = ""
        if not t.samples:
            b.add(name, t)
            continue
        sent, zsent = t.med_extra("served") or 0, t.med_extra("served_zip") or 0
        reqs = t.med_extra("requests") or 0
        if t is sub:
            rr = ratio(t, full)
            r = fmt_ratio(rr, "full download")
            ideal = wanted + cd_bytes
            over = zsent / ideal if ideal else float("nan")
            tgt = verdict(over <= 1.1, "zip bytes served <= 1.1x members + central directory")
            notes = (f"zip bytes served {_human(int(zsent))} = {over:.3f}x the {n} members' "
                     f"{_human(wanted)} compressed + the {_human(cd_bytes)} central directory "
                     f"(engine: {_human(int(t.med_extra('engine_wanted') or 0))} wanted, "
                     f"{_human(int(t.med_extra('directory_bytes') or 0))} of directory and "
                     f"tail read); {reqs:.0f} requests, {_human(int(sent))} with the CSVs"
                     + (f" = {sent / full.med_extra('served'):.1%} of the full download's"
                        if full.samples else ""))
        else:
            notes = (f"served {_human(int(sent))} in {reqs:.0f} requests (zip "
                     f"{_human(int(zsent))})")
        dn = _disk_note(t)
        b.add(name, t, r, tgt, notes + (f"; {dn}" if dn else ""))


def row_direct(b: Bench, ds: Dataset) -> None:
    from support.servers import NginxServer

    rate = b.p.direct_rate
    zip_size = ds.train_zip.stat().st_size
    name = (f"8 --direct vs download + extract, {_human(zip_size)} zip of {ds.n_train:,} "
            f"images, {rate / MiB:g} MiB/s per conn, 16 conns")
    if b.nginx is None:
        b.skipped.append("row 8: nginx missing")
        return
    out = b.work / "run" / "direct"
    n = ds.n_train
    with NginxServer(ds.mirror, PREFIX, limit_rate=rate) as srv:
        served = Served(srv)
        alone = _fetch_tool(b, "isic2020 --no-extract (download alone)", srv.url, ds,
                            out / "alone", served, ["--no-extract"], images=None,
                            archive=zip_size, extracted=False, status="downloaded")
        both = _fetch_tool(b, "isic2020 (download + extract while downloading)", srv.url, ds,
                           out / "both", served, [], images=n, archive=zip_size,
                           extracted=True, status="downloaded")
        after = _fetch_tool(b, "isic2020 (download, then extract: ISIC2020_STREAM=0)", srv.url,
                            ds, out / "after", served, [], env={"ISIC2020_STREAM": "0"},
                            images=n, archive=zip_size, extracted=True, status="downloaded")
        direct = _fetch_tool(b, "isic2020 --direct", srv.url, ds, out / "direct", served,
                             ["--direct"], images=n, archive=None, extracted=True,
                             status="direct")
        nokeep = _fetch_tool(b, "isic2020 --no-keep-archives (1 run, for its disk)", srv.url,
                             ds, out / "nokeep", served, ["--no-keep-archives"], images=n,
                             archive=None, extracted=True, status="downloaded")
        tools = [alone, both, after, direct]
        b.log(f"{name}: {', '.join(t.label for t in tools)}; then {nokeep.label}")
        tools = b.run_tools("row 8", tools)
        b.run_tools("row 8", [nokeep], reps=1)
    ideal = zip_size / (16 * rate)
    for t in [*tools, nokeep]:
        r = tgt = ""
        if not t.samples:
            b.add(name, t)
            continue
        eng = t.med_extra("engine_s") or 0.0
        if t is direct:
            rr = ratio(t, alone)
            r = fmt_ratio(rr, "download alone")
            rb = ratio(t, both)
            if rb is not None:
                r += f"; {rb:.2f}x download + extract"
            tgt = verdict(None if rr is None else rr <= 1.1, "<= 1.1x the download alone")
            notes = f"{eng:.2f} s in-engine (directory + members)"
        elif t is alone:
            notes = f"archive {eng:.2f} s in-engine; ideal {ideal:.1f} s"
        else:
            ex = t.med_extra("extract_s")
            tail = t.med_extra("stream_tail_s")
            notes = f"archive {eng:.2f} s in-engine" + (
                f", then extraction {ex:.2f} s" if ex is not None else "")
            if tail is not None:
                notes += (f" ({t.med_extra('streamed'):,.0f} images unpacked while downloading, "
                          f"{tail:.2f} s of it after the last byte)")
            if t is both or t is after:
                rr = ratio(t, alone)
                r = fmt_ratio(rr, "download alone")
            if t is both:
                tgt = verdict(None if rr is None else rr <= 1.1, "<= 1.1x the download alone")
        dn = _disk_note(t)
        b.add(name, t, r, tgt, notes + (f"; {dn}" if dn else ""))


# --------------------------------------------------------------------------------------------
# Report


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
        "nginx": version([_nginx_binary() or "nginx", "-v"]),
    }


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


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
        f"isic2020 from: {ISIC_SRC}.",
        f"Reproduce: `{' '.join(['python', 'benchmarks/run.py', *argv])}` "
        f"(this run: {'--quick, ' if p.quick else ''}{p.reps} repetition(s), medians; "
        f"{seconds / 60:.1f} min in all; load average before/after: {b.load_before} / "
        f"{_load()}).",
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
        "RSS is the largest VmHWM of the child or any of its descendants (polled from /proc). "
        "Ratios are isic2020's median wall over the peer's, "
        "measured in the same run with the tools alternating. The served files stay in the page "
        "cache; `sync` runs before every timed run. Other work on the machine during the "
        "run (see the load average) adds noise to every row alike."
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny sizes, 1 repetition (CI)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--rows", default="1,2,3,4,5,7,8",
                    help="which workloads to run, e.g. 1,2 (6, peak RSS, is every row's column)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out",
                    help="data and scratch (cached between runs) [benchmarks/out]")
    ap.add_argument("--results", type=Path, default=None,
                    help="Markdown file to write [benchmarks/RESULTS.md; quick: WORKDIR/...]")
    ap.add_argument("--rate", type=float, default=None,
                    help="row 1 per-connection limit in MiB/s (default 8; quick 4)")
    ap.add_argument("--direct-rate", type=float, default=None,
                    help="row 8 per-connection limit in MiB/s (default 2; quick 8)")
    ap.add_argument("--src", type=Path, default=None,
                    help="run isic2020 from this folder (holding isic2020/) instead of src/, "
                         "to measure a patch against the same peers")
    args = ap.parse_args(argv)
    if args.src is not None:
        global ISIC_SRC
        ISIC_SRC = args.src.resolve()
        if not (ISIC_SRC / "isic2020" / "__init__.py").is_file():
            ap.error(f"--src {args.src}: no isic2020/__init__.py there")
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
    rows = {int(x) for x in args.rows.split(",") if x.strip()}
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(p, work)
    if b.missing:
        b.log("MISSING peers, their rows are skipped: " + ", ".join(
            f"{t} (apt-get install {PEERS[t]})" for t in b.missing))
    if b.nginx is None:
        b.log("MISSING nginx (apt-get install nginx): download rows need it")
    t0 = time.monotonic()
    try:
        if 1 in rows:
            row_throttled(b)
        if 2 in rows:
            row_unthrottled(b)
        if rows & {3, 4, 5, 7, 8}:
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
    finally:
        rmtree(work / "run")
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
