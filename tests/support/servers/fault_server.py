"""Real HTTP servers on 127.0.0.1 for the tests: never a mocked ``requests``.

Three servers, each a different kind of truth:

* :class:`FaultServer` -- a pure-Python server that behaves like S3 (ranges, ETags incl.
  multipart, ``?partNumber=``, conditional requests) and breaks *on purpose*: connection resets,
  error statuses, stalls, wrong ranges, short bodies, objects replaced mid-download, throttling.
  It counts every body byte it sends so tests can prove "resume did not re-download".
* :class:`NginxServer` -- a real nginx (sendfile, its own ETags and range code), so the client is
  also checked against a server we did not write.
* :class:`S3Server` -- moto's S3 in server mode, for what boto3-created objects look like
  (real multipart ETags, S3 error XML).

Everything listens on 127.0.0.1 only; nothing here touches the network.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import email.utils
import fcntl
import gzip
import hashlib
import http.server
import logging
import mimetypes
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import termios
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeAlias

__all__ = [
    "DNS_FAIL_URL",
    "BadContentRange",
    "CaptivePortal",
    "Fault",
    "FlipByte",
    "GzipBody",
    "FaultRule",
    "FaultServer",
    "IgnoreRange",
    "LoggedRequest",
    "NginxLogEntry",
    "NginxServer",
    "Redirect",
    "NoPartNumber",
    "PartSizeClaim",
    "ReplaceObject",
    "RequestInfo",
    "Reset",
    "RewriteEtag",
    "S3Server",
    "ShortBody",
    "Stall",
    "Status",
    "Throttle",
    "Trickle",
    "free_port",
    "multipart_etag_of",
    "method_is",
    "not_ranged",
    "part_requested",
    "range_starts_at_or_after",
    "ranged",
    "refused_url",
    "unresolvable_url",
]

EtagMode: TypeAlias = Literal["md5", "multipart", "opaque", "none"]
ETAG_MODES: tuple[str, ...] = ("md5", "multipart", "opaque", "none")
DEFAULT_PART_SIZE = 8 * 1024 * 1024  # what the AWS CLI / boto3 use by default
CHUNK = 256 * 1024
#: A URL whose host never resolves: ``.invalid`` is reserved (RFC 2606/6761) and resolvers must
#: answer NXDOMAIN without asking anyone, so it fails fast and never hits a real host.
DNS_FAIL_URL = "http://no-such-host.invalid/challenges/2020/"

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# helpers usable on their own
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """An ephemeral port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_url(path: str = "/challenges/2020/") -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting fails at once (ECONNREFUSED).

    The port was bound and released; on loopback nothing else grabs it within a test.
    """
    return f"http://127.0.0.1:{free_port()}{path}"


def unresolvable_url(path: str = "/challenges/2020/") -> str:
    """A URL whose host name fails DNS resolution quickly (see :data:`DNS_FAIL_URL`)."""
    return "http://no-such-host.invalid" + path


def multipart_etag_of(data: bytes, part_size: int) -> str:
    """S3's multipart ETag (unquoted) of ``data`` uploaded in parts of ``part_size`` bytes."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


def _s3_error(code: str, message: str, **extra: Any) -> bytes:
    """An S3-style XML error body (clients may log or parse it)."""
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{inner}"
        "<RequestId>FAULTSERVER</RequestId></Error>"
    ).encode()


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# --------------------------------------------------------------------------------------------
# what a fault sees
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestInfo:
    """One incoming request, as fault predicates see it (before anything is sent).

    ``start``/``end`` are the resolved byte range (inclusive) when the request carries a
    satisfiable single ``Range``; for a plain GET they are ``0`` and ``size - 1``.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    size: int | None
    ranged: bool
    start: int
    end: int
    part_number: int | None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


Predicate: TypeAlias = Callable[[RequestInfo], bool]


def ranged(req: RequestInfo) -> bool:
    """Predicate: the request has a satisfiable ``Range`` header."""
    return req.ranged


def not_ranged(req: RequestInfo) -> bool:
    """Predicate: a request for the whole object."""
    return not req.ranged and req.part_number is None


def range_starts_at_or_after(offset: int) -> Predicate:
    """Predicate: the requested bytes start at ``offset`` or later (a resumed/later chunk)."""
    return lambda req: (req.ranged or req.part_number is not None) and req.start >= offset


def method_is(method: str) -> Predicate:
    """Predicate: the HTTP method is ``method`` (``"GET"``, ``"HEAD"``)."""
    return lambda req: req.method == method.upper()


def part_requested(req: RequestInfo) -> bool:
    """Predicate: the request carries ``?partNumber=``."""
    return req.part_number is not None


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------


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
        return cls(503, headers, _s3_error("SlowDown", "Please reduce your request rate."))

    @classmethod
    def internal_error(cls) -> Status:
        return cls(
            500,
            {"Content-Type": "application/xml"},
            _s3_error("InternalError", "We encountered an internal error. Please try again."),
        )

    @classmethod
    def not_found(cls) -> Status:
        return cls(
            404,
            {"Content-Type": "application/xml"},
            _s3_error("NoSuchKey", "The specified key does not exist."),
        )

    @classmethod
    def forbidden(cls) -> Status:
        return cls(403, {"Content-Type": "application/xml"}, _s3_error("AccessDenied", "Denied"))


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


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw and answered it (after it finished or broke off)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    status: int | None
    bytes_sent: int
    faults: tuple[str, ...]
    outcome: str  # "ok", "reset", "stall", "short_body", "client_gone"
    #: ``time.monotonic()`` when the request's headers were read (one clock for the whole
    #: machine, so a test can compare it with its own): gaps between requests show backoff.
    arrived: float = 0.0
    #: the client's TCP port: requests with the same ``peer`` came over one connection.
    peer: int = 0

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


class _Abort(Exception):
    """Internal: stop handling this connection now (its socket is already dealt with)."""


# --------------------------------------------------------------------------------------------
# FaultServer
# --------------------------------------------------------------------------------------------


class _QuietThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up is normal here; never print tracebacks to the test output."""
        _log.debug("error on connection from %s", client_address, exc_info=True)


