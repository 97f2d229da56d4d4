"""ONE worker pool for ranged GETs: byte spans over N connections, each span's bytes in order.

The whole-object engine (``ranged``) and the archive layer's member fetcher hand it spans; it
runs them over ``connections`` threads (each with its own session) through one
:class:`RangeClient`, so the strict range checks, the resume at the broken byte, the retry
window and the AIMD throttle are the same for both.

Invariants:
- every span is fetched as one or more :class:`Piece` s that tile it exactly; a sink receives
  each piece's bytes once, in order (``data(piece, offset, block)`` with ``offset`` the file
  offset of ``block[0]``; ``block`` a view of the connection's one buffer, lent for the
  call), between ``begin(piece)`` and ``end(piece, complete)``;
- a span is split only where it allows (``Span.cuts``), and only while queued: by
  :meth:`prioritize`, and, with ``take_min``, as a connection takes it (see :meth:`_pop`); a
  piece's ``end`` is fixed when a connection takes it, and it is fetched in one request
  (retried from the broken byte): no byte is fetched twice, no request is cut short;
- with ``max_connections`` above ``connections`` the count adapts (:mod:`~isic2020.transfer.\
  adaptive`): a controller thread measures the aggregate rate once per window and starts
  more connections (never more than ``max_connections`` at once) or retires the last ones
  (each ends after its piece); new connections take queued pieces, halved at an allowed cut
  when there are too few for them;
- the first error (a sink's, a worker's, :meth:`fail`'s) aborts every thread, and
  :meth:`wait` raises it; an ``Interrupted`` only when there is no other error.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from isic2020.errors import Interrupted
from isic2020.report import human_size
from isic2020.transfer.adaptive import WINDOW, Growth
from isic2020.transfer.http import make_session
from isic2020.transfer.ranges import RangeClient

if TYPE_CHECKING:
    import requests

#: Where a span that may be cut anywhere is cut: request sizes stay round.
ALIGN = 64 * 1024


@dataclass(frozen=True)
class Span:
    """``[start, end)`` of the object, with the caller's ``tag`` (what the bytes are for).

    ``cuts``: the offsets where the span may be split (the start of a zip member, say);
    None: anywhere (at multiples of ``ALIGN`` where possible); empty: never.
    """

    start: int
    end: int
    tag: Any = None
    cuts: tuple[int, ...] | None = None


class Piece:
    """One connection's share of a span: ``[start, end)``, delivered up to ``pos``.

    Invariants: ``span.start <= start <= pos <= end <= span.end``; ``end`` is fixed once a
    connection took the piece (only a queued piece is cut); ``index`` numbers the pieces in
    the order connections took them (from 0). ``pos`` is written by the connection's thread
    alone; sinks only read.
    """

    __slots__ = ("span", "start", "end", "pos", "index")

    def __init__(self, span: Span, start: int, end: int) -> None:
        self.span = span
        self.start = start
        self.end = end
        self.pos = start
        self.index = -1

    def __repr__(self) -> str:
        return f"Piece({self.start}, {self.end}, pos={self.pos}, index={self.index})"


class SpanSink:
    """Receives the pieces' bytes; the base class ignores ``begin`` and ``end``.

    Called from the pool's threads, one thread per piece at a time. Raising anything aborts
    the whole pool (the error reaches :meth:`RangePool.wait`).
    """

    def begin(self, piece: Piece) -> None:
        """A connection starts ``piece`` (``piece.end`` may still shrink)."""

    def data(self, piece: Piece, offset: int, block: memoryview) -> None:
        """``block`` belongs at ``offset``: right after the piece's previous block. It is lent
        (the connection's buffer, read into again after the call): copy what is kept."""
        raise NotImplementedError

    def end(self, piece: Piece, complete: bool) -> None:
        """``piece`` ended, with every byte of ``[start, end)`` delivered or not."""


class RangePool:
    """Runs spans over ``connections`` threads through one RangeClient (see the module).

    Use :meth:`run` for a known list, or :meth:`start`, :meth:`put` (any number, from any
    thread), :meth:`close` and :meth:`wait` to fetch spans while more are planned.
    """

    def __init__(
        self,
        client: RangeClient,
        connections: int,
        *,
        max_connections: int | None = None,
        window: float = WINDOW,
        take_min: int | None = None,
        log: Callable[[str], None] | None = None,
        label: str = "",
    ) -> None:
        """``max_connections``: adapt the count between ``connections`` and this (None: a
        fixed count); ``window``: seconds per measurement of the aggregate rate; ``take_min``:
        cut queued pieces as they are taken (see :meth:`_pop`), at least this long, and
        halve queued pieces for a count that grew no shorter than that. ``log``: each change
        of an adaptive count, and why it stopped growing, in one line (``--verbose``),
        starting with ``label`` (the file's name) when there is one."""
        self.client = client
        self.log = log
        self.label = f"{label}: " if label else ""
        self.connections = max(1, connections)
        self.growth = Growth(self.connections, max_connections or self.connections)
        self.window = window
        #: The most connections that ran at once (what an adaptive pool reached).
        self.most = 0
        self._live = 0  # connection threads not yet ended
        self._name = "isic2020-dl"
        self.take_min = take_min
        self.abort = client.abort
        self._cond = threading.Condition()
        self._queue: deque[Piece] = deque()
        self._closed = False
        self._taken = 0
        self._errors: list[BaseException] = []
        self._sink: SpanSink | None = None
        self._threads: list[threading.Thread] = []

    # -- the caller's side ----------------------------------------------------------------
    def run(self, spans: Iterable[Span], sink: SpanSink) -> None:
        """Fetch every span into ``sink``; raise the first error."""
        self.put_all(spans)
        self.close()
        self.start(sink)
        self.wait()

    def start(self, sink: SpanSink, name: str = "isic2020-dl") -> None:
        self._sink = sink
        self._name = name
        with self._cond:
            self._spawn(self.connections)
        if not self.growth.fixed:
            control = threading.Thread(target=self._control, name=f"{name}-control",
                                       daemon=True)
            self._threads.append(control)
            control.start()

    def put(self, span: Span) -> None:
        self.put_all((span,))

    def put_all(self, spans: Iterable[Span]) -> None:
        with self._cond:
            self._queue.extend(Piece(s, s.start, s.end) for s in spans if s.end > s.start)
            self._cond.notify_all()

    def close(self) -> None:
        """No more spans: a connection that finds nothing to do ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self) -> None:
        """Until every thread ended (Ctrl-C interrupts the wait); the first error raised."""
        self.join()
        self.raise_first()

    def join(self) -> None:
        """Until every thread ended (Ctrl-C interrupts the wait); errors stay for
        :meth:`raise_first` (a caller with more threads of its own raises after those)."""
        while True:
            with self._cond:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            for t in alive:
                while t.is_alive():
                    t.join(timeout=0.1)

    def stop(self) -> None:
        """After an error or Ctrl-C in the caller's thread: stop every thread."""
        self.abort.set()
        self.close()
        with self._cond:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=5)

    def fail(self, exc: BaseException) -> None:
        """Abort everything with ``exc`` (kept unless an earlier real error is)."""
        with self._cond:
            if not isinstance(exc, Interrupted) or not self._errors:
                self._errors.append(exc)
            self._cond.notify_all()
        self.abort.set()

    def raise_first(self) -> None:
        real = [e for e in self._errors if not isinstance(e, Interrupted)]
        if real:
            raise real[0]
        if self._errors:
            raise self._errors[0]

    def prioritize(self, start: int, end: int, step: int) -> None:
        """Fetch what is queued of ``[start, end)`` next, cut into pieces of at most ``step``
        bytes so that every connection helps; the rest of the queue follows in offset order.
        Spans that may not be cut anywhere are moved whole."""
        with self._cond:
            rest: list[Piece] = []
            hit: list[Piece] = []
            for p in self._queue:
                if p.end <= start or p.start >= end:
                    rest.append(p)
                elif p.span.cuts is not None:
                    hit.append(p)
                else:
                    if p.start < start:
                        rest.append(Piece(p.span, p.start, start))
                    if p.end > end:
                        rest.append(Piece(p.span, end, p.end))
                    lo, hi = max(p.start, start), min(p.end, end)
                    hit.extend(Piece(p.span, x, min(hi, x + step)) for x in range(lo, hi, step))
            rest.sort(key=lambda p: p.start)
            hit.sort(key=lambda p: p.start)
            self._queue = deque(hit + rest)

    # -- how many connections ------------------------------------------------------------
    def _spawn(self, n: int) -> None:
        """Start ``n`` more connections (under the lock)."""
        for _ in range(n):
            t = threading.Thread(target=self._worker, daemon=True,
                                 name=f"{self._name}-{len(self._threads)}")
            self._threads.append(t)
            self._live += 1
            t.start()
        self.most = max(self.most, self._live)

    def _control(self) -> None:
        """Once per window: the aggregate rate to :class:`Growth`, its count to the pool."""
        throttle = self.client.throttle
        seen = throttle.slowdowns
        last_bytes, last_t = self.client.transferred, time.monotonic()
        with self._cond:
            while not self.abort.is_set() and not (self._live == 0 and self._closed):
                left = last_t + self.window - time.monotonic()
                if left > 0:
                    self._cond.wait(left)  # the last connection's end wakes it at once
                    continue
                now, got = time.monotonic(), self.client.transferred
                rate = (got - last_bytes) / max(now - last_t, 1e-6)
                before = self.growth.target
                throttled = throttle.slowdowns != seen
                if throttled:
                    target = self.growth.throttled()
                else:
                    target = self.growth.window(rate, self._has_work())
                self._set_target(target)
                self._say_count(before, target, rate, throttled)
                if self.growth.stopped:
                    return
                # The next window starts once the new count runs: starting threads on a busy
                # CPU can take most of a window, which would then measure the old count.
                last_bytes, last_t = self.client.transferred, time.monotonic()

    def _say_count(self, before: int, target: int, rate: float, throttled: bool) -> None:
        """One ``--verbose`` line for a change of the count, or for the end of its growth."""
        if self.log is None or (target == before and not self.growth.stopped):
            return
        speed = f"{human_size(int(rate))}/s"
        if throttled:
            why = f"the server throttled (503 SlowDown, 429 or too slow) at {speed}"
        elif target > before:
            self.log(f"{self.label}connections: {before} -> {target} (aggregate {speed})")
            return
        elif target < before:
            why = (f"{before} connections were no faster ({speed}); trying again in "
                   f"{self.growth.retry_in * self.window:g} s")
        else:
            why = f"growth ended ({speed})"
        self.log(f"{self.label}connections: staying at {target}: {why}")

    def _set_target(self, target: int) -> None:
        """Run ``target`` connections: start the missing ones, or let the extra ones end
        after their piece (under the lock)."""
        self.client.throttle.set_ceiling(target)
        if target > self._live and self._live > 0:
            self._recut(target - self._live)
            self._spawn(target - self._live)
        self._cond.notify_all()

    def _has_work(self) -> bool:
        """Would a new connection find something to do (under the lock)?"""
        return bool(self._queue)

    def _recut(self, more: int) -> None:
        """Halve the longest queued pieces (at an allowed cut) until the queue has a piece for
        each of ``more`` new connections, or none can be halved leaving ``least`` on each
        side (under the lock): the re-cut of :meth:`prioritize`, for a count that grew."""
        least = max(self.take_min or ALIGN, ALIGN)
        pieces = list(self._queue)
        while len(pieces) < more:
            halves = ((p, _middle_cut(p, least))
                      for p in sorted(pieces, key=lambda p: p.start - p.end))
            longest, mid = next(((p, c) for p, c in halves if c is not None), (None, None))
            if longest is None or mid is None:
                break
            i = pieces.index(longest)
            pieces[i:i + 1] = [Piece(longest.span, longest.start, mid),
                               Piece(longest.span, mid, longest.end)]
        self._queue = deque(pieces)

    # -- the connections ------------------------------------------------------------------
    def _worker(self) -> None:
        session: requests.Session | None = None
        buffer: bytearray | None = None  # one per connection, reused for all its pieces
        try:
            while (piece := self._take()) is not None:
                session = session or make_session(1)
                buffer = buffer or bytearray(self.client.block)
                self._fetch(session, piece, buffer)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            with self._cond:
                self._live -= 1
                self._cond.notify_all()
            self.fail(exc)
        finally:
            if session is not None:
                session.close()

    def _take(self) -> Piece | None:
        """The next queued piece, else None once the queue is closed (waits for :meth:`put`
        while it is open), or when the pool runs more connections than its target (this one
        ends). The caller's thread then ends."""
        with self._cond:
            while not self.abort.is_set():
                if self._live > self.growth.target:
                    break
                piece = self._pop() if self._queue else None
                if piece is not None:
                    piece.index = self._taken
                    self._taken += 1
                    return piece
                if self._closed:
                    break
                self._cond.wait(0.1)
            self._live -= 1
            self._cond.notify_all()
            return None

    def _fetch(self, session: requests.Session, piece: Piece, buffer: bytearray) -> None:
        sink = self._sink
        assert sink is not None
        sink.begin(piece)
        complete = False

        def deliver(block: memoryview) -> None:
            at = piece.pos
            piece.pos = at + len(block)
            sink.data(piece, at, block)

        try:
            self.client.stream(session, piece.start, piece.end, deliver, buffer)
            complete = True
        finally:
            sink.end(piece, complete)

    def _pop(self) -> Piece:
        """The next queued piece; with ``take_min``, it is cut to about the queued bytes over
        the connections (never below ``take_min``; at the first allowed cut past that) and the
        rest stays first in the queue: pieces shrink as the queue drains, so the connections
        end together without cutting a request in flight (under the lock)."""
        piece = self._queue.popleft()
        if self.take_min is None:
            return piece
        queued = piece.end - piece.start + sum(p.end - p.start for p in self._queue)
        share = max(self.take_min, -(-queued // max(1, self._live)))
        cut = _cut_from(piece.span.cuts, piece.start + share, piece.end - self.take_min)
        if cut is not None:
            self._queue.appendleft(Piece(piece.span, cut, piece.end))
            piece.end = cut
        return piece


def _cut_from(cuts: tuple[int, ...] | None, at: int, hi: int) -> int | None:
    """The first place at or after ``at`` where a span with ``cuts`` may be cut (rounded up
    to :data:`ALIGN` where it may be cut anywhere), if it is at most ``hi``."""
    if cuts is None:
        cut = -(-at // ALIGN) * ALIGN
        return cut if cut <= hi else None
    i = bisect.bisect_left(cuts, at)
    return cuts[i] if i < len(cuts) and cuts[i] <= hi else None


def _middle_cut(p: Piece, least: int) -> int | None:
    """Where to halve queued ``p``, leaving at least ``least`` on each side; None if nowhere."""
    lo, hi = p.start + least, p.end - least
    if lo > hi:
        return None
    mid = p.start + (p.end - p.start) // 2
    if p.span.cuts is None:
        return max(lo, mid // ALIGN * ALIGN)
    return _nearest_cut(p.span.cuts, lo, hi, mid)


def _nearest_cut(cuts: tuple[int, ...], lo: int, hi: int, mid: int) -> int | None:
    """The cut in ``[lo, hi]`` nearest ``mid`` (the lower one of two as near); None if none.
    By bisection: a span of a whole zip may have a cut per member, and this runs under the
    pool's lock."""
    i = bisect.bisect_left(cuts, lo)
    j = bisect.bisect_right(cuts, hi)
    if i >= j:
        return None
    k = min(max(bisect.bisect_left(cuts, mid, i, j), i + 1), j - 1)
    if k == i:
        return cuts[i]
    below, above = cuts[k - 1], cuts[k]
    return below if mid - below <= above - mid else above
