"""The member fetch's unpackers as forked children: ``--direct`` and subsets off the GIL.

Why: the member fetch (``unpack.Unpackers``) turns the range pool's blocks into files on two
threads of the fetch itself, and every per-member step there waits for the GIL behind up to
64 downloading threads, as the streaming did (``stream_worker``). Here each unpacker is a
forked child (``store.forking.fork_child``: no program is run) fed through a pipe, so only the
copy of each block into the pipe stays in the fetch's interpreter.

The wire, per child (piece ``k`` always goes to child ``k % n``, so its frames arrive in order):
``B`` (a piece begins: its span's start, end, members and their final paths, ``marshal``ed),
``D`` (its next block), ``E`` (it ended: one byte, 1 when completely). The
child answers each ``E``: ``d K DONE BYTES [I ...]`` (every member of the piece written and
checked; ``I``: the indices of those whose content the writer could not vouch for, see
``SpanWriter.unchecked``),
``x K`` (cleaned up after an incomplete end), or ``e K JSON`` (kind, message, hint: a damaged
member or a full disk; that piece's later frames are ignored).

Invariants: the child writes with the same :class:`~isic2020.archive.spans.SpanWriter` (the
one parser, the one decoder, temporary and rename) as the threads; whatever it leaves
unfinished when its input ends or it is stopped (SIGTERM: the fetch's abort) it removes, so no
half-written member remains; a downloading thread never blocks for good on a child (the
writes wait at most 0.1 s at a time, then look at the abort); the children inherit nothing but
their pipes (``close_other_descriptors``) and die with the fetch (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import marshal
import os
import select
import signal
import struct
import threading
from collections.abc import Callable
from typing import Any

from isic2020.archive.decode import Stopped, request_stop, stop_requested, write_all
from isic2020.archive.spans import Span, SpanWriter, StagedFolder, checked_finals
from isic2020.archive.zipformat import Entry
from isic2020.errors import DiskError, Interrupted, Isic2020Error
from isic2020.report import count_images
from isic2020.store.forking import (
    STOP_SIGNALS,
    STOPPED,
    error_report,
    fork_child,
    read_exact,
    reported_error,
)

#: From an archive of this many bytes on, its members are unpacked by forked children (here,
#: and while it downloads: ``stream_worker``); below it the work is too short to be worth them.
PROCESS_MIN = 256 << 20
HEAD = struct.Struct("<cII")  # kind, piece index, payload length
BEGIN, DATA, END = b"B", b"D", b"E"
WAIT = 0.1  # seconds a downloading thread waits on a child before it looks at the abort
PIPE_BYTES = 1 << 20  # the input pipe's capacity (F_SETPIPE_SZ), where Linux allows it
F_SETPIPE_SZ = 1031


class ForkedWriter:
    """The parent's stand-in for one piece's :class:`SpanWriter` (which lives in the child):
    what to announce, and the counts the child reports (read by the ``done`` callback)."""

    def __init__(self, span: Span, finals: dict[int, str]) -> None:
        self.span = span
        self.finals = {m.header_offset: finals[m.header_offset] for m in span.members}
        self.announced = False
        self.done = 0
        self.bytes_written = 0
        self.unchecked: list[int] = []

    def checked_finals(self) -> list[str]:
        return checked_finals(self.span, self.finals, self.done, self.unchecked)


class _Child:
    def __init__(self, pid: int, cmd: int, msg: int) -> None:
        self.pid = pid
        self.cmd = cmd
        self.msg = msg
        self.lock = threading.Lock()
        self.pending: dict[int, ForkedWriter] = {}  # pieces ended, answer awaited
        self.reader: threading.Thread | None = None
        self.status: int | None = None


class ForkedUnpackers:
    """:class:`~isic2020.archive.unpack.Unpackers`' interface over ``n`` forked children.

    ``done(writer)`` runs (on a reader thread) for each piece written completely; the first
    error goes to ``fail``. :meth:`start` raises OSError when a child cannot be forked (the
    caller then uses the threads)."""

    def __init__(self, n: int, abort: threading.Event, fail: Callable[[BaseException], None],
                 done: Callable[[Any], None], archive: str, mode: int,
                 staged: StagedFolder | None = None) -> None:
        """``staged``: the staging folder the children's writers write in (its descriptor is
        inherited across the fork; see :class:`~isic2020.archive.spans.SpanWriter`)."""
        self.n = max(1, n)
        self.staged = staged
        self.abort = abort
        self.fail = fail
        self.done = done
        self.archive = archive
        self.mode = mode
        self.children: list[_Child] = []
        self.stopped = False

    def writer(self, archive: str, span: Span, finals: dict[int, str], mode: int
               ) -> ForkedWriter:
        """The parent's stand-in for one piece (the archive and mode are the child's)."""
        return ForkedWriter(span, finals)

    def start(self) -> None:
        try:
            for _ in range(self.n):
                self.children.append(self._fork())
        except OSError:
            self.stop()
            raise
        for c in self.children:
            c.reader = threading.Thread(target=self._read, args=(c,), daemon=True,
                                        name="isic2020-unpack-acks")
            c.reader.start()

    def _fork(self) -> _Child:
        cmd_r, cmd_w = os.pipe()
        msg_r, msg_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(cmd_w, F_SETPIPE_SZ, PIPE_BYTES)
        try:
            keep = {cmd_r, msg_w} | ({self.staged.fd} if self.staged is not None else set())
            pid = fork_child(lambda: _serve(self.archive, self.mode, cmd_r, msg_w, self.staged),
                             keep)
        except OSError:
            for fd in (cmd_r, cmd_w, msg_r, msg_w):
                os.close(fd)
            raise
        os.close(cmd_r)
        os.close(msg_w)
        os.set_blocking(cmd_w, False)
        return _Child(pid, cmd_w, msg_r)

    # -- the downloading threads' side --------------------------------------------------
    def put(self, k: int, consumer: ForkedWriter, block: memoryview) -> None:
        """Piece ``k``'s next block, written to its child's input before returning (``block``
        is lent by the pool)."""
        child = self.children[k % self.n]
        with self._locked(child):
            self._announce(child, k, consumer)
            self._send(child, DATA, k, block)

    def end(self, k: int, consumer: ForkedWriter, complete: bool) -> None:
        child = self.children[k % self.n]
        with self._locked(child):
            self._announce(child, k, consumer)
            child.pending[k] = consumer
            self._send(child, END, k, bytes((complete,)))

    def _announce(self, child: _Child, k: int, consumer: ForkedWriter) -> None:
        """The piece's members and final paths, before its first frame (under the lock)."""
        if not consumer.announced:
            self._send(child, BEGIN, k, _begin(consumer))
            consumer.announced = True

    @contextlib.contextmanager
    def _locked(self, child: _Child) -> Any:
        """The child's input to oneself (frames never interleave); never one that
        :meth:`stop` closed (its number may belong to another file by now)."""
        while not child.lock.acquire(timeout=WAIT):
            if self.abort.is_set():
                raise Interrupted("aborted")
        try:
            if child.cmd < 0:
                raise Interrupted("aborted")
            yield
        finally:
            child.lock.release()

    def _send(self, child: _Child, kind: bytes, k: int, payload: bytes | memoryview) -> None:
        for part in (HEAD.pack(kind, k, len(payload)), payload):
            view = memoryview(part)
            while view:
                try:
                    view = view[os.write(child.cmd, view):]
                except BlockingIOError:
                    select.select([], [child.cmd], [], WAIT)
                    if self.abort.is_set():
                        raise Interrupted("aborted") from None
                except OSError:  # the child is gone
                    if self.abort.is_set():
                        raise Interrupted("aborted") from None
                    raise _gone(self.archive, "its input closed") from None

    # -- the end ---------------------------------------------------------------------------
    def stop(self) -> None:
        """After the downloading threads: each child ends its input's pieces (on an abort it
        is signalled and removes what it had not finished), then every answer is read."""
        if self.stopped:
            return
        self.stopped = True
        for c in self.children:
            if self.abort.is_set() and c.status is None:
                with contextlib.suppress(OSError):
                    os.kill(c.pid, signal.SIGTERM)
            with c.lock:  # a downloading thread still sending sees the abort within WAIT
                with contextlib.suppress(OSError):
                    os.close(c.cmd)
                c.cmd = -1
        for c in self.children:
            if c.reader is not None:
                c.reader.join()
            elif c.status is None:
                os.close(c.msg)
                c.status = os.waitpid(c.pid, 0)[1]

    def _read(self, c: _Child) -> None:
        pending = b""
        try:
            while block := os.read(c.msg, 4096):
                pending += block
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self._answer(c, line)
        finally:
            os.close(c.msg)
            c.status = os.waitpid(c.pid, 0)[1]
            code = os.waitstatus_to_exitcode(c.status)
            if code not in (0, STOPPED) and not self.abort.is_set():
                self.fail(_gone(self.archive, f"exit status {code}"))

    def _answer(self, c: _Child, line: bytes) -> None:
        kind, _, rest = line.partition(b" ")
        k_text, _, arg = rest.partition(b" ")
        writer = c.pending.pop(int(k_text), None)
        if kind == b"d" and writer is not None:
            done, written, *unchecked = (int(x) for x in arg.split())
            writer.done, writer.bytes_written, writer.unchecked = done, written, unchecked
            count_images(done)
            self.done(writer)
        elif kind == b"e":
            self.fail(reported_error(arg, "unpacking"))


