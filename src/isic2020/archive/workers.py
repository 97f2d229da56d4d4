"""Write the members of a landed archive: in this process, or in forked worker processes.

Why processes: per 20 KB member the work is mostly short C calls (open, one inflate, one
CRC-32, one write loop, rename) between which Python holds the GIL, so threads would share one
core. Forked workers (``DEFAULT_WORKERS``, never more than the CPUs) inherit the parsed central
directory (no second parse, no pickling), take contiguous runs of members in archive order
from the parent (``CHUNKS_PER_WORKER`` per worker, on demand, so a worker slowed down by the
machine takes fewer) and report progress and errors (one line each) through pipes.

Invariants: on SIGTERM/SIGINT, an error in another worker, or the death of the parent
(``PR_SET_PDEATHSIG``) a worker removes its temporary file and exits; the parent stops and
reaps every worker before it raises, so no process outlives the command. A worker's error
reaches the parent as the same :class:`~isic2020.errors.Isic2020Error` (kind, message, hint).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from isic2020.archive.decode import (
    BUFFER,
    O_CLOEXEC,
    Damaged,
    MemberFile,
    Stopped,
    extract_member,
    request_stop,
    stop_requested,
    write_all,
)
from isic2020.archive.rules import Member, damaged_member
from isic2020.archive.zipformat import DEFLATED, STORED
from isic2020.errors import DiskError, Isic2020Error
from isic2020.report import count_images
from isic2020.store.forking import (
    STOP_SIGNALS,
    STOPPED,
    error_report,
    fork_child,
    reported_error,
)
from isic2020.store.libc import libc

if TYPE_CHECKING:
    import zipfile

DEFAULT_WORKERS = 2
MIN_MEMBERS_PER_WORKER = 8  # fewer members than this per worker: one process does it all
CHUNKS_PER_WORKER = 16  # work is handed out in this many runs per worker
PER_FILE_COST = 32768  # a file's open/rename costs about as much as writing this many bytes
#: What to do about a damaged member of an archive on disk.
DAMAGED_HINT = "delete DATA/archives/{archive} and run `isic2020 fetch` again"


class Source:
    """One process's read handle on the archive: a raw fd for ``pread``, and a ``ZipFile``
    made only if a member needs zipfile's own decompressors (bzip2, lzma: never for the
    official zips; zipfile's are the best tool for those rare methods)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
        self._zf: zipfile.ZipFile | None = None
        self._infos: dict[int, zipfile.ZipInfo] = {}

    def read_at(self, at: int, n: int) -> bytes:
        return os.pread(self.fd, n, at)

    def zip_info(self, header_offset: int) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
        import zipfile  # (imported for those rare methods only)

        if self._zf is None:
            self._zf = zipfile.ZipFile(self.path)
            self._infos = {i.header_offset: i for i in self._zf.infolist()}
        info = self._infos.get(header_offset)
        if info is None:
            raise Damaged("zipfile does not see this member")
        return self._zf, info

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
        os.close(self.fd)


def write_member(src: Source, m: Member, d: str, mode: int, archive: str) -> int:
    """Write one member to ``d/NAME``, checked (see :mod:`isic2020.archive.decode`)."""
    e = m.entry
    try:
        if e.method in (STORED, DEFLATED):
            return extract_member(src.read_at, e, d, m.final, mode)
        return _write_other(src, m, d, mode)
    except Damaged as exc:
        raise damaged_member(archive, e.name, str(exc), DAMAGED_HINT) from None


def _write_other(src: Source, m: Member, d: str, mode: int) -> int:
    """Other compression methods: zipfile inflates and checks the CRC-32 when the stream is
    read to its end, which this loop always does; never more than the declared size."""
    import zipfile

    e = m.entry
    f = MemberFile(d, m.final, mode)
    written = 0
    try:
        zf, info = src.zip_info(e.header_offset)
        with zf.open(info) as member:
            while True:
                if stop_requested():
                    raise Stopped()
                try:
                    block = member.read(BUFFER)
                except Exception as exc:  # noqa: BLE001 - bz2 raises OSError, lzma LZMAError
                    raise Damaged(f"{type(exc).__name__}: {exc}") from None
                if not block:
                    break
                written += len(block)
                if written > e.file_size:
                    raise Damaged("it inflates to more than its declared size")
                f.write(block)
        if written != e.file_size:
            raise Damaged(f"it inflates to {written} bytes, not {e.file_size}")
        f.commit()
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        f.discard()
        raise Damaged(f"{type(exc).__name__}: {exc}") from None
    except BaseException:
        f.discard()
        raise
    return written


