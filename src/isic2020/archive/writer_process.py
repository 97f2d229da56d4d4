"""Members written by a process of their own: the streaming unpacker's way off the GIL.

Why: while an archive downloads, up to 64 downloading threads share one interpreter with the
unpacking, and per ~20 KB member the unpacking is short C calls (``pread``, inflate, CRC-32,
``open``, ``write``) with Python between them: unpacking threads wait for the GIL and the
download waits for them (two threads slowed a 7.7 s download to 10.6 s). A process has its
own interpreter, so the download and the unpacking each get a core.

Why spawned (``subprocess``), not forked: the fetch runs threads (downloads, hashing, the other
files), and a fork would copy their locks in whatever state they are in. Why a bare package
(:data:`BOOT`): the child needs the decoder only; importing ``isic2020`` itself loads the whole
API (requests, every command), about 0.6 s of CPU and 33 MB per process instead of ~0.15 s and
20 MB.

The protocol (one writer per unpacking thread, which blocks on the answer with the GIL
released): the parent writes one JSON line per batch, ``[[header_offset, compressed_size,
file_size, crc, method, flags, name, final], ...]``; the child writes each member to ``final``
relative to the folder descriptor it was handed, from the archive descriptor it was handed,
with :func:`~isic2020.archive.decode.extract_member` (``in_place``), and answers ``ok N`` or
``e {"kind", "message", "hint"}``. EOF on its stdin ends it; SIGTERM/SIGINT stop it at the next
member (or the next 1 MiB of a large one); it dies with its parent (``PR_SET_PDEATHSIG``).

Invariants: the thread's, unchanged: only checked bytes are written, a failed write leaves
nothing, and nothing is reached through a link (both descriptors were opened by the parent
without following any). A child that cannot start or dies raises :class:`WriterDied`; the
streaming then stops and the extraction after the download does the work.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

from isic2020.archive.decode import Damaged, Stopped, extract_member, request_stop, stop_requested
from isic2020.archive.rules import Member, damaged_member
from isic2020.archive.workers import DAMAGED_HINT, error_from_doc
from isic2020.archive.zipformat import Entry
from isic2020.errors import Isic2020Error
from isic2020.store.libc import libc

#: Run in the child (``python -c BOOT PACKAGE_DIR ARGS...``): ``isic2020`` as a bare package
#: (its ``__path__`` only, not its ``__init__``), then :func:`child_main`.
BOOT = (
    "import sys, types\n"
    "pkg = types.ModuleType('isic2020'); pkg.__path__ = [sys.argv[1]]\n"
    "sys.modules['isic2020'] = pkg\n"
    "from isic2020.archive.writer_process import child_main\n"
    "sys.exit(child_main(sys.argv[2:]))\n"
)
#: Seconds a child gets to end after its stdin closed before it is killed.
END_WAIT = 10.0


class WriterDied(RuntimeError):
    """The writer process could not start, or stopped without answering."""


class WriterProcess:
    """One child that writes members of one archive into one folder (see the module)."""

    def __init__(self, archive_fd: int, dir_fd: int, folder: str, mode: int,
                 archive: str) -> None:
        """``folder``: what ``dir_fd`` is, for messages only (names are relative to the fd)."""
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-c", BOOT, package, str(archive_fd), str(dir_fd),
                f"{mode:o}", archive, folder]
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(archive_fd, dir_fd), close_fds=True,
            )
        except OSError as exc:
            raise WriterDied(f"cannot start an unpacking process ({exc})") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: IO[bytes] = self.proc.stdin
        self._out: IO[bytes] = self.proc.stdout

    def write(self, members: Sequence[Member]) -> int:
        """Write ``members`` (checked, each at its final name); how many were written.

        Raises the child's :class:`~isic2020.errors.Isic2020Error` (a damaged member, a full
        disk) as if raised here, or :class:`WriterDied`."""
        batch = [[m.entry.header_offset, m.entry.compressed_size, m.entry.file_size,
                  m.entry.crc, m.entry.method, m.entry.flags, m.entry.name, m.final]
                 for m in members]
        try:
            self._in.write(json.dumps(batch, separators=(",", ":")).encode() + b"\n")
            self._in.flush()
            line = self._out.readline()
        except OSError:
            line = b""
        if line.startswith(b"ok "):
            return int(line[3:])
        if line.startswith(b"e "):
            raise error_from_doc(json.loads(line[2:]), "unpacking process")
        raise self._died()

    def close(self) -> None:
        """End the child (EOF, then a kill if it does not end) and reap it."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.proc.wait(timeout=END_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def _died(self) -> WriterDied:
        with contextlib.suppress(OSError):
            self._in.close()
        code = self.proc.wait()
        err = b""
        with contextlib.suppress(OSError):
            if self.proc.stderr is not None:
                err = self.proc.stderr.read()
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        what = f"signal {-code}" if code < 0 else f"exit status {code}"
        return WriterDied(f"the unpacking process stopped ({what})" + (f": {last}" if last else ""))


def _on_stop_signal(signum: int, frame: object) -> None:
    request_stop()


def child_main(argv: Sequence[str]) -> int:
    """The child: ``ARCHIVE_FD DIR_FD MODE(octal) ARCHIVE_NAME FOLDER``; batches on stdin (see
    the module). Exit 0 at EOF, 1 after an error it answered, 2 when stopped."""
    archive_fd, dir_fd, mode, archive = int(argv[0]), int(argv[1]), int(argv[2], 8), argv[3]
    folder = argv[4]
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    lib = libc()
    if lib is not None:
        with contextlib.suppress(Exception):
            lib.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: an orphan stops too

    def read_at(at: int, n: int) -> bytes:
        return os.pread(archive_fd, n, at)

    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        written = 0
        try:
            for off, csize, size, crc, method, flags, name, final in json.loads(line):
                if stop_requested():
                    return 2
                e = Entry(name=name, compressed_size=csize, file_size=size, crc=crc,
                          header_offset=off, method=method, flags=flags, external_attr=0,
                          create_system=0)
                try:
                    extract_member(read_at, e, folder, final, mode, dir_fd=dir_fd,
                                   in_place=True)
                except Damaged as exc:
                    raise damaged_member(archive, name, str(exc), DAMAGED_HINT) from None
                written += 1
        except Stopped:
            return 2
        except Isic2020Error as exc:
            doc = {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint}
            out.write(b"e " + json.dumps(doc).encode() + b"\n")
            out.flush()
            return 1
        out.write(f"ok {written}\n".encode())
        out.flush()
    return 0