class FaultServer:
    """Serve ``root`` at ``http://127.0.0.1:PORT<prefix>`` like S3, with faults on demand.

    ``prefix`` (e.g. ``/challenges/2020/``) is the URL folder the files appear under. Paths
    given to the methods (faults, ETag modes, counters) may be full URL paths
    (``/challenges/2020/x.zip``) or names relative to the prefix (``x.zip``).

    Start with :meth:`start` or ``with FaultServer(root) as srv:``; :meth:`close` stops it and
    drops every open connection (stalled ones too) so tests end quickly. :meth:`stop` then
    :meth:`start` again reuses the same port ("server went away and came back").
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "/",
        *,
        etag: EtagMode = "md5",
        part_size: int = DEFAULT_PART_SIZE,
        port: int = 0,
    ) -> None:
        if etag not in ETAG_MODES:
            raise ValueError(f"etag must be one of {ETAG_MODES}, not {etag!r}")
        self.root = Path(root)
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self.default_etag: EtagMode = etag
        self.default_part_size = part_size
        self._port = port
        self._lock = threading.RLock()
        self._rules: list[FaultRule] = []
        self._etag_modes: dict[str, tuple[EtagMode, int]] = {}
        self._etag_cache: dict[tuple[Any, ...], str] = {}
        self._hashing: dict[tuple[Any, ...], threading.Lock] = {}
        self._bytes: dict[str, int] = {}
        self._log: list[LoggedRequest] = []
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._peak_active = 0
        self._httpd: _QuietThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Bind (same port as before after a :meth:`stop`) and serve in a daemon thread."""
        with self._lock:
            if self._httpd is not None:
                return self
            self._stop.clear()
            httpd = _QuietThreadingServer(("127.0.0.1", self._port), _Handler)
            httpd.owner = self
            self._port = int(httpd.server_address[1])
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FaultServer:{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections (port refused until :meth:`start`)."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
            conns = list(self._conns)
            self._conns.clear()
        if httpd is None:
            return
        self._stop.set()
        httpd.shutdown()
        httpd.server_close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=2)

    close = stop

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        if not self._port:
            raise RuntimeError("FaultServer not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The mirror URL: ``http://127.0.0.1:PORT<prefix>`` (ends with ``/``)."""
        return self.base_url + self.prefix

    def url_for(self, name: str) -> str:
        """Full URL of a file (``name`` relative to the prefix, or an absolute URL path)."""
        return self.base_url + urllib.parse.quote(self.url_path(name))

    def url_path(self, name: str) -> str:
        """Normalise ``name`` to the URL path the server keys everything by."""
        return name if name.startswith("/") else self.prefix + name

    # ---- content ---------------------------------------------------------------------------

    def file_path(self, name: str) -> Path | None:
        """The file under ``root`` for a URL path/name, or ``None`` (outside prefix/root)."""
        path = self.url_path(name)
        if not path.startswith(self.prefix):
            return None
        rel = path[len(self.prefix) :]
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            return None
        return self.root.joinpath(*parts)

    def put(self, name: str, content: bytes) -> Path:
        """Write (atomically replace) a served file; in-flight responses keep the old bytes."""
        target = self.file_path(name)
        if target is None:
            raise ValueError(f"{name!r} is not under prefix {self.prefix!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".replace-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, target)
        return target

    def set_etag(self, name: str, mode: EtagMode, part_size: int | None = None) -> None:
        """Per-file ETag mode (overrides the server default)."""
        if mode not in ETAG_MODES:
            raise ValueError(f"etag must be one of {ETAG_MODES}, not {mode!r}")
        with self._lock:
            self._etag_modes[self.url_path(name)] = (mode, part_size or self.default_part_size)

    def etag_mode(self, name: str) -> tuple[EtagMode, int]:
        with self._lock:
            return self._etag_modes.get(
                self.url_path(name), (self.default_etag, self.default_part_size)
            )

    def etag_for(self, name: str) -> str | None:
        """The ETag (with quotes) the server currently sends for ``name``; ``None`` if none."""
        fp = self.file_path(name)
        if fp is None or not fp.is_file():
            raise FileNotFoundError(name)
        with open(fp, "rb") as fh:
            return self._etag(self.url_path(name), fh, os.fstat(fh.fileno()))

    def _etag(self, path: str, fh: IO[bytes], st: os.stat_result) -> str | None:
        """ETag of the open file (cached per inode/mtime/size: big files are hashed once)."""
        mode, part_size = self.etag_mode(path)
        if mode == "none":
            return None
        if mode == "opaque":  # nginx: "<hex mtime>-<hex size>"
            return f'"{int(st.st_mtime):x}-{st.st_size:x}"'
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, mode, part_size)
        with self._lock:
            cached = self._etag_cache.get(key)
            hashing = self._hashing.setdefault(key, threading.Lock())
        if cached is not None:
            return cached
        with hashing:  # parallel first requests of a big file hash it once, not N times
            with self._lock:
                cached = self._etag_cache.get(key)
            if cached is not None:
                return cached
            return self._hash_etag(key, fh, st, mode, part_size)

    def _hash_etag(
        self, key: tuple[Any, ...], fh: IO[bytes], st: os.stat_result, mode: str, part_size: int
    ) -> str:
        fd = fh.fileno()
        step = st.st_size or 1 if mode == "md5" else part_size
        digests = []
        whole = hashlib.md5()
        for off in range(0, max(st.st_size, 1), step):
            h = hashlib.md5()
            pos, end = off, min(off + step, st.st_size)
            while pos < end:
                block = os.pread(fd, min(1 << 20, end - pos), pos)
                if not block:
                    break
                h.update(block)
                whole.update(block)
                pos += len(block)
            digests.append(h.digest())
        if mode == "md5":
            value = f'"{whole.hexdigest()}"'
        else:
            value = f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'
        with self._lock:
            self._etag_cache[key] = value
        return value

    # ---- faults ----------------------------------------------------------------------------

    def add_fault(
        self,
        fault: Fault,
        path: str | None = None,
        *,
        times: int | None = 1,
        when: Predicate | None = None,
    ) -> FaultRule:
        """Install ``fault`` for ``path`` (``None``: any path), ``times`` times (``None``: forever).

        Only requests the fault can apply to (e.g. ranged ones for :class:`IgnoreRange`) and
        that ``when`` accepts use up a firing. Safe to call while requests are in flight.
        """
        rule = FaultRule(
            fault=fault,
            path=None if path is None else self.url_path(path),
            remaining=times,
            when=when,
        )
        with self._lock:
            if isinstance(fault, ReplaceObject) and rule.path is None:
                raise ValueError("ReplaceObject needs a path")
            if rule.path is not None:
                rule.bytes_base = self._bytes.get(rule.path, 0)
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: FaultRule) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._rules.remove(rule)

    def throttle(self, bytes_per_second: int, path: str | None = None) -> FaultRule:
        """Throttle every GET body (of ``path``, or all) from now on, until removed."""
        return self.add_fault(Throttle(bytes_per_second), path, times=None)

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()

    def faults(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def _select_faults(self, req: RequestInfo) -> dict[str, tuple[FaultRule, Fault]]:
        """Decide (under the lock) which faults act on this request; one per kind, first wins."""
        chosen: dict[str, tuple[FaultRule, Fault]] = {}
        with self._lock:
            for rule in list(self._rules):
                f = rule.fault
                if rule.done or (rule.path is not None and rule.path != req.path):
                    continue
                if not f.applies(req) or (rule.when is not None and not rule.when(req)):
                    continue
                if isinstance(f, ReplaceObject):
                    continue
                if f.kind in chosen:
                    continue
                chosen[f.kind] = (rule, f)
                rule.fired += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        rule.done = True
                        self._rules.remove(rule)
        return chosen

    def _replace_due(self, req: RequestInfo) -> bool:
        """Count this request for ``ReplaceObject(after_requests=N)``; swap when it is N+1."""
        fired = False
        with self._lock:
            for rule in list(self._rules):
                f = rule.fault
                if not isinstance(f, ReplaceObject) or f.after_requests is None:
                    continue
                if rule.done or rule.path != req.path:
                    continue
                if rule.when is not None and not rule.when(req):
                    continue
                rule.seen += 1
                if rule.seen > f.after_requests:
                    self._fire_replace(rule)
                    fired = True
        return fired

    def _fire_replace(self, rule: FaultRule) -> None:
        """Swap the file (caller holds the lock). Open file handles keep the old inode."""
        if rule.done:
            return
        rule.done = True
        rule.fired += 1
        with contextlib.suppress(ValueError):
            self._rules.remove(rule)
        assert isinstance(rule.fault, ReplaceObject) and rule.path is not None
        self.put(rule.path, rule.fault.content)

    # ---- accounting ------------------------------------------------------------------------

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            total = self._bytes.get(path, 0) + n
            self._bytes[path] = total
            for rule in list(self._rules):
                f = rule.fault
                if (
                    isinstance(f, ReplaceObject)
                    and f.after_bytes is not None
                    and rule.path == path
                    and total - rule.bytes_base >= f.after_bytes
                ):
                    self._fire_replace(rule)

    def _busy(self, delta: int) -> None:
        with self._idle:
            self._active += delta
            self._peak_active = max(self._peak_active, self._active)
            if self._active == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no response is being sent (stalled ones do not count); True if idle.

        A client may read the last byte before the server thread has counted and logged it;
        the counters below call this first so tests do not race the server.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def bytes_sent(self, name: str | None = None, *, settle: float = 2.0) -> int:
        """Body bytes sent for ``name`` (URL path or name under the prefix), or in total.

        Waits up to ``settle`` seconds for responses in progress to finish first.
        """
        self.wait_idle(settle)
        with self._lock:
            if name is None:
                return sum(self._bytes.values())
            return self._bytes.get(self.url_path(name), 0)

    def requests(
        self, name: str | None = None, method: str | None = None, *, settle: float = 2.0
    ) -> list[LoggedRequest]:
        """A copy of the request log (finished requests), optionally filtered.

        Waits up to ``settle`` seconds for responses in progress to finish first.
        """
        self.wait_idle(settle)
        with self._lock:
            log = list(self._log)
        if name is not None:
            path = self.url_path(name)
            log = [r for r in log if r.path == path]
        if method is not None:
            log = [r for r in log if r.method == method.upper()]
        return log

    def most_at_once(self) -> int:
        """The most responses this server was sending at the same moment (a stalled one stops
        counting once it stalls): how parallel a client really was, counted, not timed."""
        with self._lock:
            return self._peak_active

    def reset_counters(self) -> None:
        """Forget byte counts, the request log and :meth:`most_at_once` (faults stay)."""
        with self._lock:
            self._bytes.clear()
            self._log.clear()
            self._peak_active = self._active

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def _parse_range(value: str, size: int) -> tuple[int, int] | Literal["ignore", "unsatisfiable"]:
    """One ``bytes=`` range resolved against ``size``; multi-ranges and junk are ignored
    (RFC 9110 lets a server ignore Range; S3 answers 200 to multi-ranges too)."""
    m = _RANGE_RE.match(value)
    if not m:
        return "ignore"
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return "ignore"
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1)
    start = int(a)
    end = int(b) if b else size - 1
    if b and end < start:
        return "ignore"
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size - 1))


