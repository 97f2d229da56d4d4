"""The lowest-speed rule: a response body that trickles is a failed request, not a slow success.

Why a rule and not just the read timeout: the read timeout bounds the gap between two bytes, so
a server that sends one byte every two seconds never trips it and a 23 GB download would never
end. As curl's ``--speed-limit``/``--speed-time`` and aria2c's ``--lowest-speed-limit``: a
request that receives fewer than ``lowest_speed * speed_time`` bytes in any ``speed_time``
seconds fails, and is retried like any other failure (the caller also counts such bytes as no
progress, so a host that only trickles is given up after the retry window).

The check runs after every socket read, so reads must return as bytes arrive:
:func:`read_into` fills a block one socket read at a time (``readinto1``) instead of with
``read``, which blocks until the whole block is there (at 0.5 B/s, 256 KiB would take 6 days
per read).
Memory is a fixed ring of counters, whatever the speed.

With an overall cap (``--limit-rate``, :mod:`isic2020.transfer.ratelimit`) the guard is where
each read pays for its bytes; the seconds a read waited for the cap are taken off the guard's
clock, so our own pause never makes a healthy server look slow.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from isic2020.transfer.body import Reader
    from isic2020.transfer.ratelimit import RateLimit

#: Buckets per window: the measured rate is lenient by at most one bucket (10%).
_BUCKETS = 10


class TooSlow(Exception):
    """The body arrived slower than the lowest speed for the whole window."""


class SpeedGuard:
    """Watches one response body. ``lowest_speed`` <= 0 turns it off.

    ``healthy`` says whether the bytes so far arrive at or above the floor (measured over the
    window, or since the start when younger): callers count only such bytes as progress.
    """

    def __init__(
        self,
        lowest_speed: float,
        speed_time: float,
        clock: Callable[[], float] = time.monotonic,
        rate_limit: RateLimit | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        self.limit = max(0.0, lowest_speed)
        self.window = max(speed_time, 1e-3)
        self.width = self.window / _BUCKETS
        self._wall = clock
        #: Seconds spent waiting for ``rate_limit``: not the server's time.
        self.paused = 0.0
        self.rate_limit = rate_limit
        self.abort = abort
        self.start = clock()
        self._buckets: deque[list[float]] = deque()  # [bucket start, bytes]
        self.received = 0
        #: An error that broke a read after some bytes of a block had come: those bytes are
        #: handed out first, the error is raised by the next :func:`read_into`.
        self.pending: BaseException | None = None

    def clock(self) -> float:
        """The server's time: the wall clock less the pauses for ``rate_limit``."""
        return self._wall() - self.paused

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def feed(self, n: int) -> None:
        """Count ``n`` bytes that arrived now (and pay for them under ``rate_limit``)."""
        self.received += n
        if self.rate_limit is not None:
            self.paused += self.rate_limit.take(n, self.abort)
        if not self.enabled:
            return
        now = self.clock()
        slot = self.start + ((now - self.start) // self.width) * self.width
        if self._buckets and self._buckets[-1][0] == slot:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([slot, float(n)])
        horizon = now - self.window - self.width
        while self._buckets and self._buckets[0][0] < horizon:
            self._buckets.popleft()

    def _recent(self, now: float) -> float:
        """Bytes in about the last window (lenient: a bucket that overlaps it counts whole)."""
        edge = now - self.window - self.width
        return sum(b for t, b in self._buckets if t > edge)

    def too_slow(self) -> bool:
        """True once a whole window has passed below the floor."""
        if not self.enabled:
            return False
        now = self.clock()
        if now - self.start < self.window:
            return False
        return self._recent(now) < self.limit * self.window

    def healthy(self) -> bool:
        if not self.enabled:
            return True
        now = self.clock()
        span = min(self.window, max(now - self.start, 1e-3))
        return self._recent(now) >= self.limit * span

    def describe(self) -> str:
        return (
            f"slower than {format_rate(self.limit)} for {self.window:g} s "
            f"($ISIC2020_LOWEST_SPEED, $ISIC2020_SPEED_TIME)"
        )

    def check(self) -> None:
        """Raise :class:`TooSlow` when the window passed below the floor."""
        if self.too_slow():
            raise TooSlow(self.describe())


def read_into(reader: Reader, view: memoryview, guard: SpeedGuard, patience: float = 1.0
              ) -> int:
    """Fill ``view`` from ``reader`` (a :class:`~isic2020.transfer.body.BodyReader`); the
    bytes read. Fewer at the end of the body, after ``patience`` seconds (so a slow body still
    shows progress), or when ``guard`` finds it too slow (the caller keeps what came, then
    calls ``guard.check()``). 0 only at the end of the body. Bytes that came before a read
    broke (a timeout, a reset) are returned, the error raised at the next call: a retry
    resumes after them.
    """
    if guard.pending is not None:
        exc, guard.pending = guard.pending, None
        raise exc
    got = reader.readinto1(view)
    if not got:
        return 0
    guard.feed(got)
    size = len(view)
    if got >= size:
        return got
    deadline = guard.clock() + patience
    while got < size and not guard.too_slow() and guard.clock() < deadline:
        try:
            n = reader.readinto1(view[got:])
        except Exception as exc:
            guard.pending = exc
            break
        if not n:
            break
        guard.feed(n)
        got += n
    return got


def format_rate(bps: float) -> str:
    for unit, scale in (("MiB/s", 1 << 20), ("KiB/s", 1 << 10)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} B/s"


