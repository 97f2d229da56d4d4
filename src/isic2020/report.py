"""How sizes, counts, reports and progress look to a user, in one place.

Sizes are decimal (``23.1 MB``), as the dataset's published sizes and ``df -H`` are, and the
progress bars count in the same units, so a bar and the summary under it never disagree
(MiB in one, MB in the other). Bars go to stderr and only when asked (not ``--quiet``); tqdm
is imported only then, so the CLI starts fast without it.

Why the bars live here and nowhere else (``progress_bar`` is the one factory):

- On a terminal a bar is tqdm's, with two changes. Its rate is measured over the last few
  seconds and it is redrawn on a timer (:class:`_Ticker`), so a stalled transfer shows its rate
  falling to 0 instead of a frozen line with the last good rate. A message printed while bars
  are drawn goes through :func:`write_line` (tqdm's lock: the bars are cleared, the line
  printed, the bars redrawn), so no log line lands inside a bar.
- When stderr is not a terminal (CI logs) nothing is redrawn in place: at most one plain line
  per :func:`configure` interval (default 30 s), e.g.
  ``isic2020: train jpeg: 1.2 GB of 23.1 GB (5%), 41.0 MB/s, ETA 9 min, 1,204 images unpacked``.
- A command that moves several files (``fetch``) opens an :func:`overall` tracker: the bytes
  of every file whose bar appears while it is open are summed into one line with an ETA, and
  the images written (:func:`count_images`) are counted beside them. It reads its files' bars
  on the timer, so the download threads pay nothing for it.

The CLI chooses the interval and the mode (:func:`configure`); the library never prints a
bar unless its caller asked for progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, TypeVar

_UNITS = ("B", "KB", "MB", "GB", "TB")
#: Seconds between two plain progress lines when the CLI does not say.
PLAIN_INTERVAL = 30.0
#: Seconds the rate of a bar looks back (a stall shows as a falling rate within this).
RATE_WINDOW = 5.0
_TICK = 0.5  # seconds between two redraws of the bars on a terminal


def human_size(n: float) -> str:
    """``0 B``, ``999 B``, ``1.0 KB`` ... ``23.1 GB``: decimal units, one decimal past bytes."""
    for unit in _UNITS:
        if abs(n) < 1000 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``: counts in messages read as a person would write them."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def human_duration(seconds: float) -> str:
    """``40 s``, ``9 min``, ``2 h 5 min``: an ETA as a person says it."""
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    minutes = (s + 30) // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class _Display:
    """How bars show: ``plain`` lines (None: when stderr is not a terminal), how often."""

    interval: float = PLAIN_INTERVAL
    plain: bool | None = None

    def is_plain(self) -> bool:
        if self.plain is not None:
            return self.plain
        isatty = getattr(sys.stderr, "isatty", None)
        return not (isatty is not None and isatty())


_DISPLAY = _Display()


def configure(interval: float | None = None, plain: bool | None = None) -> None:
    """The CLI's choice: seconds between plain lines, and plain lines or tqdm (None: plain
    when stderr is not a terminal)."""
    _DISPLAY.interval = PLAIN_INTERVAL if interval is None else interval
    _DISPLAY.plain = plain


class _Rate:
    """Units per second over the last :data:`RATE_WINDOW` seconds, from samples of a count."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.lock = threading.Lock()  # a bar is drawn by the timer and by its updaters

    def rate(self, n: float, now: float) -> float | None:
        with self.lock:
            return self._rate(n, now)

    def _rate(self, n: float, now: float) -> float | None:
        s = self.samples
        if not s or n < s[-1][1]:  # the first sample, or the count went back (a reset)
            s.clear()
            s.append((now, n))
            return None
        if now - s[-1][0] >= _TICK / 2:
            s.append((now, n))
        while len(s) > 2 and now - s[1][0] >= RATE_WINDOW:
            s.popleft()
        t0, n0 = s[0]
        return (n - n0) / (now - t0) if now - t0 >= 0.1 else None