def _etag_list(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _strong_match(header: str, etag: str | None) -> bool:
    if etag is None:
        return False
    tags = _etag_list(header)
    return "*" in tags or etag in [t for t in tags if not t.startswith("W/")]


def _weak_match(header: str, etag: str | None) -> bool:
    if etag is None:
        return False
    tags = [t[2:] if t.startswith("W/") else t for t in _etag_list(header)]
    return "*" in tags or etag in tags


class _Handler(http.server.BaseHTTPRequestHandler):
    """The per-connection request handler (HTTP/1.1 keep-alive, like S3)."""

    protocol_version = "HTTP/1.1"
    server_version = "FaultServer"
    sys_version = ""
    server: _QuietThreadingServer
    _counted = False
    _arrived = 0.0

    # silence: the request log is kept by the owner instead
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        self.server.owner._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        try:
            super().handle()
        except (_Abort, ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _not_allowed(self) -> None:
        self.close_connection = True  # the request body is not read: do not reuse the socket
        self._simple(405, _s3_error("MethodNotAllowed", "Read-only test server"), {})
        self._record(405, 0, (), "ok")

    do_PUT = do_POST = do_DELETE = do_PATCH = _not_allowed

    # ---- plumbing ----------------------------------------------------------------------

    @property
    def owner(self) -> FaultServer:
        return self.server.owner

    def _simple(self, code: int, body: bytes, headers: Mapping[str, str]) -> int:
        self.send_response(code)
        hdrs = {k.lower(): v for k, v in headers.items()}
        for k, v in headers.items():
            self.send_header(k, v)
        if "content-type" not in hdrs and body:
            self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            sent = len(body)
        return sent

    def _record(self, status: int | None, sent: int, faults: Iterable[str], outcome: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        self.owner._record(
            LoggedRequest(
                method=self.command,
                path=urllib.parse.unquote(split.path),
                query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                headers=dict(self.headers.items()),
                status=status,
                bytes_sent=sent,
                faults=tuple(faults),
                outcome=outcome,
                arrived=self._arrived,
                peer=int(self.client_address[1]),
            )
        )

    def _idle_now(self) -> None:
        """This connection will only wait from now on: stop counting it as busy."""
        if self._counted:
            self._counted = False
            self.owner._busy(-1)

    def _rst(self) -> None:
        """Close abruptly: let queued bytes reach the peer, then RST (SO_LINGER 0)."""
        sock = self.connection
        deadline = time.monotonic() + 1.0
        buf = bytearray(4)
        while time.monotonic() < deadline and not self.owner._stop.is_set():
            try:
                fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            except OSError:
                break
            if struct.unpack("i", bytes(buf))[0] == 0:
                break
            time.sleep(0.005)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.owner._track(sock, False)
        with contextlib.suppress(OSError):
            os.close(sock.detach())
        self.close_connection = True
        raise _Abort

    # ---- the request -------------------------------------------------------------------

    def _open(self, path: str) -> tuple[IO[bytes] | None, os.stat_result | None]:
        """Open the file behind ``path``; the handle pins one version (inode) of it."""
        fp = self.owner.file_path(path)
        if fp is None:
            return None, None
        try:
            fh = open(fp, "rb")  # noqa: SIM115 - closed by _serve
        except OSError:
            return None, None
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            fh.close()
            return None, None
        return fh, st

    def _info(
        self, path: str, query: dict[str, str], headers: dict[str, str], size: int | None
    ) -> tuple[RequestInfo, tuple[int, int] | str, str, int]:
        """What the request asks for, resolved against the object's current size."""
        part_number: int | None = None
        if "partNumber" in query:
            with contextlib.suppress(ValueError):
                part_number = int(query["partNumber"])
        range_header = self.headers.get("Range")
        parsed: tuple[int, int] | str = "ignore"
        if range_header is not None and size is not None:
            parsed = _parse_range(range_header, size)
        start, end = parsed if isinstance(parsed, tuple) else (0, (size or 0) - 1)
        mode, part_size = self.owner.etag_mode(path)
        n_parts = max(1, -(-(size or 0) // part_size)) if mode == "multipart" else 1
        if part_number is not None and size is not None and 1 <= part_number <= n_parts:
            if mode == "multipart":
                start = (part_number - 1) * part_size
                end = min(size, part_number * part_size) - 1
            else:
                start, end = 0, size - 1
        info = RequestInfo(
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            size=size,
            ranged=isinstance(parsed, tuple),
            start=start,
            end=end,
            part_number=part_number,
        )
        return info, parsed, mode, n_parts

    def _serve(self) -> None:
        owner = self.owner
        self._arrived = time.monotonic()
        self._counted = True
        owner._busy(1)
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        headers = dict(self.headers.items())
        fh, st = self._open(path)
        try:
            info, parsed, mode, n_parts = self._info(
                path, query, headers, st.st_size if st else None
            )
            if owner._replace_due(info):  # the object changes before this request: reopen
                if fh is not None:
                    fh.close()
                fh, st = self._open(path)
                info, parsed, mode, n_parts = self._info(
                    path, query, headers, st.st_size if st else None
                )
            chosen = owner._select_faults(info)
            etag = owner._etag(path, fh, st) if fh is not None and st is not None else None
            rewrite = chosen.get("rewrite_etag")
            if rewrite is not None and isinstance(rewrite[1], RewriteEtag):
                etag = rewrite[1].rewrite(etag)
            if "no_part_number" in chosen and info.part_number is not None:
                info = dataclasses.replace(info, part_number=None)
                if not info.ranged:
                    info = dataclasses.replace(info, start=0, end=(info.size or 0) - 1)
            self._answer(info, chosen, tuple(chosen), fh, st, etag, parsed, mode, n_parts)
        finally:
            if fh is not None:
                fh.close()
            self._idle_now()

    def _answer(
        self,
        info: RequestInfo,
        chosen: dict[str, tuple[FaultRule, Fault]],
        names: tuple[str, ...],
        fh: IO[bytes] | None,
        st: os.stat_result | None,
        etag: str | None,
        parsed: tuple[int, int] | str,
        mode: str,
        n_parts: int,
    ) -> None:
        owner = self.owner
        stall = chosen.get("stall")
        if stall is not None:
            sf = stall[1]
            assert isinstance(sf, Stall)
            if sf.before_headers:
                self._idle_now()
                owner._stop.wait(sf.seconds)
                self.close_connection = True
                self._record(None, 0, names, "stall")
                return
        reset = chosen.get("reset")
        if reset is not None:
            rf = reset[1]
            assert isinstance(rf, Reset)
            if rf.before_headers:
                self._record(None, 0, names, "reset")
                self._rst()
        status = chosen.get("status")
        if status is not None:
            sfault = status[1]
            assert isinstance(sfault, Status)
            sent = self._simple(sfault.code, sfault.body, sfault.headers)
            self._record(sfault.code, sent, names, "ok")
            return
        redirect = chosen.get("redirect")
        if redirect is not None:
            rd = redirect[1]
            assert isinstance(rd, Redirect)
            sent = self._simple(rd.code, b"", {"Location": rd.to or self.path})
            self._record(rd.code, sent, names, "ok")
            return

        if fh is None or st is None or info.size is None:
            sent = self._simple(
                404, _s3_error("NoSuchKey", "The specified key does not exist."), {}
            )
            self._record(404, sent, names, "ok")
            return
        size = info.size
        common: dict[str, str] = {
            "Accept-Ranges": "bytes",
            "Last-Modified": _http_date(st.st_mtime),
            "Content-Type": mimetypes.guess_type(info.path)[0] or "application/octet-stream",
        }
        if etag is not None:
            common["ETag"] = etag
        if self._answer_special(info, chosen, names, fh, size, etag, common):
            return

        # conditional requests, in RFC 9110 section 13.2.2 order
        if_match = self.headers.get("If-Match")
        if if_match is not None and not _strong_match(if_match, etag):
            body = _s3_error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                Condition="If-Match",
            )
            sent = self._simple(412, body, {})
            self._record(412, sent, names, "ok")
            return
        if_none = self.headers.get("If-None-Match")
        if if_none is not None and _weak_match(if_none, etag):
            self.send_response(304)
            for k, v in common.items():
                if k != "Content-Type":
                    self.send_header(k, v)
            self.end_headers()
            self._record(304, 0, names, "ok")
            return

        use_range = isinstance(parsed, tuple) or parsed == "unsatisfiable"
        if_range = self.headers.get("If-Range")
        if use_range and if_range is not None:
            v = if_range.strip()
            if v.startswith('"') or v.startswith("W/"):
                use_range = _strong_match(v, etag) and v != "*"
            else:
                use_range = v == common["Last-Modified"]

        if info.part_number is not None and use_range:
            body = _s3_error(
                "InvalidRequest", "Cannot specify both Range header and partNumber query parameter"
            )
            sent = self._simple(400, body, {})
            self._record(400, sent, names, "ok")
            return
        extra: dict[str, str] = {}
        if info.part_number is not None:
            if not 1 <= info.part_number <= n_parts:
                body = _s3_error("InvalidPartNumber", "The requested partnumber is not satisfiable")
                sent = self._simple(416, body, {"Content-Range": f"bytes */{size}"})
                self._record(416, sent, names, "ok")
                return
            code, start, end = 206, info.start, info.end
            if mode == "multipart":
                extra["x-amz-mp-parts-count"] = str(n_parts)
        elif use_range and parsed == "unsatisfiable":
            body = _s3_error(
                "InvalidRange",
                "The requested range is not satisfiable",
                ActualObjectSize=size,
            )
            sent = self._simple(
                416, body, {"Content-Range": f"bytes */{size}", "Content-Type": "application/xml"}
            )
            self._record(416, sent, names, "ok")
            return
        elif use_range and isinstance(parsed, tuple):
            code, (start, end) = 206, parsed
        else:
            code, start, end = 200, 0, size - 1

        if code == 206 and "ignore_range" in chosen and info.part_number is None:
            code, start, end = 200, 0, size - 1
        bad = chosen.get("bad_content_range")
        if code == 206 and bad is not None:
            bf = bad[1]
            assert isinstance(bf, BadContentRange)
            length = end - start + 1
            start = min(max(0, start + bf.shift), size - 1)
            end = min(start + length - 1, size - 1)
        length = max(0, end - start + 1)
        more = chosen.get("extra_headers")
        if more is not None:
            assert isinstance(more[1], ExtraHeaders)
            extra.update(more[1].headers)

        self.send_response(code)
        for k, v in common.items():
            self.send_header(k, v)
        for k, v in extra.items():
            self.send_header(k, v)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        bad_length = chosen.get("bad_length")
        if bad_length is not None:
            assert isinstance(bad_length[1], BadLength)
            self.send_header("Content-Length", bad_length[1].value)
            self.close_connection = True  # the client reads the body to the close
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            self._record(code, 0, names, "ok")
            return

        limit = length
        outcome = "ok"
        stop_after: int | None = None
        short = chosen.get("short_body")
        if short is not None:
            sb = short[1]
            assert isinstance(sb, ShortBody)
            limit = sb.count(length)
            outcome = "short_body"
        reset_at: int | None = None
        if reset is not None:
            rf = reset[1]
            assert isinstance(rf, Reset)
            reset_at = min(rf.draw(), length)
            limit = min(limit, reset_at)
        if stall is not None:
            sf = stall[1]
            assert isinstance(sf, Stall)
            stop_after = min(sf.after, length)
            limit = min(limit, stop_after)
        rate: int | None = None
        thr = chosen.get("throttle")
        if thr is not None:
            tf = thr[1]
            assert isinstance(tf, Throttle)
            rate = max(1, tf.bytes_per_second)

        sent = 0
        trickle = chosen.get("trickle")
        flip = chosen.get("flip_byte")
        try:
            if trickle is not None:
                tr = trickle[1]
                assert isinstance(tr, Trickle)
                sent = self._send_trickle(info.path, fh, start, limit, tr)
            elif flip is not None and isinstance(flip[1], FlipByte):
                sent = self._send_flipped(info.path, fh, start, limit, flip[1].position(start, end),
                                          flip[1].mask)
            else:
                sent = self._send_body(info.path, fh, start, limit, rate)
        except (ConnectionError, TimeoutError, OSError):
            self._record(code, sent, names, "client_gone")
            self.close_connection = True
            raise _Abort from None
        if (
            reset_at is not None
            and sent >= reset_at
            and (stop_after is None or reset_at <= stop_after)
        ):
            self._record(code, sent, names, "reset")
            self._rst()
        if stop_after is not None and sent >= stop_after:
            assert stall is not None
            sf = stall[1]
            assert isinstance(sf, Stall)
            self._idle_now()
            owner._stop.wait(sf.seconds)
            self.close_connection = True
            self._record(code, sent, names, "stall")
            return
        if sent < length:
            self.close_connection = True
        self._record(code, sent, names, outcome)

    def _send_trickle(self, path: str, fh: IO[bytes], start: int, count: int, tr: Trickle) -> int:
        """``tr.after`` bytes at once, then ``tr.nbytes`` every ``tr.every`` seconds."""
        sent = self._send_body(path, fh, start, min(count, tr.after), None)
        while sent < count and not self.owner._stop.wait(tr.every):
            n = min(max(1, tr.nbytes), count - sent)
            done = self.connection.sendfile(fh, offset=start + sent, count=n)
            if done <= 0:
                break
            sent += done
            self.owner._count(path, done)
        return sent

    def _answer_special(
        self,
        info: RequestInfo,
        chosen: dict[str, tuple[FaultRule, Fault]],
        names: tuple[str, ...],
        fh: IO[bytes],
        size: int,
        etag: str | None,
        common: dict[str, str],
    ) -> bool:
        """The faults that replace the whole answer (gzip proxy, absurd part size); True when
        one did."""
        gz = chosen.get("gzip_body")
        if gz is not None and isinstance(gz[1], GzipBody):
            fh.seek(0)
            body = gzip.compress(fh.read(), mtime=0)
            headers = {k: v for k, v in common.items() if k not in ("ETag", "Accept-Ranges")}
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            if etag is not None and gz[1].etag == "keep":
                headers["ETag"] = etag
            elif etag is not None and gz[1].etag == "weak":
                headers["ETag"] = 'W/"' + etag.strip('"').removeprefix("W/").strip('"') + '"'
            sent = self._simple(200, body, headers)
            self.owner._count(info.path, sent)
            self._record(200, sent, names, "ok")
            return True
        claim = chosen.get("part_size_claim")
        if claim is not None and isinstance(claim[1], PartSizeClaim):
            n = max(0, min(claim[1].length, size))
            self.send_response(206)
            for k, v in common.items():
                self.send_header(k, v)
            self.send_header("Content-Range", f"bytes 0-{max(0, n - 1)}/{size}")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            sent = 0
            if self.command != "HEAD":
                sent = self._send_body(info.path, fh, 0, n, None)
            self._record(206, sent, names, "ok")
            return True
        return False

    def _send_flipped(
        self, path: str, fh: IO[bytes], start: int, count: int, flip_at: int, mask: int
    ) -> int:
        """Like :meth:`_send_body`, with the byte at object offset ``flip_at`` XOR ``mask``."""
        owner = self.owner
        sent = 0
        sock = self.connection
        while sent < count:
            n = min(CHUNK, count - sent)
            block = bytearray(os.pread(fh.fileno(), n, start + sent))
            if not block:
                break
            if start + sent <= flip_at < start + sent + len(block):
                block[flip_at - start - sent] ^= mask
            sock.sendall(block)
            sent += len(block)
            owner._count(path, len(block))
        return sent

    def _send_body(self, path: str, fh: IO[bytes], start: int, count: int, rate: int | None) -> int:
        """Send ``count`` bytes from ``start``; count them as they go (for the tests)."""
        owner = self.owner
        sent = 0
        began = time.monotonic()
        chunk = CHUNK if rate is None else max(1, min(CHUNK, rate // 20))
        sock = self.connection
        while sent < count:
            n = min(chunk, count - sent)
            done = sock.sendfile(fh, offset=start + sent, count=n)
            if done <= 0:
                break
            sent += done
            owner._count(path, done)
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0 and owner._stop.wait(ahead):
                    break
        return sent


# --------------------------------------------------------------------------------------------
# NginxServer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NginxLogEntry:
    """One line of the generated access log."""

    status: int
    body_bytes_sent: int
    method: str
    request_uri: str
    range: str
    #: nginx's connection serial number: requests with the same number shared a connection.
    connection: int = 0
    #: When the response ended (epoch seconds, ms resolution) and how long it took: the
    #: request was being served during ``[end - duration, end]``.
    end: float = 0.0
    duration: float = 0.0

    @property
    def path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.request_uri).path)


_NGINX_LOG_RE = re.compile(
    r'^(\d+) (\d+) "([A-Z]+)" "([^"]*)" "([^"]*)"(?: (\d+) ([\d.]+) ([\d.]+))?$'
)


def most_at_once(entries: list[NginxLogEntry]) -> int:
    """The most requests nginx was serving at the same moment (from the log's times)."""
    events = sorted(
        [(e.end - e.duration, 1) for e in entries] + [(e.end, -1) for e in entries]
    )  # at equal times an end (-1) sorts before a start: touching is not overlapping
    peak = live = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


class NginxServer:
    """A real nginx serving ``root`` at ``http://127.0.0.1:PORT<prefix>`` from a temp folder.

    nginx runs in the foreground (``daemon off``) as our child, so we own its lifetime: it is
    stopped by :meth:`close`, or at interpreter exit if a test forgot to. Every path it
    writes (pid, logs, temp) is inside ``workdir``; nothing touches /etc or /var. The access
    log records ``$status $body_bytes_sent`` per request so tests can count the bytes nginx
    actually sent.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "/",
        *,
        limit_rate: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        nginx: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self.limit_rate = limit_rate
        binary = nginx or self.find_binary()
        if binary is None:
            raise FileNotFoundError("nginx not found on PATH or in /usr/sbin")
        self.binary = binary
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nginx-test-"))
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_binary() -> str | None:
        """nginx on PATH, else Debian's /usr/sbin/nginx (sbin is often not on a user's PATH)."""
        found = shutil.which("nginx")
        if found:
            return found
        return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    def _config(self, port: int) -> str:
        w = self.workdir
        user = "user root root;" if os.geteuid() == 0 else ""
        rate = ""
        if self.limit_rate:
            # nginx only delays *between* writes; on loopback one sendfile() can push MBs, so
            # small chunks make the limit hold even for small files.
            chunk = max(1024, self.limit_rate // 10)
            rate = f"limit_rate {self.limit_rate}; sendfile_max_chunk {chunk};"
        root = str(self.root).rstrip("/") + "/"
        if self.prefix == "/":
            location = f"location / {{ root {root}; {rate} }}"
        else:
            location = f"location {self.prefix} {{ alias {root}; {rate} }}"
        return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ application/zip zip; text/csv csv; application/dicom dcm; image/jpeg jpg; }}
    default_type application/octet-stream;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    log_format counting '$status $body_bytes_sent "$request_method" "$request_uri" "$http_range" '
                        '$connection $msec $request_time';
    access_log {w}/access.log counting;
    sendfile on;
    tcp_nopush on;
    gzip off;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        {location}
    }}
}}
"""

    def start(self) -> NginxServer:
        """Write the config, start nginx, wait until the port accepts connections."""
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_err = ""
        for _attempt in range(5):  # the free port may be taken between probe and bind
            port = free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._config(port))
            err = open(self.workdir / "stderr.log", "wb")  # noqa: SIM115 - owned by the child
            argv = [self.binary, "-p", f"{self.workdir}/", "-c", str(conf)]
            argv += ["-e", str(self.error_log_path)]  # else it opens /var/log/nginx first
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
            err.close()
            if self._wait_ready(proc, port):
                self._proc, self.port = proc, port
                atexit.register(self.close)  # a test that forgets close() leaves no nginx
                return self
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            last_err = self._tail_logs()
            if "Address already in use" not in last_err:
                break
        raise RuntimeError(f"nginx did not start: {last_err}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _tail_logs(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            p = self.workdir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return " | ".join(s.strip() for s in out if s.strip())

    def close(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if it lingers; remove our temp folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.close)
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    stop = close

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("NginxServer not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The mirror URL ``http://127.0.0.1:PORT<prefix>`` (ends with ``/``)."""
        return self.base_url + self.prefix

    def url_path(self, name: str) -> str:
        return name if name.startswith("/") else self.prefix + name

    def url_for(self, name: str) -> str:
        return self.base_url + urllib.parse.quote(self.url_path(name))

    def log_entries(self, wait_for: int = 0, timeout: float = 5.0) -> list[NginxLogEntry]:
        """Parsed access log. nginx writes a line only after a response ends, which can be a
        moment after the client has read the last byte: ``wait_for=N`` polls until N lines."""
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            with contextlib.suppress(FileNotFoundError):
                for line in self.access_log_path.read_text(errors="replace").splitlines():
                    m = _NGINX_LOG_RE.match(line.strip())
                    if m:
                        entries.append(
                            NginxLogEntry(
                                status=int(m.group(1)),
                                body_bytes_sent=int(m.group(2)),
                                method=m.group(3),
                                request_uri=m.group(4),
                                range=m.group(5) if m.group(5) != "-" else "",
                                connection=int(m.group(6) or 0),
                                end=float(m.group(7) or 0),
                                duration=float(m.group(8) or 0),
                            )
                        )
            if len(entries) >= wait_for or time.monotonic() >= deadline:
                return entries
            time.sleep(0.02)

    def bytes_sent(self, name: str | None = None, wait_for: int = 0) -> int:
        """Body bytes nginx logged for ``name`` (URL path or name under the prefix), or all."""
        entries = self.log_entries(wait_for=wait_for)
        if name is not None:
            path = self.url_path(name)
            entries = [e for e in entries if e.path == path]
        return sum(e.body_bytes_sent for e in entries)


# --------------------------------------------------------------------------------------------
# S3Server (moto)
# --------------------------------------------------------------------------------------------


class S3Server:
    """moto's S3 in server mode on 127.0.0.1, plus upload helpers.

    Objects are uploaded ``public-read`` by default: moto, like S3, answers 403 to anonymous
    GET/HEAD of a private object, and the ISIC bucket is public, so the download client talks
    to it with plain ``requests`` and no credentials. (A bucket policy granting
    ``s3:GetObject`` to ``*`` lets anonymous GET through in moto 5.2, but not HEAD, hence ACLs.)

    moto keeps its state in process-wide backends: use distinct bucket names per test.
    ``min_part_size`` lowers moto's 5 MiB minimum multipart part size (a module global of
    ``moto.s3.models``), so multipart objects can be small and tests fast.

    What moto 5.2 does like S3 (checked by tests/test_support_servers.py): single-PUT md5 and
    multipart ``md5-N`` ETags; ``Range`` (``a-b``, ``a-``, ``-n``) with 206 and
    ``Content-Range``; 416 (S3 XML ``InvalidRange``, no ``Content-Range`` header) when
    unsatisfiable; ``If-Match`` (412) and ``If-None-Match`` (304) on GET and HEAD; multi-range
    answered 200 with the whole object; no ``Content-Encoding``. ``HEAD ?partNumber=K`` gives
    the part's ``Content-Length`` and ``x-amz-mp-parts-count``.

    Where moto differs from S3 (use :class:`FaultServer` to test those paths):
    ``HEAD ?partNumber=K`` on a multipart object answers 200 (S3: 206), with no
    ``Content-Range`` and the *part's* md5 as ETag (S3: the whole object's ETag);
    ``GET ?partNumber=K`` ignores the part and sends the whole object with 200; a ``partNumber``
    beyond the last part is a 500 (S3: 416 ``InvalidPartNumber``); ``Range`` together with
    ``partNumber`` is served as a range (S3: 400); ``If-Range`` is ignored (a stale validator
    still gets 206; RFC 9110 and nginx send 200 with the whole body).
    """

    REGION = "us-east-1"

    def __init__(self, *, min_part_size: int | None = 1) -> None:
        self.min_part_size = min_part_size
        self._server: Any = None
        self.port = 0
        self._client: Any = None

    def start(self) -> S3Server:
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        if self.min_part_size is not None:
            import moto.s3.models as s3_models

            s3_models.S3_UPLOAD_PART_MIN_SIZE = self.min_part_size  # type: ignore[attr-defined]
        last: Exception | None = None
        for _attempt in range(5):
            port = free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            try:
                server.start()
            except OSError as exc:  # port raced away
                last = exc
                continue
            self._server, self.port = server, port
            break
        else:
            raise RuntimeError(f"moto server did not start: {last}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    stop = close

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the boto3 ``endpoint_url``, and the path-style base."""
        if not self.port:
            raise RuntimeError("S3Server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> Any:
        """A boto3 S3 client for this server: dummy keys given explicitly (no env, no
        ~/.aws), path-style addressing, checksums only when required (plain PUTs)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self.REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 1, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def bucket_url(self, bucket: str) -> str:
        """The mirror URL of a bucket: ``http://127.0.0.1:PORT/<bucket>/``."""
        return f"{self.endpoint}/{bucket}/"

    def url_for(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}/{bucket}/{urllib.parse.quote(key)}"

    def create_bucket(self, bucket: str) -> str:
        """Create ``bucket`` (idempotent); returns its URL. Names: 3-63 chars, S3 rules."""
        c = self.client
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=bucket)
        return self.bucket_url(bucket)

    def upload(
        self,
        bucket: str,
        key: str,
        source: str | os.PathLike[str] | bytes,
        *,
        part_size: int | None = None,
        public: bool = True,
    ) -> str:
        """Upload a file (or bytes) in one PUT, or multipart in ``part_size`` parts; the URL.

        The resulting ETag is the S3 one: md5 for a single PUT, ``md5-of-md5s-N`` multipart.
        """
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        c = self.client
        acl = {"ACL": "public-read"} if public else {}
        if part_size is None:
            c.put_object(Bucket=bucket, Key=key, Body=data, **acl)
        else:
            mp = c.create_multipart_upload(Bucket=bucket, Key=key, **acl)
            parts = []
            try:
                offsets = range(0, len(data), part_size) if data else range(1)
                for i, off in enumerate(offsets, start=1):
                    r = c.upload_part(
                        Bucket=bucket,
                        Key=key,
                        UploadId=mp["UploadId"],
                        PartNumber=i,
                        Body=data[off : off + part_size],
                    )
                    parts.append({"ETag": r["ETag"], "PartNumber": i})
                c.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=mp["UploadId"],
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=mp["UploadId"])
                raise
        return self.url_for(bucket, key)

    def etag(self, bucket: str, key: str) -> str:
        """The object's ETag as S3 sends it (with quotes)."""
        return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])
