"""The range pool: downloading threads fetch queued byte ranges of one object, and a few
unpacking threads consume each range's blocks, in order. It knows nothing about zips.

Invariants:

* **The downloading threads only download.** Each block goes to one of :data:`UNPACKERS`
  threads through a small bounded queue (a downloading thread waits when its unpacker is
  behind), so memory stays flat whatever the range or member size, and a thread does not stop
  reading its socket while a block is being consumed.
* **In order per range.** Range ``k`` always goes to unpacker ``k % n``, so each range's
  blocks reach its consumer in order, then the consumer's ``check_complete`` (the range ended
  fully) or ``cleanup`` (it did not, or another thread failed).
* **The first error stops everything** (``abort``) and is what the caller raises; an
  ``Interrupted`` counts only when there is no other error.

It keeps its own threads until the transfer layer's one worker pool can take its place: that
switch is a change of this module only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from queue import Full, Queue
from typing import Protocol

import requests

from isic2020.errors import Interrupted
from isic2020.transfer.http import make_session
from isic2020.transfer.ranges import RangeClient

#: Threads that consume what the downloading threads fetch, and the blocks each may have
#: waiting. Why more than one and not more than two: writing many small files holds the GIL and
#: waits on the folder's lock in the kernel; one consumer is busy most of the time of a fast
#: download, a third one mostly adds contention on that lock.
UNPACKERS = 2
UNPACK_QUEUE = 8


class Consumer(Protocol):
    """What a range's bytes go to."""

    def feed(self, data: bytes) -> None: ...

    def check_complete(self) -> None: ...

    def cleanup(self) -> None: ...


Item = tuple[int, int, Consumer]


class _RangeQueue:
    """Ranges handed to the downloading threads as the caller makes them, in order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[Item] = deque()
        self._closed = False
        self._taken = 0

    def put(self, item: Item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def close(self) -> None:
        """No more ranges: threads that find the queue empty stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, abort: threading.Event) -> tuple[int, Item] | None:
        """The next range and its number, or None when there is none left (or on abort)."""
        with self._cond:
            while not (self._items or self._closed or abort.is_set()):
                self._cond.wait(0.1)
            if abort.is_set() or not self._items:
                return None
            self._taken += 1
            return self._taken - 1, self._items.popleft()


class RangePool:
    """Fetch ranges of ``client``'s object over ``connections`` threads into their consumers.

    ``on_done(consumer)`` runs (on an unpacking thread) for each range consumed completely."""

    def __init__(
        self, client: RangeClient, connections: int, on_done: Callable[[Consumer], None],
        *, unpackers: int = UNPACKERS,
    ) -> None:
        self.client = client
        self.abort = client.abort
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.ranges = _RangeQueue()
        self.unpackers = _Unpackers(unpackers, self.abort, self.fail, on_done)
        self.threads = [
            threading.Thread(target=self._download, name=f"isic2020-rz-{k}", daemon=True)
            for k in range(max(1, connections))
        ]

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if not isinstance(exc, Interrupted) or not self.errors:
                self.errors.append(exc)
        self.abort.set()

    def put(self, start: int, end: int, consumer: Consumer) -> None:
        self.ranges.put((start, end, consumer))

    def close(self) -> None:
        """No more ranges will be put."""
        self.ranges.close()

    def start(self) -> None:
        self.unpackers.start()
        for t in self.threads:
            t.start()

    def _download(self) -> None:
        session: requests.Session | None = None
        try:
            while (item := self.ranges.get(self.abort)) is not None:
                k, (start, end, consumer) = item
                session = session or make_session(1)
                ok = False
                try:
                    self.client.stream(session, start, end, self.unpackers.sink(k, consumer))
                    ok = True
                finally:
                    self.unpackers.end(k, consumer, ok)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.fail(exc)
        finally:
            if session is not None:
                session.close()

    def wait(self) -> None:
        """Until every range is fetched and consumed (Ctrl-C interrupts the wait)."""
        for t in self.threads:
            while t.is_alive():
                t.join(timeout=0.1)
        self.unpackers.stop()

    def stop(self) -> None:
        """After an error or Ctrl-C in the main thread: stop every downloading thread."""
        self.abort.set()
        self.ranges.close()
        for t in self.threads:
            t.join(timeout=5)

    def shutdown(self) -> None:
        """Whatever happened: the unpackers end (cleaning up the consumers in progress)."""
        self.ranges.close()
        self.unpackers.stop()

    def first_error(self) -> BaseException | None:
        """The first real error (an Interrupted only when there is no other)."""
        real = [e for e in self.errors if not isinstance(e, Interrupted)]
        return real[0] if real else (self.errors[0] if self.errors else None)


class _Unpackers:
    """A few threads that feed the consumers, so the downloading threads only download.

    Range ``k`` always goes to thread ``k % n``, so each range's blocks reach its consumer in
    order; a bounded queue per thread keeps memory flat.
    """

    def __init__(
        self,
        n: int,
        abort: threading.Event,
        fail: Callable[[BaseException], None],
        done: Callable[[Consumer], None],
    ) -> None:
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
        self.stopped = False

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def sink(self, k: int, consumer: Consumer) -> Callable[[bytes], None]:
        """Where span ``k``'s blocks go, in order."""
        q = self.queues[k % len(self.queues)]

        def put(block: bytes) -> None:
            while True:
                try:
                    q.put((consumer, block), timeout=0.1)
                    return
                except Full:
                    if self.abort.is_set():
                        raise Interrupted("aborted") from None

        return put

    def end(self, k: int, consumer: Consumer, complete: bool) -> None:
        """Span ``k`` ended: completely (its consumer must have finished every member) or not
        (its consumer removes the member in progress). Never refused: the unpacker drains."""
        self.queues[k % len(self.queues)].put((consumer, b"" if complete else None))

    def stop(self) -> None:
        """After the downloading threads: the queues drain, then the threads end."""
        if self.stopped:
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
