"""The connection throttle: additive increase, multiplicative decrease (AIMD).

Invariants: at most ``limit`` requests are in flight (``1 <= limit <= max``); a 503 SlowDown or
429 (or a body below the lowest speed) halves ``limit`` and holds every new request until the
pause the server asked for is over; every fourth request that succeeds raises it by one again,
up to ``max``. ``max`` is the pool's connection count, which an adaptive pool raises
(:meth:`set_ceiling`); ``slowdowns`` counts the throttling answers, so that it stops growing.
Why: S3 answers an overload of one prefix with SlowDown, and hammering it with
the same parallelism only earns more of them.
"""

from __future__ import annotations

import logging
import threading
import time

from isic2020.errors import Interrupted

_LOG = logging.getLogger(__name__)


class Throttle:
    """Caps requests in flight; halves the cap and pauses everyone on 503 SlowDown / 429."""

    def __init__(self, limit: int) -> None:
        self.max = limit
        self.limit = limit
        self.active = 0
        self.pause_until = 0.0
        self.slowdowns = 0
        self._ok = 0
        self._cond = threading.Condition()

    def acquire(self, abort: threading.Event) -> None:
        """Wait for a free slot (and the end of a pause); Interrupted when ``abort`` is set."""
        with self._cond:
            while True:
                if abort.is_set():
                    raise Interrupted("aborted")
                wait = self.pause_until - time.monotonic()
                if self.active < self.limit and wait <= 0:
                    self.active += 1
                    return
                self._cond.wait(timeout=min(0.2, wait) if wait > 0 else 0.2)

    def release(self, ok: bool) -> None:
        """A request ended; ``ok``: it got everything it asked for."""
        with self._cond:
            self.active -= 1
            if ok and self.limit < self.max:
                self._ok += 1
                if self._ok >= 4:
                    self.limit += 1
                    self._ok = 0
                    _LOG.debug("throttle: up to %d connections", self.limit)
            self._cond.notify_all()

    def set_ceiling(self, ceiling: int) -> None:
        """The pool now runs ``ceiling`` connections: more of them add as many slots, fewer
        lower the cap with them."""
        with self._cond:
            ceiling = max(1, ceiling)
            if ceiling > self.max:
                self.limit += ceiling - self.max
            self.max = ceiling
            self.limit = min(self.limit, ceiling)
            self._cond.notify_all()

    def slowdown(self, delay: float) -> None:
        """Halve the cap and hold new requests for ``delay`` seconds."""
        with self._cond:
            self.slowdowns += 1
            self.limit = max(1, self.limit // 2)
            self._ok = 0
            self.pause_until = max(self.pause_until, time.monotonic() + delay)
        _LOG.debug("throttle: the server asked to slow down; %d connections, pausing %.1fs",
                   self.limit, delay)
