"""The range pool's pieces of a remote zip, turned into files by a few unpacking threads.

The downloading is :class:`isic2020.transfer.pool.RangePool`'s (the one pool: its
connections, retries, resume at the broken byte, throttle, and the cut of a queued span as a
connection takes it). What is zip-specific is here: :class:`MemberSink` gives each piece a
:class:`~isic2020.archive.spans.SpanWriter` for the members that start inside it, and
:class:`Unpackers` feed those writers off the downloading threads.

Invariants:

* **The downloading threads only download.** Each block goes to one of :data:`UNPACKERS`
  threads through a small bounded queue (a downloading thread waits when its unpacker is
  behind), so memory stays flat whatever the piece or member size, and a thread does not stop
  reading its socket while a block is being consumed.
* **In order per piece.** Piece ``k`` always goes to unpacker ``k % n``, so each piece's
  blocks reach its writer in order, then the writer's ``check_complete`` (the piece ended
  fully) or ``cleanup`` (it did not, or another thread failed).
* **Pieces start at members.** A span is cut only at its members' local-header offsets, so
  every piece begins at a header and its writer's parser never sees a seam; a piece's end is
  fixed when a connection takes it, so its writer is given exactly the members that start
  inside it.
* **The first error stops everything**: an unpacker's error goes to the pool's ``fail``.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from operator import attrgetter
from queue import Full, Queue
from typing import Any, Protocol

from isic2020.archive.spans import Span, SpanWriter, StagedFolder
from isic2020.errors import Interrupted
from isic2020.transfer.pool import Piece, SpanSink

#: Threads that consume what the downloading threads fetch, and the blocks each may have
#: waiting. Why more than one and not more than two: writing many small files holds the GIL and
#: waits on the folder's lock in the kernel; one consumer is busy most of the time of a fast
#: download, a third one mostly adds contention on that lock.
UNPACKERS = 2
UNPACK_QUEUE = 8

_OFFSET = attrgetter("header_offset")


class Consumer(Protocol):
    """What a piece's bytes go to."""

    def feed(self, data: bytes) -> None: ...

    def check_complete(self) -> None: ...

    def cleanup(self) -> None: ...


def cuts_of(span: Span) -> tuple[int, ...]:
    """Where ``span`` may be split: at the local header of each member after the first."""
    return tuple(m.header_offset for m in span.members[1:])


class MemberSink(SpanSink):
    """The pool's pieces to span writers, through the unpackers (piece k -> thread k % n).

    ``piece.span.tag`` is the archive's :class:`Span`; ``finals`` maps header offsets to final
    paths. Called from the pool's threads, one thread per piece at a time."""

    def __init__(
        self, archive: str, finals: dict[int, str], mode: int, unpackers: Any
    ) -> None:
        """``unpackers``: :class:`Unpackers`, or ``unpack_worker.ForkedUnpackers`` (the same
        interface over forked children)."""
        self.archive = archive
        self.finals = finals
        self.mode = mode
        self.unpackers = unpackers
        self.writers: dict[int, Any] = {}  # by piece index; each key one thread's

    def begin(self, piece: Piece) -> None:
        span: Span = piece.span.tag
        first = bisect.bisect_left(span.members, piece.start, key=_OFFSET)
        last = bisect.bisect_left(span.members, piece.end, key=_OFFSET)
        own = Span(piece.start, piece.end, span.members[first:last])
        self.writers[piece.index] = self.unpackers.writer(self.archive, own, self.finals,
                                                          self.mode)

    def data(self, piece: Piece, offset: int, block: memoryview) -> None:
        self.unpackers.put(piece.index, self.writers[piece.index], block)

    def end(self, piece: Piece, complete: bool) -> None:
        writer = self.writers.pop(piece.index)
        self.unpackers.end(piece.index, writer, complete)


class Unpackers:
    """A few threads that feed the consumers, so the downloading threads only download.

    Piece ``k`` always goes to thread ``k % n``, so each piece's blocks reach its consumer in
    order; a bounded queue per thread keeps memory flat. ``done(consumer)`` runs (on an
    unpacking thread) for each consumer that finished completely; an error goes to ``fail``.
    """

    def __init__(
        self,
        n: int,
        abort: threading.Event,
        fail: Callable[[BaseException], None],
        done: Callable[[Consumer], None],
        staged: StagedFolder | None = None,
    ) -> None:
        """``staged``: the staging folder the writers write in (see :class:`SpanWriter`)."""
        self.staged = staged
        self.abort = abort
        self.fail = fail
        self.done = done
        self.queues: list[Queue[tuple[Consumer | None, bytes | None]]] = [
            Queue(maxsize=UNPACK_QUEUE) for _ in range(max(1, n))
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(q,), name=f"isic2020-unpack-{k}",
                             daemon=True)
            for k, q in enumerate(self.queues)
        ]
        self.started = self.stopped = False

    def writer(self, archive: str, span: Span, finals: dict[int, str], mode: int
               ) -> SpanWriter:
        """The consumer of one piece: its span's writer, fed on this pool's threads."""
        return SpanWriter(archive, span, finals, mode, self.staged)

    def start(self) -> None:
        self.started = True
        for t in self.threads:
            t.start()

    def put(self, k: int, consumer: Consumer, block: memoryview) -> None:
        """Piece ``k``'s next block (waits while its unpacker is behind; gives up on abort).
        ``block`` is lent by the pool: the queue holds a copy."""
        q = self.queues[k % len(self.queues)]
        kept = bytes(block)
        while True:
            try:
                q.put((consumer, kept), timeout=0.1)
                return
            except Full:
                if self.abort.is_set():
                    raise Interrupted("aborted") from None

    def end(self, k: int, consumer: Consumer, complete: bool) -> None:
        """Piece ``k`` ended: completely (its consumer must have finished every member) or not
        (its consumer removes the member in progress). Never refused: the unpacker drains."""
        self.queues[k % len(self.queues)].put((consumer, b"" if complete else None))

    def stop(self) -> None:
        """After the downloading threads: the queues drain, then the threads end."""
        if self.stopped or not self.started:
            return
        self.stopped = True
        for q in self.queues:
            q.put((None, None))
        for t in self.threads:
            while t.is_alive():
                t.join(timeout=0.1)

    def _run(self, q: Queue[tuple[Consumer | None, bytes | None]]) -> None:
        while True:
            consumer, block = q.get()
            if consumer is None:
                return
            if block is None or self.abort.is_set():
                consumer.cleanup()  # abandoned, or another thread failed
                continue
            try:
                if block:
                    consumer.feed(block)
                    continue
                consumer.check_complete()
                self.done(consumer)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                consumer.cleanup()
                self.fail(exc)
