"""A forked process that unpacks members for ``streaming``: its own interpreter, its own GIL.

Why a process: while an archive downloads over up to 64 connections, every per-member step
of the unpacking (``pread``, inflate, CRC-32, ``open``, ``write``, ``close``) gives the GIL up
and must win it back from the download's threads. In one interpreter the two take turns: the
unpacking falls behind the download and both spend CPU on the handovers. A forked child has
an interpreter of its own, and inherits the parsed directory: the parent hands it batches of
member *indices* (``array`` of uint32 on a pipe, at most :data:`IN_FLIGHT` batches ahead) and
reads one line per batch back: ``c COUNT [INDEX ...]`` once the batch is written (the indices
listed are those the writer's content check, :class:`decode.Vouched`, did not pass: usually
none), ``e JSON`` (kind, message, hint) when a member could not be, after which the child
exits. No program is run (the package never runs one): the child is this process, forked.

The fork (``store.forking.fork_child``) is safe beside the download's threads for the reasons
given there; the child uses only ``os`` calls, zlib and the decoder (no progress bar:
:func:`report.count_images` ignores a forked child, and the parent counts the images from the
child's messages).

Invariants:

* **The same writer, the same place.** The child runs :func:`decode.extract_member` with
  ``in_place`` into the staging images folder, through the descriptor the parent opened
  without following links: a link planted in the state folder cannot send a write outside
  DATA from here either.
* **No orphan.** SIGTERM and SIGINT stop the child at its next member (the parent's
  :meth:`UnpackerProcess.stop`; Ctrl-C reaches the process group); it dies with the parent
  (``PR_SET_PDEATHSIG``), and the end of its input stops it too.
  A killed write leaves a short file, which the resume check (size) redoes and promotion
  drops.
* **Never required.** Where ``fork`` is missing or fails, or not on Linux, the caller
  unpacks in its own threads, as before.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import struct
import threading
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from isic2020.archive.decode import (
    Damaged,
    Stopped,
    Vouched,
    extract_member,
    request_stop,
    stop_requested,
    write_all,
)
from isic2020.archive.rules import Member, damaged_member
from isic2020.archive.workers import DAMAGED_HINT
from isic2020.errors import Isic2020Error
from isic2020.store.forking import (
    STOP_SIGNALS,
    STOPPED,
    can_fork,
    error_report,
    fork_child,
    read_exact,
)

#: Batches handed to one child ahead of its acknowledgements: enough that it never waits for
#: the parent's next one (whose threads may wait for the GIL), few enough that the last
#: members spread over every child.
IN_FLIGHT = 2
FRAME = struct.Struct("<I")  # the number of indices that follow (uint32 each)
#: ``on_done(batch, unchecked)``: a batch was written; ``unchecked``, those of its indices
#: whose content check did not pass or did not run.
Done = Callable[[Sequence[int], set[int]], None]


class UnpackerGone(Exception):
    """The child stopped: a member it could not write (the message says which), or it died.
    ``interrupted``: it was asked to stop (SIGTERM, or Ctrl-C reaching the process group):
    no failure to report, whoever asked handles the rest."""

    def __init__(self, message: str, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted


class UnpackerProcess:
    """The parent's side of one child: :meth:`submit` batches, :meth:`close` at the end.

    ``on_done(batch, unchecked)`` is called (from this object's reader thread) for each batch
    written, with the set of its indices whose content check did not pass (or did not run);
    :meth:`submit` raises :class:`UnpackerGone` once the child reported an error or died.
    """

    def __init__(self, pid: int, cmd: int, msg: int, on_done: Done) -> None:
        self.pid = pid
        self.cmd = cmd  # write end of its input (-1 once closed)
        self.msg = msg  # read end of its messages
        self.on_done = on_done
        self.error: str | None = None
        self.interrupted = False  # it exited with STOPPED
        self.status: int | None = None  # its exit status, once reaped
        self._reaped = threading.Lock()
        self._slots = threading.Semaphore(IN_FLIGHT)
        self._sent: deque[Sequence[int]] = deque()  # batches not yet answered, in order
        self._reader = threading.Thread(target=self._read, name="isic2020-stream-acks",
                                        daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, members: Sequence[Member], archive_fd: int, images_fd: int, mode: int,
              archive: str, fmt: str | None, on_done: Done) -> UnpackerProcess | None:
        """A child that writes ``members[i]`` for the indices it is sent, reading
        ``archive_fd`` and writing into ``images_fd`` (images of format ``fmt``, checked as
        :meth:`decode.Vouched.for_format` says); None when none can start (the caller
        unpacks in its own threads). Call it from a thread that outlives the child:
        ``PR_SET_PDEATHSIG`` fires when the *thread* that forked it ends."""
        if not can_fork():
            return None
        cmd_r, cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        try:
            pid = fork_child(
                lambda: _child(members, archive_fd, images_fd, mode, archive, fmt, cmd_r,
                               msg_w),
                {archive_fd, images_fd, cmd_r, msg_w},
            )
        except OSError:
            for fd in (cmd_r, cmd_w, msg_r, msg_w):
                os.close(fd)
            return None
        os.close(cmd_r)
        os.close(msg_w)
        return cls(pid, cmd_w, msg_r, on_done)

    def submit(self, indices: Sequence[int]) -> None:
        """Hand the members at ``indices`` to the child; blocks while :data:`IN_FLIGHT`
        batches are unanswered."""
        self._slots.acquire()
        if self.error is not None:
            self._slots.release()
            raise UnpackerGone(self.error, self.interrupted)
        frame = FRAME.pack(len(indices)) + array("I", indices).tobytes()
        self._sent.append(indices)
        try:
            write_all(self.cmd, frame)
        except OSError:
            self._reader.join()
            raise UnpackerGone(self.error or "the unpacking process stopped",
                               self.interrupted) from None

    def stop(self) -> None:
        """Ask the child to stop at its next member (SIGTERM), unless it is reaped already."""
        with self._reaped:
            if self.status is None:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGTERM)

    def close(self) -> str | None:
        """End the child's input, wait for every batch to be answered and the child to exit;
        the error it reported, if any."""
        if self.cmd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.cmd)
            self.cmd = -1
        self._reader.join()
        return self.error

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                try:
                    block = os.read(self.msg, 4096)
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    continue
                if not block:
                    break
                pending += block
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    kind, _, arg = line.partition(b" ")
                    if kind == b"c":
                        unchecked = {int(i) for i in arg.split()[1:]}
                        self.on_done(self._sent.popleft(), unchecked)
                        self._slots.release()
                    elif kind == b"e" and self.error is None:
                        self.error = json.loads(arg).get("message") or "the unpacking failed"
        except OSError as exc:  # pragma: no cover - the pipe is ours
            self.error = self.error or f"the unpacking process stopped ({exc})"
        finally:
            os.close(self.msg)
            with self._reaped:
                self.status = os.waitpid(self.pid, 0)[1]
            code = os.waitstatus_to_exitcode(self.status)
            if self.error is None and code != 0:
                self.interrupted = code == STOPPED
                self.error = f"the unpacking process stopped (exit status {code})"
            for _ in range(IN_FLIGHT):  # a submit waiting for a slot sees the error
                self._slots.release()


# -- the child -------------------------------------------------------------------------------
def _report(fd: int, kind: str, message: str, hint: str | None) -> None:
    write_all(fd, b"e " + error_report(kind, message, hint) + b"\n")


def _on_stop(signum: int, frame: Any) -> None:
    request_stop()


def _child(members: Sequence[Member], archive_fd: int, images_fd: int, mode: int, archive: str,
           fmt: str | None, inp: int, out: int) -> int:
    """Unpack the batches read on ``inp`` until its end; the exit status (0; :data:`STOPPED`
    when a signal stopped it; 1 after a member it could not write, reported on ``out``)."""
    request_stop(False)
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked across the fork

    def read_at(at: int, n: int) -> bytes:
        return os.pread(archive_fd, n, at)

    vouch = Vouched.for_format(fmt)

    try:
        while True:
            head = read_exact(inp, FRAME.size)
            body = None if head is None else read_exact(inp, 4 * FRAME.unpack(head)[0])
            if body is None:
                return 0
            batch = array("I")
            batch.frombytes(body)
            unchecked: list[str] = []
            for i in batch:
                if stop_requested():
                    raise Stopped()
                m = members[i]
                if vouch is not None:
                    vouch.passed = False
                try:
                    extract_member(read_at, m.entry, "", m.final, mode, dir_fd=images_fd,
                                   in_place=True, inspect=vouch)
                except Damaged as exc:
                    raise damaged_member(archive, m.entry.name, str(exc),
                                         DAMAGED_HINT) from None
                if vouch is None or not vouch.passed:
                    unchecked.append(str(i))
            write_all(out, " ".join(["c", str(len(batch)), *unchecked]).encode() + b"\n")
    except Stopped:
        return STOPPED
    except Isic2020Error as exc:
        with contextlib.suppress(OSError):
            _report(out, type(exc).__name__, exc.message, exc.hint)
        return 1
    except OSError as exc:
        if exc.errno == errno.EPIPE or stop_requested():  # the parent is gone, or stopping
            return STOPPED
        with contextlib.suppress(OSError):
            _report(out, "OSError", f"unpacking failed: {exc}", None)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: said, and the threads take over
        with contextlib.suppress(OSError):
            _report(out, "internal", f"{type(exc).__name__}: {exc}", None)
        return 70
