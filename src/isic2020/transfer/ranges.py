"""Strict ranged GETs of one pinned object, resumed at the byte where a body broke.

Every request carries ``If-Match`` (or ``If-Unmodified-Since`` for a weak ETag) and must answer
206 with exactly the Content-Range asked for; otherwise it is a retry (a wrong range, a 5xx), a
changed object (``ObjectChanged``: 412/416, another ETag or size), a server that ignores ranges
(:class:`RangesIgnored`), or a failed host. Body reads are retried by us (urllib3 cannot resume
a broken body) from the first byte not yet delivered, so a sink sees every byte exactly once,
in order, whatever broke in between. A body slower than the lowest speed for its window fails
the request (``speed.py``) and halves the parallel requests, like a 503 SlowDown.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from isic2020.errors import Interrupted, ObjectChanged
from isic2020.transfer.body import BodyReader
from isic2020.transfer.digests import conditional_headers, normalize_etag
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import BLOCK
from isic2020.transfer.retry import (
    HostFailed,
    Retryable,
    RetryPolicy,
    RetryWindow,
    describe,
    network_errors,
    pause,
    redirect_errors,
    retry_after,
)
from isic2020.transfer.speed import SpeedGuard, TooSlow, read_into
from isic2020.transfer.throttle import Throttle

if TYPE_CHECKING:
    import requests

CONTENT_RANGE_RE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)$")


class RangesIgnored(HostFailed):
    """The server answered a ranged GET with the whole body (the engine falls back to one
    plain stream; where ranges are indispensable it is a failed host)."""

    def __init__(self) -> None:
        super().__init__("the server ignores byte ranges (answered 200 to a Range request)")


#: Receives each block of a body in order. The block is lent: a view of the client's buffer,
#: valid until the sink returns (a sink that keeps it copies it, ``bytes(block)``).
Sink = Callable[[memoryview], None]


class RangeClient:
    """Strict ranged GETs of one pinned object, retried from the byte where a body broke.

    The one place that asks for bytes by range: the engine's chunks (through ``RangePool``)
    and the remote zip's directory and members both go through :meth:`stream`.

    Invariants: ``transferred`` counts every body byte received; ``retries`` every retry; a
    host is given up only after the retry window without progress (``RetryWindow``), where a
    block counts as progress only if it arrived at the lowest speed or faster (or finished its
    range). Thread-safe; each thread passes its own session.
    """

    def __init__(
        self,
        url: str,
        size: int,
        etag: str | None,
        last_modified: str | None,
        *,
        timeouts: Timeouts,
        retry: RetryPolicy,
        throttle: Throttle | None = None,
        abort: threading.Event | None = None,
        on_bytes: Callable[[int], None] | None = None,
        block: int = BLOCK,
        validator: str | None = None,
    ) -> None:
        """``validator``: the ETag header as the server sent it (``If-Match`` sends it back
        unchanged; a weak one pins with ``If-Unmodified-Since`` instead, see ``digests``)."""
        self.url = url
        self.size = size
        self.etag = etag
        self.last_modified = last_modified
        self.conditions = conditional_headers(etag, last_modified, validator)
        self.timeouts = timeouts
        self.retry = retry
        self.throttle = throttle or Throttle(64)
        self.abort = abort or threading.Event()
        self.on_bytes = on_bytes
        self.block = block
        self.window = RetryWindow(retry)
        self.lock = threading.Lock()
        self.transferred = 0

    @property
    def retries(self) -> int:
        return self.window.retries

    def block_view(self, buffer: bytearray | None) -> memoryview:
        """The buffer a :meth:`stream` call reads its blocks into: ``buffer``, or a new one of
        ``self.block`` bytes."""
        return memoryview(buffer if buffer is not None else bytearray(self.block))

    def read(self, session: requests.Session, start: int, end: int) -> bytes:
        out = bytearray()
        self.stream(session, start, end, out.extend)
        return bytes(out)

    def stream(
        self,
        session: requests.Session,
        start: int,
        end: int,
        sink: Sink,
        buffer: bytearray | None = None,
    ) -> None:
        """Feed ``sink`` every byte of ``[start, end)`` exactly once, in order, across
        retries, in blocks read into ``buffer`` (its length is the largest block; by default
        one of ``self.block`` bytes for this call). A thread that streams many ranges passes
        its own buffer, so no block is allocated per range."""
        view = self.block_view(buffer)
        reached = [start]  # the first byte not yet delivered, advanced as blocks arrive
        attempt = 0
        while reached[0] < end:
            if self.abort.is_set():
                raise Interrupted("aborted")
            self.throttle.acquire(self.abort)
            ok = False
            before = reached[0]
            try:
                try:
                    self._request(session, reached, end, sink, view)
                finally:
                    if reached[0] > before:
                        attempt = 0
                ok = reached[0] >= end
                if not ok:
                    raise Retryable("connection closed before the range was complete")
            except Retryable as exc:
                self._note_retry(str(exc), exc.retry_after, exc.slowdown, attempt)
                attempt += 1
            except TooSlow as exc:  # fewer parallel requests may be what a slow link needs
                self._note_retry(str(exc), None, True, attempt)
                attempt += 1
            except redirect_errors() as exc:
                raise HostFailed(describe(exc)) from None
            except network_errors() as exc:
                self._note_retry(describe(exc), None, False, attempt)
                attempt += 1
            finally:
                self.throttle.release(ok)

    def _request(
        self,
        session: requests.Session,
        reached: list[int],
        end: int,
        sink: Sink,
        view: memoryview,
    ) -> None:
        """One checked GET of ``[reached[0], end)``, its body fed to ``sink`` block by block;
        ``reached[0]`` follows every block, so a break mid-body resumes at the broken byte."""
        pos = reached[0]
        headers = {"Range": f"bytes={pos}-{end - 1}", **self.conditions}
        with session.get(
            self.url, headers=headers, stream=True, timeout=self.timeouts.as_tuple()
        ) as resp:
            self._check(resp, pos, end)
            body = BodyReader(resp.raw)
            guard = SpeedGuard(self.timeouts.lowest_speed, self.timeouts.speed_time,
                               rate_limit=self.timeouts.rate_limit, abort=self.abort)
            while pos < end:
                if self.abort.is_set():
                    raise Interrupted("aborted")
                n = read_into(body, view[: min(len(view), end - pos)], guard)
                if not n:
                    return
                block = view[:n]
                pos += n
                reached[0] = pos
                # Trickled bytes are no progress: a host that only trickles is given up after
                # the retry window, like one that sends nothing. A finished range is progress
                # (a short one may not reach the rate at all).
                with self.lock:
                    self.transferred += n
                if pos >= end or guard.healthy():
                    self.window.progressed()
                if self.on_bytes is not None:
                    self.on_bytes(n)
                sink(block)
                guard.check()

    def _check(self, resp: requests.Response, pos: int, end: int) -> None:
        status = resp.status_code
        etag = normalize_etag(resp.headers.get("ETag"))
        if status in (200, 206) and self.etag and etag and etag != self.etag:
            raise ObjectChanged(f"{self.url}: ETag changed from {self.etag} to {etag}")
        if status == 206:
            enc = resp.headers.get("Content-Encoding", "identity").lower()
            if enc not in ("identity", ""):
                raise HostFailed(f"server sent Content-Encoding {enc} despite identity")
            m = CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
            if not m:
                raise Retryable("206 without a valid Content-Range")
            a, b, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if total != "*" and int(total) != self.size:
                raise ObjectChanged(f"{self.url}: object size changed to {total}")
            if a != pos or b != end - 1:
                raise Retryable(
                    f"Content-Range {a}-{b} does not match the request {pos}-{end - 1}"
                )
            return
        if status == 200:
            raise RangesIgnored()
        if status in (412, 416):
            raise ObjectChanged(f"{self.url}: HTTP {status} to a conditional range request")
        if status in (429, 503):
            raise Retryable(f"HTTP {status} (slow down)", retry_after(resp), slowdown=True)
        if status >= 500 or status == 408:
            raise Retryable(f"HTTP {status}", retry_after(resp))
        raise HostFailed(f"HTTP {status}")

    def _note_retry(
        self, why: str, retry_after: float | None, slowdown: bool, attempt: int
    ) -> None:
        self.window.note(why)
        delay = self.retry.delay(attempt, retry_after)
        if slowdown:
            self.throttle.slowdown(delay)
        pause(delay, self.abort)
