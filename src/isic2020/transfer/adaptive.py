"""How many connections a range pool runs: more while the aggregate rate rises, never past a cap.

Why: a server that caps each stream (S3 does, per connection) is only fast in aggregate, and
where its cap lies, and how many streams the client's machine and link can feed, is found only
by trying. A fixed count is either too few for a capped server or too many for a slow link.

The rule (:class:`Growth`, pure arithmetic, no threads: the pool asks it once per window):

- start at ``start`` connections; each window the pool reports the aggregate rate (body bytes
  per second over the whole window);
- add ``k`` more (as many as run, at least :data:`MIN_STEP`, up to ``ceiling``) when
  there is work for them; keep them when the next window's rate rose by at least
  :data:`GAIN` of what linear scaling would give (``k / n``), else go back to the count
  before: a rate that does not rise means the bottleneck is elsewhere (the link, the disk,
  the CPU), and more connections only cost the server;
- a trial window whose rate *fell* below the rate before the step says nothing about the
  step (more connections to a capped server do not lower the aggregate; a machine busy for a
  moment does: the directory of a streamed zip being parsed, its unpacking starting), so the
  trial runs one more window, which decides;
- after a step that did not pay, try the same step again only after :data:`RETRY_WINDOWS`
  windows, twice as many after each further one (at most :data:`MAX_RETRY_WINDOWS`): one
  window is a small sample, and a machine that was busy for a moment (the unpacking of a
  streamed zip starting, another process) would otherwise hold a capped download at half
  its rate for the rest of a 23 GB file, while retrying costs the server one window of the
  extra connections each time, ever more rarely;
- a throttling answer (503 SlowDown, 429, a body below the lowest speed: the throttle counts
  them) stops growing for good and withdraws the last step; the throttle's own AIMD (halving,
  then slow additive increase back up to the count here) does the rest;
- ``start == ceiling`` (``--connections N``) is a fixed count: no step is ever taken.

Invariants: ``start <= target <= ceiling`` until a withdrawal, and ``1 <= target`` always;
once stopped (throttled), the target never rises again.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds per measuring window: long enough for new connections to reach their rate (a first
#: byte over the Internet takes ~0.1 s), short enough that a 400 MB file still profits.
WINDOW = 0.5
#: The least number of connections one step adds.
MIN_STEP = 4
#: A step is kept when the rate rose by at least this share of ``k / n`` (linear scaling).
GAIN = 0.25
#: Windows to wait before trying again a step that did not pay (doubled after each failure).
RETRY_WINDOWS = 4
#: The longest wait between two trials of a step (in windows: 16 s).
MAX_RETRY_WINDOWS = 32


@dataclass
class Growth:
    """The connection count of one pool (see the module)."""

    start: int
    ceiling: int
    gain: float = GAIN
    target: int = 0
    stopped: bool = False
    retry_in: int = 0  # windows left before the next trial (after a step that did not pay)
    _base: float | None = None  # the rate at the count before the step in trial
    _before: int = 0  # the count before the step in trial (0: none in trial)
    _backoff: int = RETRY_WINDOWS  # the wait after the next step that does not pay
    _again: bool = False  # the step in trial is measured a second window (the first fell)

    def __post_init__(self) -> None:
        self.start = max(1, self.start)
        self.ceiling = max(self.start, self.ceiling)
        self.target = self.start
        self.stopped = self.start >= self.ceiling

    @property
    def fixed(self) -> bool:
        return self.start >= self.ceiling

    def window(self, rate: float, has_work: bool) -> int:
        """A window ended with the aggregate ``rate`` (bytes/s); the count to run now.

        ``has_work``: there are queued spans or pieces in flight long enough to split, so
        more connections would have something to do."""
        if self.stopped:
            return self.target
        if self._before:
            n, k = self._before, self.target - self._before
            base = self._base or 0.0
            if rate < base and not self._again:
                self._again = True  # inconclusive: the same count, one more window
                return self.target
            self._before, self._again = 0, False
            if rate < base * (1 + self.gain * k / n):
                self.target = n  # withdrawn: the same step is tried again later
                self.retry_in = self._backoff
                self._backoff = min(2 * self._backoff, MAX_RETRY_WINDOWS)
                return self.target
        self._base = rate
        if self.retry_in:
            self.retry_in -= 1
        elif has_work and rate > 0 and self.target < self.ceiling:
            step = min(self.ceiling - self.target, max(MIN_STEP, self.target))
            self._before = self.target
            self.target += step
        return self.target

    def throttled(self) -> int:
        """The server asked for fewer requests: withdraw the step in trial, grow no more."""
        if self._before:
            self.target = self._before
        self._before, self._again = 0, False
        self.stopped = True
        return self.target
