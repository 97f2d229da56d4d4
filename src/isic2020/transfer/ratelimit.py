"""One overall download rate (``--limit-rate``), shared by every connection of a fetch.

Like aria2c's ``--max-overall-download-limit`` and curl's ``--limit-rate``: the cap is on the
sum of all connections and all files, not per connection, so ``-c 16 --limit-rate 10M`` still
takes 10 MiB/s of the user's link, not 160.

A token bucket: tokens accrue at ``rate`` bytes/s up to ``burst`` (half a second's worth, at
least one socket read), a reader takes what it received and, when that leaves the bucket in
debt, sleeps until the debt is paid. Taking after the read (not before) lets a reader ask for
as much as the socket has; the debt makes the long-run rate exact all the same. Slowing the
reads fills the TCP receive window, so the server slows down too: no byte is dropped.

Invariants: thread-safe (one lock, held only for arithmetic, never while sleeping); a sleep
ends early when the caller's abort event is set, so Ctrl-C is never held up by the limit;
the time a reader spent waiting here is returned, so the lowest-speed rule
(:mod:`isic2020.transfer.speed`) does not blame the server for our own pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The bucket holds at most this many seconds of the rate (and never less than one read).
BURST_SECONDS = 0.5
MIN_BURST = 256 * 1024


class RateLimit:
    """A shared cap of ``rate`` bytes/s over every reader that :meth:`take` s from it."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.rate = float(rate)
        self.burst = max(float(MIN_BURST), self.rate * BURST_SECONDS)
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._at = clock()
        #: Bytes taken in all (what the cap was applied to).
        self.taken = 0

    def __repr__(self) -> str:
        return f"RateLimit({self.rate:g} B/s)"

    def take(self, n: int, abort: threading.Event | None = None) -> float:
        """Count ``n`` bytes just received; sleep while the bucket is in debt. Returns the
        seconds slept (0.0 when within the rate)."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            self.taken += n
            debt = -self._tokens
        if debt <= 0:
            return 0.0
        wait = debt / self.rate
        if abort is not None:
            abort.wait(wait)
        else:
            time.sleep(wait)
        return wait
