"""Running one child and measuring it: wall time, CPU from wait4, peak RSS and disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import MB, MiB


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


#: The parent every measured child is forked from: a fresh interpreter of a few MB, so the
#: child's ``ru_maxrss`` is its own (see :func:`run_child`). It reports the child's wall time,
#: CPU and peak RSS from ``wait4`` (its own start-up is in none of them) and exits with the
#: child's status.
_PARENT = """\
import json, os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(report, "w") as fh:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_child(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900.0,
              cwd: Path | None = None, poll: Callable[[], None] | None = None) -> Sample:
    """Run ``argv``: wall time; CPU (user+sys) of the child and its children from ``wait4``;
    peak RSS, the larger of ``wait4``'s ``ru_maxrss`` (exact, however short the peak) and
    the VmHWM of the child and its descendants polled from /proc (kept as a cross-check);
    ``poll`` (cheap: it runs every 2-20 ms) is called beside the RSS polling.

    The child is forked from a small Python parent (:data:`_PARENT`), not from this script:
    on Linux a child's ``ru_maxrss`` starts from the RSS of the process that forked it (exec
    keeps the old address space's high-water mark), i.e. this script's ~100 MB, while the
    small parent holds a few MB (tests/support/rss.py measures the tests' commands alike).
    """
    with tempfile.TemporaryDirectory(prefix="isic2020-bench-") as tmp, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        report = Path(tmp) / "rusage.json"
        steal0 = steal_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", _PARENT, str(report), *argv], stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True,
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
                for p in _descendants(proc.pid):  # not the small parent itself
                    kb = _hwm_kb(p)
                    if kb > peaks.get(p, 0):
                        peaks[p] = kb
                if poll is not None:
                    poll()
                if time.perf_counter() > deadline:
                    _kill_group(proc.pid)
                    pid, status, ru = os.wait4(proc.pid, 0)
                    reaped = True
                    break
                # VmHWM only grows: poll often at first (short runs), then gently (2 CPUs).
                time.sleep(0.002 if time.perf_counter() - t0 < 0.2 else 0.02)
        finally:
            if not reaped:  # interrupted: leave no child behind
                _kill_group(proc.pid)
                proc.wait()
        wall = time.perf_counter() - t0
        steal1 = steal_seconds()
        cpu = ru.ru_utime + ru.ru_stime
        maxrss_kb = 0
        try:  # the child's own figures; absent if the parent was killed (timeout)
            doc = json.loads(report.read_text())
            wall, cpu, maxrss_kb = doc["wall"], doc["cpu"], int(doc["maxrss_kb"])
        except (OSError, ValueError, KeyError):
            pass
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc  # reaped by wait4: tell Popen so it does not try again
        out.seek(0)
        err.seek(0)
        polled_kb = max(peaks.values(), default=0)
        return Sample(
            wall=wall,
            cpu=cpu,
            rss_mb=max(polled_kb, maxrss_kb) / 1024.0,
            rc=rc,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            extra={"rss_sum_mb": sum(peaks.values()) / 1024.0,  # every process' peak, summed
                   "rss_polled_mb": polled_kb / 1024.0, "rss_wait4_mb": maxrss_kb / 1024.0,
                   **({} if steal0 is None or steal1 is None
                      else {"steal_s": steal1 - steal0})},
        )


