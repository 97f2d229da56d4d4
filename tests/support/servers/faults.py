"""The faults :class:`~support.servers.fault_server.FaultServer` can inject, one dataclass each.

A fault says which requests it can act on (:meth:`Fault.applies`); the server picks at most one
fault of each ``kind`` per request, in the order they were added, and a :class:`FaultRule`
records where it is installed, how often it may still fire and how often it did. Faults hold
no server state, so one instance can be added to several servers or paths. To add one: a
dataclass here with a new ``kind``, and its effect in
:mod:`support.servers.fault_handler`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .common import s3_error
from .exchanges import Predicate, RequestInfo


class Fault:
    """Base class of the faults; each subclass says which requests it can apply to."""

    kind: str = "fault"

    def applies(self, req: RequestInfo) -> bool:
        return req.method == "GET"


@dataclass
class Reset(Fault):
    """Abort the connection with a TCP RST after ``after`` body bytes of this response.

    ``after`` may be a ``(lo, hi)`` range: each firing draws a number from it with a
    ``random.Random(seed)`` so a failing test replays. ``before_headers`` resets before the
    status line is sent (the client sees "connection reset" / "remote end closed" at once).
    The server waits (up to 1 s) for the bytes already written to leave its send queue so the
    client receives exactly ``after`` bytes, then closes with ``SO_LINGER`` 0.
    """

    after: int | tuple[int, int] = 0
    before_headers: bool = False
    seed: int = 0
    kind: str = field(default="reset", init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def applies(self, req: RequestInfo) -> bool:
        return self.before_headers or req.method == "GET"

    def draw(self) -> int:
        if isinstance(self.after, tuple):
            lo, hi = self.after
            return self._rng.randint(lo, hi)
        return self.after


@dataclass
class Status(Fault):
    """Answer ``code`` with ``headers`` and ``body`` instead of the object (any method)."""

    code: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    kind: str = field(default="status", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return True

    @classmethod
    def slow_down(cls, retry_after: int | None = 1) -> Status:
        """S3's throttling answer: 503 ``SlowDown`` (with ``Retry-After`` when given)."""
        headers = {"Content-Type": "application/xml"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return cls(503, headers, s3_error("SlowDown", "Please reduce your request rate."))

    @classmethod
    def internal_error(cls) -> Status:
        return cls(
            500,
            {"Content-Type": "application/xml"},
            s3_error("InternalError", "We encountered an internal error. Please try again."),
        )

    @classmethod
    def not_found(cls) -> Status:
        return cls(
            404,
            {"Content-Type": "application/xml"},
            s3_error("NoSuchKey", "The specified key does not exist."),
        )

    @classmethod
    def forbidden(cls) -> Status:
        return cls(403, {"Content-Type": "application/xml"}, s3_error("AccessDenied", "Denied"))


@dataclass
class Stall(Fault):
    """Send the headers and ``after`` body bytes, then nothing for ``seconds``, then close.

    A client without a read timeout hangs here; one with a timeout must fire it. With
    ``before_headers`` nothing at all is sent (also hits HEAD). ``seconds=None`` keeps the
    connection open until the server is closed, so only the client's own timeout can end the
    request. ``close()`` of the server ends a stall at once.
    """

    seconds: float | None = 30.0
    after: int = 0
    before_headers: bool = False
    kind: str = field(default="stall", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return self.before_headers or req.method == "GET"


@dataclass
class Hold(Fault):
    """Keep each request it hits unanswered (nothing sent, not counted as busy) until
    :meth:`release`; then ``then="serve"`` answers it normally, ``"drop"`` closes the
    connection without a byte (logged as ``"held"``). Once released it holds nothing more.

    A test that interrupts a command "while it transfers" holds the transfer, waits for
    :meth:`wait_held` (the command is then provably mid-work: a request of it is waiting),
    signals, then releases: no race with the command finishing first, whatever the machine's
    load. The only fault holding state of its own (its gate); :meth:`close` of the server
    ends a hold too.
    """

    then: Literal["serve", "drop"] = "serve"
    methods: tuple[str, ...] = ("GET",)
    kind: str = field(default="hold", init=False)
    _cond: threading.Condition = field(init=False, repr=False)
    _held: int = field(default=0, init=False, repr=False)
    _open: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()

    def applies(self, req: RequestInfo) -> bool:
        return req.method in self.methods

    @property
    def held(self) -> int:
        """How many requests this hold has caught so far (waiting or released)."""
        with self._cond:
            return self._held

    def wait_held(self, n: int = 1, timeout: float = 60.0) -> bool:
        """Wait until ``n`` requests have been caught; True if they were in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._held >= n, timeout)

    def release(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def wait(self, stop: threading.Event, timeout: float = 120.0) -> None:
        """(The server's side.) Count this request, then wait for the release (or ``stop``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._held += 1
            self._cond.notify_all()
            while not self._open and not stop.is_set() and time.monotonic() < deadline:
                self._cond.wait(0.05)


@dataclass
class IgnoreRange(Fault):
    """Answer 200 with the full body to a ``Range`` request (servers that do not do ranges)."""

    kind: str = field(default="ignore_range", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.ranged and req.method in ("GET", "HEAD")


@dataclass
class BadContentRange(Fault):
    """Answer 206 for a range shifted by ``shift`` bytes (header and body agree, request not).

    A client must compare ``Content-Range`` with what it asked for, not just trust 206.
    """

    shift: int = 1
    kind: str = field(default="bad_content_range", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.ranged and req.method in ("GET", "HEAD")


@dataclass
class ShortBody(Fault):
    """Send the correct ``Content-Length`` but only ``sent`` body bytes, then close (FIN).

    ``sent=None`` sends half the body. The client sees a clean EOF too early.
    """

    sent: int | None = None
    kind: str = field(default="short_body", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.method == "GET" and req.size is not None and req.end >= req.start

    def count(self, length: int) -> int:
        n = length // 2 if self.sent is None else self.sent
        return max(0, min(n, length - 1))


@dataclass
class ReplaceObject(Fault):
    """Replace the file's content with ``content`` (so its ETag changes) part-way through.

    ``after_requests=N``: the first N matching requests see the old object, later ones the new.
    ``after_bytes=N``: once N body bytes of this path were sent (counted from when the fault
    was added). Responses already streaming keep sending the old bytes, as S3 does for a GET
    in flight; the next request sees the new object. Fires once by nature.
    """

    content: bytes = b""
    after_requests: int | None = None
    after_bytes: int | None = None
    kind: str = field(default="replace_object", init=False)

    def __post_init__(self) -> None:
        if (self.after_requests is None) == (self.after_bytes is None):
            raise ValueError("ReplaceObject needs exactly one of after_requests, after_bytes")

    def applies(self, req: RequestInfo) -> bool:
        return True


@dataclass
class Throttle(Fault):
    """Send bodies at most ``bytes_per_second`` per connection (slow tests, benchmarks)."""

    bytes_per_second: int = 1024 * 1024
    kind: str = field(default="throttle", init=False)


@dataclass
class ExtraHeaders(Fault):
    """Add ``headers`` to a normal answer (200/206/HEAD): e.g. a ``Content-Disposition`` whose
    ``filename`` tries to choose where the client saves the file."""

    headers: Mapping[str, str] = field(default_factory=dict)
    kind: str = field(default="extra_headers", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return True


@dataclass
class Trickle(Fault):
    """Send ``after`` body bytes at full speed, then ``nbytes`` every ``every`` seconds.

    A body that never stalls long enough for a read timeout, yet would take forever: only a
    lowest-speed rule (curl's ``--speed-limit``) ends it. Stops when the client hangs up or
    the server is closed.
    """

    nbytes: int = 1
    every: float = 2.0
    after: int = 0
    kind: str = field(default="trickle", init=False)


@dataclass
class Redirect(Fault):
    """Answer ``code`` with ``Location: to`` (any method); ``to=None`` redirects the request to
    itself, a redirect loop. ``to="file:///etc/passwd"`` is what a hostile mirror might try."""

    to: str | None = None
    code: int = 302
    kind: str = field(default="redirect", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return True


@dataclass
class NoPartNumber(Fault):
    """Ignore ``?partNumber=`` (a mirror that copied S3's ETags but is no S3): the request is
    answered as if the query were absent (HEAD: the whole object's headers; GET: 200/206)."""

    kind: str = field(default="no_part_number", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.part_number is not None


@dataclass
class FlipByte(Fault):
    """Flip one byte of a GET body (XOR ``mask``): at object offset ``offset`` when the body
    covers it (only such bodies use up a firing), else (``offset=None``) in the body's middle.
    ``times=N`` on :meth:`FaultServer.add_fault`: the first N such bodies are damaged."""

    offset: int | None = None
    mask: int = 0x01
    kind: str = field(default="flip_byte", init=False)

    def applies(self, req: RequestInfo) -> bool:
        if req.method != "GET":
            return False
        return self.offset is None or req.start <= self.offset <= req.end

    def position(self, start: int, end: int) -> int:
        """The object offset to flip in a body of ``[start, end]`` (inclusive)."""
        return self.offset if self.offset is not None else (start + end) // 2


@dataclass
class CaptivePortal(Status):
    """A hotel/airport login page: 200 ``text/html`` of a few hundred bytes for every URL and
    method; ``etag=True`` adds the page's own MD5 ETag (which the page then matches)."""

    code: int = 200
    etag: bool = False

    def __post_init__(self) -> None:
        if not self.body:
            self.body = (
                b"<!DOCTYPE html>\n<html><head><title>Welcome to Hotel WiFi</title></head>"
                b"<body><h1>Please log in</h1><form method=post action=/login>"
                b"<input name=room><input name=surname type=text>"
                b"<button>Connect</button></form><p>Terms apply.</p></body></html>\n"
            )
        headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
        if self.etag:
            headers["ETag"] = f'"{hashlib.md5(self.body).hexdigest()}"'
        self.headers = {**headers, **dict(self.headers)}


@dataclass
class GzipBody(Fault):
    """A compressing proxy: 200 with ``Content-Encoding: gzip`` and the gzipped file (ranges
    ignored). ``etag``: "weak" (nginx's ``W/"..."`` of the object's ETag), "keep" or "none".
    ``head``: HEAD shows the same (else only GET bodies are encoded)."""

    etag: Literal["weak", "keep", "none"] = "weak"
    head: bool = True
    kind: str = field(default="gzip_body", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.method == "GET" or (self.head and req.method == "HEAD")


@dataclass
class PartSizeClaim(Fault):
    """Answer ``HEAD``/``GET ?partNumber=K`` with 206 and ``Content-Length: length`` (an absurd
    part size); pair with :class:`RewriteEtag` to claim any part count."""

    length: int = 1
    kind: str = field(default="part_size_claim", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.part_number is not None


@dataclass
class RewriteEtag(Fault):
    """Send another ETag (every method): ``style`` "weak" (``W/"<etag>"``), "unquoted"
    (``<etag>`` without quotes, as some CDNs do) or "value" (``value`` exactly). Conditional
    requests are judged against what is sent (a weak ETag never matches ``If-Match``)."""

    style: Literal["weak", "unquoted", "value"] = "weak"
    value: str | None = None
    kind: str = field(default="rewrite_etag", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return True

    def rewrite(self, etag: str | None) -> str | None:
        if self.style == "value":
            return self.value
        if etag is None:
            return None
        bare = etag.strip('"')
        return f'W/"{bare}"' if self.style == "weak" else bare


@dataclass
class BadLength(Fault):
    """Send ``value`` as the ``Content-Length`` of a normal answer (the body is the real one,
    and the connection closes after it). ``"\u00b2"`` (superscript two, one Latin-1 byte) is
    what ``str.isdigit`` accepts and ``int`` refuses."""

    value: str = "\u00b2"
    kind: str = field(default="bad_length", init=False)

    def applies(self, req: RequestInfo) -> bool:
        return req.method in ("GET", "HEAD")


@dataclass
class FaultRule:
    """A fault installed on a server: where, how often, for which requests; and its history.

    ``remaining`` is ``None`` for "forever". ``fired`` counts the requests it acted on.
    """

    fault: Fault
    path: str | None
    remaining: int | None
    when: Predicate | None
    fired: int = 0
    seen: int = 0
    bytes_base: int = 0
    done: bool = False