def _gone(archive: str, why: str) -> DiskError:
    return DiskError(f"an unpacking process for {archive} stopped unexpectedly ({why})",
                     "run the same command again to resume; finished images are kept")


def _begin(w: ForkedWriter) -> bytes:
    members = [(e.name, e.compressed_size, e.file_size, e.crc, e.header_offset, e.method,
                e.flags) for e in w.span.members]
    return marshal.dumps((w.span.start, w.span.end, members,
                          [w.finals[e.header_offset] for e in w.span.members]))


# -- the child -------------------------------------------------------------------------------
def _on_stop(signum: int, frame: Any) -> None:
    request_stop()


def _serve(archive: str, mode: int, inp: int, out: int,
           staged: StagedFolder | None = None) -> int:
    """Feed each piece's writer its blocks, answer each end; at the end of the input (or a
    stop), remove whatever was not finished. The exit status: 0, or :data:`STOPPED`."""
    request_stop(False)
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    writers: dict[int, SpanWriter] = {}
    failed: set[int] = set()
    try:
        while not stop_requested():
            head = read_exact(inp, HEAD.size)
            if head is None:
                return 0
            kind, k, n = HEAD.unpack(head)
            payload = read_exact(inp, n) if n else b""
            if payload is None:
                return 0
            if kind == BEGIN:
                start, end, members, finals = marshal.loads(payload)
                entries = tuple(Entry(*f) for f in members)
                writers[k] = SpanWriter(archive, Span(start, end, entries),
                                        {e.header_offset: p for e, p in zip(entries, finals)},
                                        mode, staged)
                continue
            w = writers.get(k)
            try:
                if kind == DATA:
                    if w is not None and k not in failed:
                        w.feed(payload)
                    continue
                complete = payload == b"\x01"
                writers.pop(k, None)
                if k in failed or w is None:
                    continue
                if complete:
                    w.check_complete()
                    write_all(out, " ".join(map(str, ("d", k, w.done, w.bytes_written,
                                                      *w.unchecked))).encode() + b"\n")
                else:
                    w.cleanup()
                    write_all(out, f"x {k}\n".encode())
            except Isic2020Error as exc:
                if w is not None:
                    w.cleanup()
                failed.add(k)
                write_all(out, f"e {k} ".encode()
                          + error_report(type(exc).__name__, exc.message, exc.hint) + b"\n")
        return STOPPED
    except Stopped:
        return STOPPED
    except OSError as exc:
        if exc.errno == errno.EPIPE or stop_requested():
            return STOPPED
        raise
    finally:
        for w in writers.values():  # unfinished: never left half-written
            w.cleanup()