def write_run(src: Source, members: list[Member], d: str, mode: int, archive: str) -> int:
    total = 0
    for m in members:
        if stop_requested():
            raise Stopped()
        total += write_member(src, m, d, mode, archive)
    return total


def chunks_of(members: list[Member], n_workers: int) -> list[tuple[int, int]]:
    """Contiguous index ranges of ``members`` (in archive order) of about equal work, several
    per worker so that a worker slowed down by the machine simply takes fewer of them."""
    n = min(len(members), n_workers * CHUNKS_PER_WORKER)
    weights = [m.entry.file_size + PER_FILE_COST for m in members]
    total = sum(weights)
    out: list[tuple[int, int]] = []
    lo = acc = 0
    for i, w in enumerate(weights):
        acc += w
        if acc * n >= total * (len(out) + 1) and i + 1 > lo:
            out.append((lo, i + 1))
            lo = i + 1
    if lo < len(members):
        out.append((lo, len(members)))
    return out


def _on_stop_signal(signum: int, frame: Any) -> None:
    request_stop()


def _child(
    path: str,
    members: list[Member],
    chunks: list[tuple[int, int]],
    d: str,
    mode: int,
    archive: str,
    cmd_r: int,
    msg_w: int,
    parent: int,
    lib: Any,
) -> int:
    """A forked worker: take chunk numbers from ``cmd_r`` (EOF = stop), write them, report each
    on ``msg_w`` (``c COUNT``), then ``d BYTES``; an error is one ``e JSON`` line. Returns the
    exit status (the caller ``os._exit``s with it: no atexit handler, no stdio flush)."""
    request_stop(False)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)  # the parent decides; it sends SIGTERM
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked across the fork
    if lib is not None:
        with contextlib.suppress(Exception):
            lib.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: orphans stop too
    if os.getppid() != parent:
        return 2
    src = Source(path)
    total = 0
    pending = b""
    try:
        while True:
            while b"\n" not in pending:
                block = os.read(cmd_r, 64)
                if not block:  # the parent closed the pipe: stop
                    return 2
                pending += block
            line, pending = pending.split(b"\n", 1)
            k = int(line)
            if k < 0:
                write_all(msg_w, f"d {total}\n".encode())
                return 0
            lo, hi = chunks[k]
            total += write_run(src, members[lo:hi], d, mode, archive)
            write_all(msg_w, f"c {hi - lo}\n".encode())
    except Stopped:
        return 2
    except Isic2020Error as exc:
        with contextlib.suppress(OSError):
            write_all(msg_w, b"e " + error_report(type(exc).__name__, exc.message, exc.hint)
                      + b"\n")
        return 1
    except OSError as exc:  # the pipe to the parent (it is gone)
        if stop_requested() or exc.errno == errno.EPIPE:
            return STOPPED
        raise
    finally:
        src.close()


@dataclass
class _Worker:
    pid: int
    cmd: int  # write end of its command pipe (-1 once closed)
    msg: int  # read end of its message pipe
    pending: bytes = b""
    finished: bool = False  # sent ``d``
    status: int | None = None  # from waitpid


def run_processes(
    path: str,
    members: list[Member],
    d: str,
    mode: int,
    archive: str,
    n_workers: int,
    bar: Any,
    started: Callable[[], None] = lambda: None,
) -> int:
    """Write ``members`` with ``n_workers`` forked processes; returns the bytes written.

    The parent hands out chunks on demand and collects progress and errors; on an error,
    Ctrl-C or SIGTERM it stops every worker (SIGTERM: each removes its current temporary
    file, or finishes that member, and exits) and waits for them all, so no worker outlives
    the command.
    """
    job = _Processes(_Job(path, members, chunks_of(members, n_workers), d, mode, archive), bar)
    try:
        for _ in range(min(n_workers, len(job.job.chunks))):
            job.spawn()
        started()
        job.collect()
    except BaseException:
        job.stop_all()
        raise
    finally:
        job.reap()
    if job.error is not None:
        raise job.error
    return job.total