def _plain_line(desc: str, n: float, total: float | None, unit: str, rate: float | None,
                images: int | None = None) -> str:
    """``train jpeg: 1.2 GB of 23.1 GB (5%), 41.0 MB/s, ETA 9 min, 1,204 images unpacked``."""
    def amount(x: float, named: bool = True) -> str:
        if unit == "B":
            return human_size(x)
        return f"{int(x):,} {unit}" if named else f"{int(x):,}"

    parts = [f"{amount(n, False)} of {amount(total)} ({100 * n / total:.0f}%)" if total
             else amount(n)]
    if rate is not None:
        parts.append(f"{human_size(rate)}/s" if unit == "B" else f"{rate:.1f} {unit}/s")
        if total and n < total:
            parts.append(f"ETA {human_duration((total - n) / rate)}" if rate > 0
                         else "ETA unknown (stalled)")
    text = f"{desc}: {', '.join(parts)}"
    if images is not None:
        text += f", {plural(images, 'image')} unpacked"
    return text


class _Quiet:
    """A bar that draws nothing: it counts, for its own plain lines or for the overall."""

    def __init__(self, total: int | None, desc: str, unit: str, lines: bool) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.lines = lines  # its own plain lines (False: an overall tracker reports it)
        self.rate = _Rate()
        self.last_line = time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        _TICKER.remove(self)

    def tick(self, now: float) -> None:
        rate = self.rate.rate(self.n, now)
        if self.lines and now - self.last_line >= _DISPLAY.interval:
            self.last_line = now
            write_line(f"isic2020: {_plain_line(self.desc, self.n, self.total, self.unit, rate)}")


_BAR_CLASS: Any = None