def _kill_group(pid: int) -> None:
    """SIGKILL the small parent and everything it started (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def sync() -> None:
    """Flush dirty pages outside the timed region, so no run pays for its predecessor; then
    drop the scratch image's own cached pages (see :func:`mount_scratch`)."""
    os.sync()
    if len(_SCRATCH) > 1 and not _SCRATCH[1].is_relative_to("/dev/shm"):
        with contextlib.suppress(OSError), open(_SCRATCH[1], "rb") as fh:
            os.fdatasync(fh.fileno())  # what the loop device wrote while os.sync ran
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def mount_scratch(run: Path, size: int, *, ram: bool = False) -> str | None:
    """Mount a fresh ext4 filesystem with a journal (a sparse image file beside ``run``) at
    ``run``, for the outputs of timed runs; what the report says about it, or None when it
    cannot be done (not root, no ``mkfs.ext4``, no loop device): then the outputs stay on the
    work folder's own filesystem and :func:`rmtree` uses the trash instead.

    Why: a user's disk is typically ext4 or XFS with a journal. This machine's root ext4 has
    none, and there the inode allocator's ``recently_deleted`` scan made creating the 33,126
    files of one run after deleting the previous run's cost 2-22 s of system time at random.
    On a journaled ext4 it is 2.4 s every time, whatever was deleted before. Every tool of a
    row writes to the same filesystem, so the ratios stay fair.

    ``ram``: the image lives in ``/dev/shm`` and is mounted with ``discard`` (a deleted output
    gives its memory back): the same ext4, journal and fsync, on a device that writes at memory
    speed, as an NVMe disk writes faster than loopback delivers. It shows what a row costs where
    the disk is not the bound; the default image on the work folder's disk shows that disk.

    The loop device caches what it writes a second time, as the image file's pages; left
    there, each run would draw as much again from memory the VM had not touched (or had
    handed back, see ``vmmemory``), and which tool's writes paid for that first touch changed
    a 400 MB download's system time by up to 0.3 s at random. :func:`sync`, before every
    timed run, writes them out and drops them, so each run writes into the memory the last
    one freed, as on a real disk (whose writes add no page cache)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        return None
    unmount_scratch(run)
    image = (Path("/dev/shm") / f"isic2020-bench-{os.getpid()}.ext4" if ram
             else run.with_name(run.name + ".ext4"))
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    try:
        with open(image, "wb") as fh:
            fh.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run(["mount", "-o", "loop,discard" if ram else "loop", str(image), str(run)],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        with contextlib.suppress(OSError):
            image.unlink()
        return None
    _SCRATCH[:] = [run, image]
    where = " in RAM (/dev/shm, discard)" if ram else ""
    return (f"outputs on a fresh {size / 1024**3:.0f} GiB ext4 loop filesystem with a journal"
            f"{where} (see bench/harness.py mount_scratch)")


def unmount_scratch(run: Path) -> None:
    """Unmount the scratch filesystem at ``run`` (if one is mounted) and delete its image."""
    if os.path.ismount(run):
        subprocess.run(["umount", str(run)], check=False, capture_output=True, timeout=120)
    images = [run.with_name(run.name + ".ext4")] + _SCRATCH[1:]
    for image in images:
        with contextlib.suppress(OSError):
            image.unlink()
    _SCRATCH[:] = []


#: The scratch filesystem's mount point and image while one is mounted (:func:`mount_scratch`).
_SCRATCH: list[Path] = []


#: Where :func:`rmtree` moves what a run no longer needs (set by :func:`use_trash`).
_TRASH: list[Path] = []
_TRASHED = [0]
#: Below this much free space the trash is emptied at once (and the log says so).
TRASH_FLOOR = 6 * 1024**3


def use_trash(folder: Path) -> None:
    """Move the outputs of timed runs here instead of deleting them, and empty it (what an
    earlier run left there included) only outside the timed rows: see :func:`rmtree`."""
    empty_trash(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _TRASH[:] = [folder]


def empty_trash(folder: Path | None = None) -> None:
    folder = folder or (_TRASH[0] if _TRASH else None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        if _TRASH:
            folder.mkdir(parents=True, exist_ok=True)


def rmtree(p: Path) -> None:
    """Take ``p`` out of the way of the next run: renamed into the trash, deleted later.

    Why not delete it now: on ext4 without a journal (this machine's root filesystem) the inode
    allocator skips inodes freed in the last 60-360 s (``recently_deleted``), one inode-table
    lookup each, so creating 33,126 files right after deleting the previous run's 33,126 took
    7-22 s of system time instead of 2 s, for every tool alike, and at random. A rename frees
    nothing; the trash is emptied at the end of the run, or early (logged) when the disk runs
    low."""
    if not os.path.lexists(p):
        return
    if _SCRATCH and p.is_relative_to(_SCRATCH[0]):
        shutil.rmtree(p, ignore_errors=True)  # a journaled ext4: no penalty (see above)
        return
    if _TRASH:
        if shutil.disk_usage(_TRASH[0]).free < TRASH_FLOOR:
            print(f"bench: disk low: emptying {_TRASH[0]} mid-run (file creation may be "
                  "slower for a few minutes)", file=sys.stderr)
            empty_trash()
        _TRASHED[0] += 1
        with contextlib.suppress(OSError):
            os.rename(p, _TRASH[0] / f"{_TRASHED[0]}-{p.name}")
            return
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

def steal_seconds() -> float | None:
    """CPU time the hypervisor has given other guests so far (``steal`` of /proc/stat, all
    CPUs), or None where it is not counted. Steal during a timed run is CPU the run waited
    for: on a shared host it, more than the load average, says whether two runs compare."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"

def count_files(d: Path) -> int:
    n = 0
    for _root, _dirs, files in os.walk(d):
        n += len(files)
    return n