@dataclass
class _Job:
    """What every worker inherits (by ``fork``: no pickling, no second parse)."""

    path: str
    members: list[Member]
    chunks: list[tuple[int, int]]
    d: str
    mode: int
    archive: str


class _Processes:
    """The parent's side of :func:`run_processes`: the workers, their pipes, the first error."""

    def __init__(self, job: _Job, bar: Any) -> None:
        self.job = job
        self.bar = bar
        self.lib = libc()
        self.parent = os.getpid()
        self.workers: list[_Worker] = []
        self.next_chunk = 0
        self.total = 0
        self.error: BaseException | None = None

    def spawn(self) -> None:
        cmd_r, cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        j = self.job

        def worker() -> int:
            try:
                return _child(j.path, j.members, j.chunks, j.d, j.mode, j.archive, cmd_r,
                              msg_w, self.parent, self.lib)
            except BaseException as exc:  # noqa: BLE001 - reported, then the fork's _exit
                with contextlib.suppress(BaseException):
                    write_all(msg_w, b"e " + error_report(
                        "internal", f"{type(exc).__name__}: {exc}", None) + b"\n")
                return 70

        # The fork (``store.forking``) blocks SIGTERM/SIGINT until the worker has its own
        # handlers (one arriving before, from ``stop_all`` after another worker's error, would
        # run the parent's handler in the child), and leaves it only its two pipes.
        pid = fork_child(worker, {cmd_r, msg_w})
        os.close(cmd_r)
        os.close(msg_w)
        w = _Worker(pid, cmd_w, msg_r)
        self.workers.append(w)
        self.send_next(w)

    def send_next(self, w: _Worker) -> None:
        if w.cmd < 0:
            return
        k = -1
        if self.error is None and self.next_chunk < len(self.job.chunks):
            k = self.next_chunk
            self.next_chunk += 1
        with contextlib.suppress(OSError):
            write_all(w.cmd, f"{k}\n".encode())

    def stop_all(self) -> None:
        for w in self.workers:
            if w.cmd >= 0:
                os.close(w.cmd)
                w.cmd = -1
            if w.status is None:
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGTERM)

    def collect(self) -> None:
        """Read the workers' messages until every one has exited."""
        by_fd = {w.msg: w for w in self.workers}
        while by_fd:
            ready, _, _ = select.select(list(by_fd), [], [])
            for fd in ready:
                w = by_fd[fd]
                block = os.read(fd, 4096)
                if not block:  # the worker exited
                    del by_fd[fd]
                    self._exited(w)
                    continue
                w.pending += block
                while b"\n" in w.pending:
                    line, w.pending = w.pending.split(b"\n", 1)
                    self._message(w, line)

    def _exited(self, w: _Worker) -> None:
        os.close(w.msg)
        w.msg = -1
        w.status = os.waitpid(w.pid, 0)[1]
        if self.error is None and not w.finished:
            code = os.waitstatus_to_exitcode(w.status)
            # stopped by SIGTERM/SIGINT (Ctrl-C reaches the whole process group)
            self.error = (KeyboardInterrupt() if code == STOPPED
                          else _worker_died(self.job.archive, code))
            self.stop_all()

    def _message(self, w: _Worker, line: bytes) -> None:
        kind, _, arg = line.partition(b" ")
        if kind == b"c":
            count_images(int(arg))  # the worker's own count is its copy's, lost
            if self.bar is not None:
                self.bar.update(int(arg))
            self.send_next(w)
        elif kind == b"d":
            self.total += int(arg)
            w.finished = True
        elif kind == b"e" and self.error is None:
            self.error = reported_error(arg, "extraction worker")
            self.stop_all()

    def reap(self) -> None:
        """Close every pipe and wait for every worker (each stops at its next member, or the
        next 1 MiB of a large one)."""
        for w in self.workers:
            if w.cmd >= 0:
                os.close(w.cmd)
            if w.msg >= 0:
                os.close(w.msg)
            if w.status is None:
                with contextlib.suppress(ChildProcessError):
                    w.status = os.waitpid(w.pid, 0)[1]


def _worker_died(archive: str, code: int) -> Isic2020Error:
    what = f"signal {-code}" if code < 0 else f"exit status {code}"
    return DiskError(
        f"an extraction worker for {archive} stopped unexpectedly ({what})",
        "run the same command again to resume; finished images are kept",
    )
