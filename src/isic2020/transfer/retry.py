"""How hard to try a host, and when to give it up.

Invariants:
- a retry waits ``RetryPolicy.delay``: exponential backoff with full jitter, or the server's
  ``Retry-After`` (never longer than the window);
- a host is given up (:class:`HostFailed`) only after ``RetryPolicy.window`` seconds without
  progress (:class:`RetryWindow`), or at once for what asking again cannot change (a redirect
  loop, a redirect to anything but http(s)): the next host or mirror then takes over;
- every wait ends early when the transfer's abort event is set (``Interrupted``).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from isic2020.errors import Interrupted
from isic2020.transfer.http import RedirectRefused

if TYPE_CHECKING:
    import requests

_LOG = logging.getLogger(__name__)


@functools.cache
def network_errors() -> tuple[type[BaseException], ...]:
    """What a retry may cure: the network, not the server's answer. (A function: requests is
    imported by the first request, not by importing the engine.)"""
    import requests
    import urllib3

    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
    )


@functools.cache
def redirect_errors() -> tuple[type[BaseException], ...]:
    """Where a host sends us cannot change by asking again: a failed host at once, then the
    next. (Caught before :func:`network_errors`, which holds :class:`RedirectRefused` too.)"""
    import requests

    return (
        RedirectRefused,
        requests.TooManyRedirects,
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. ``window``: seconds without any progress before a host is given up."""

    base: float = 0.5
    cap: float = 20.0
    window: float = 300.0
    probe_attempts: int = 3
    object_restarts: int = 3

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.window)
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * (2**attempt))


class HostFailed(Exception):
    """This host cannot give us this file (after retries); try the next one."""


class Retryable(Exception):
    """An answer worth asking again for: after ``retry_after`` seconds if the server said so;
    ``slowdown``: the server asked for fewer requests (503 SlowDown, 429)."""

    def __init__(self, msg: str, retry_after: float | None = None, slowdown: bool = False):
        super().__init__(msg)
        self.retry_after = retry_after
        self.slowdown = slowdown


class RetryWindow:
    """The retries of one transfer and the time of its last progress, shared by its threads.

    Invariants: ``retries`` counts every retry noted, ``last_error`` is the latest one's
    reason; ``last_progress`` only moves forward, and :meth:`note` raises HostFailed once it
    is more than ``policy.window`` seconds old. All under ``lock``.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.lock = threading.Lock()
        self.retries = 0
        self.last_error = ""
        self.last_progress = time.monotonic()

    def progressed(self) -> None:
        with self.lock:
            self.last_progress = time.monotonic()

    def note(self, why: str) -> None:
        """Count a retry; give the host up when nothing progressed for the window."""
        with self.lock:
            self.retries += 1
            self.last_error = why
            stalled = time.monotonic() - self.last_progress
            n = self.retries
        _LOG.debug("retry %d: %s", n, why)
        if stalled > self.policy.window:
            raise HostFailed(f"no progress for {stalled:.0f}s (last error: {why})")


def pause(delay: float, abort: threading.Event) -> None:
    """Sleep ``delay`` seconds, or raise Interrupted as soon as ``abort`` is set."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if abort.is_set():
            raise Interrupted("aborted")
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def retry_after(resp: requests.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), else None."""
    raw = resp.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def describe(exc: BaseException) -> str:
    """A network error in words a user can act on (one line)."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.TooManyRedirects):
        return f"redirect loop ({text or 'too many redirects'})"
    if isinstance(exc, RedirectRefused):
        return text
    if isinstance(exc, requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema):
        return f"redirected to an unusable URL ({text[:120]})"
    if "Name or service not known" in text or "NameResolution" in text or "getaddrinfo" in text:
        return "host name could not be resolved (DNS)"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout) or "timed out" in text:
        return "timed out"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS certificate verification failed"
    if "Connection reset by peer" in text or "ConnectionResetError" in text:
        return "connection reset by the server"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection closed before the body was complete"
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:160]