def _bar_class() -> Any:
    """tqdm with a windowed rate (a stall shows as 0) and a hook for the timer (lazily)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm import tqdm

        class Bar(tqdm):  # type: ignore[misc,type-arg]
            live_rate: _Rate | None = None

            @property
            def format_dict(self) -> dict[str, Any]:
                d = super().format_dict
                if self.live_rate is not None:
                    d["rate"] = self.live_rate.rate(self.n, time.monotonic())
                return d

            def tick(self, now: float) -> None:
                self.refresh()

            def close(self) -> None:
                _TICKER.remove(self)
                self.live_rate = None  # the closing line shows the average rate
                super().close()

        _BAR_CLASS = Bar
    return _BAR_CLASS


def progress_bar(total: int | None, desc: str, *, unit: str = "B", leave: bool = False) -> Any:
    """One bar: bytes in decimal units (like :func:`human_size`), or counted items. Its
    bytes count in the :func:`overall` tracker when one is open and expects ``desc``."""
    tracker = _OVERALL
    counted = tracker is not None and unit == "B" and tracker.adopt(desc)
    if _DISPLAY.is_plain():
        bar: Any = _Quiet(total, desc, unit, lines=tracker is None)
    else:
        bar = _bar_class()(total=total, unit=unit, unit_scale=unit == "B", unit_divisor=1000,
                           desc=desc, leave=leave, dynamic_ncols=True, mininterval=0.5)
        bar.live_rate = _Rate()
    if counted:
        assert tracker is not None
        tracker.children.append(bar)
    _TICKER.add(bar)
    return bar


class Overall:
    """Every file of one command in one line (see the module docstring)."""

    def __init__(self, desc: str, expected: dict[str, int]) -> None:
        self.desc = desc
        self.expected = dict(expected)  # name -> bytes, until that file's bar appears
        self.children: list[Any] = []
        self.images = 0
        self.pid = os.getpid()  # a forked worker's copy counts nothing
        self.lock = threading.Lock()
        self.rate = _Rate()
        self.last_line = time.monotonic()
        self.bar: Any = None
        if not _DISPLAY.is_plain():
            self.bar = _bar_class()(total=sum(self.expected.values()), unit="B",
                                    unit_scale=True, unit_divisor=1000, desc=desc, leave=False,
                                    dynamic_ncols=True, mininterval=0.5)
            self.bar.live_rate = _Rate()

    def adopt(self, name: str) -> bool:
        with self.lock:
            return self.expected.pop(name, None) is not None

    def forget(self, name: str) -> None:
        """``name`` is done without a bar of its own (adopted, found whole): out of the sum."""
        with self.lock:
            self.expected.pop(name, None)

    def add_images(self, n: int) -> None:
        if os.getpid() == self.pid:
            with self.lock:
                self.images += n

    def counts(self) -> tuple[int, int]:
        """(bytes done, bytes in all) so far."""
        with self.lock:
            children, pending = list(self.children), sum(self.expected.values())
        done = sum(int(c.n) for c in children)
        return done, pending + sum(int(c.total or c.n) for c in children)

    def tick(self, now: float) -> None:
        done, total = self.counts()
        if self.bar is not None:
            self.bar.total, self.bar.n = total, done
            self.bar.set_postfix_str(f"{plural(self.images, 'image')} unpacked", refresh=False)
            self.bar.refresh()
            return
        rate = self.rate.rate(done, now)
        if now - self.last_line >= _DISPLAY.interval:
            self.last_line = now
            write_line(f"isic2020: {_plain_line(self.desc, done, total, 'B', rate, self.images)}")

    def close(self) -> None:
        _TICKER.remove(self)
        if self.bar is not None:
            self.bar.close()


_OVERALL: Overall | None = None


@contextlib.contextmanager
def overall(desc: str, expected: dict[str, int], enabled: bool = True) -> Iterator[None]:
    """While open, the bars named in ``expected`` (name -> bytes to move) add up in one
    line; ``enabled`` False (no progress asked) opens nothing."""
    global _OVERALL
    if not enabled or _OVERALL is not None:
        yield
        return
    tracker = Overall(desc, expected)
    _OVERALL = tracker
    _TICKER.add(tracker)
    try:
        yield
    finally:
        _OVERALL = None
        tracker.close()


def count_images(n: int = 1) -> None:
    """``n`` images were written: the open :func:`overall` tracker counts them (cheap; a
    no-op without one)."""
    tracker = _OVERALL
    if tracker is not None:
        tracker.add_images(n)


def file_done(name: str) -> None:
    """The command is done with ``name``: if no bar of it appeared (nothing had to move),
    the open :func:`overall` tracker stops waiting for its bytes."""
    tracker = _OVERALL
    if tracker is not None:
        tracker.forget(name)


def write_line(text: str) -> None:
    """One line on stderr that never lands inside a bar (tqdm's lock when bars are drawn)."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and _TICKER.drawing():
        tqdm.tqdm.write(text, file=sys.stderr)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class _Ticker:
    """One daemon thread that ticks every live bar (redraw, plain line) twice a second."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="isic2020-progress",
                                               daemon=True)
                self.thread.start()

    def remove(self, item: Any) -> None:
        with self.lock:  # by identity: tqdm's == compares bars by position
            self.items = [i for i in self.items if i is not item]

    def drawing(self) -> bool:
        with self.lock:
            return any(not isinstance(i, (_Quiet, Overall)) or getattr(i, "bar", None)
                       for i in self.items)

    def _run(self) -> None:
        while True:
            time.sleep(min(_TICK, _DISPLAY.interval))
            with self.lock:
                items = list(self.items)
            if not items:
                with self.lock:
                    if not self.items:
                        self.thread = None
                        return
                continue
            now = time.monotonic()
            for item in items:
                with contextlib.suppress(Exception):  # a display never fails a transfer
                    item.tick(now)


_TICKER = _Ticker()


T = TypeVar("T")

_SCALARS = (str, int, float, bool, type(None))


def _short(value: Any) -> str:
    """A field's value as a repr shows it: scalars as they are, a long string cut, a table by
    its shape, a collection by its length unless it is a few scalars."""
    if hasattr(value, "shape") and hasattr(value, "columns"):  # a pandas DataFrame
        return f"<{type(value).__name__} {value.shape[0]} rows x {value.shape[1]} columns>"
    if isinstance(value, float):
        return repr(round(value, 3))
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.values()) if isinstance(value, dict) else list(value)
        text = repr(value)
        if len(items) <= 4 and all(isinstance(v, _SCALARS) for v in items) and len(text) <= 80:
            return text
        return f"<{len(items)} {'item' if len(items) == 1 else 'items'}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"<{type(value).__name__}>"
    return repr(value)


def readable_repr(cls: type[T]) -> type[T]:
    """Give a report dataclass a repr a person can read in a notebook: every field, but lists
    of checks, rows or files as their count (``checks=<12 items>``), never pages of them."""

    def __repr__(self: Any) -> str:
        shown = [f"{f.name}={_short(vars(self)[f.name])}"
                 for f in dataclasses.fields(self) if f.repr]
        return f"{type(self).__name__}({', '.join(shown)})"

    cls.__repr__ = __repr__  # type: ignore[assignment,method-assign]
    return cls
