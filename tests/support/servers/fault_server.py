"""FaultServer: a pure-Python server on 127.0.0.1 that behaves like S3 and breaks on purpose.

It serves a folder like S3 (ranges, ETags incl. multipart, ``?partNumber=``, conditional
requests) and injects the faults of :mod:`support.servers.faults` on demand. It counts every
body byte it sends and logs every request, so tests prove "resume did not re-download" by
counting, never by timing. This module holds the server's state (faults, ETag modes and their
cache, counters, log, open connections) under one lock; the request handler
(:mod:`support.servers.fault_handler`, :mod:`support.servers.fault_wire`) is its other half
and reports back through the underscored hooks (``_select_faults``, ``_count``, ``_busy``, ...),
which :class:`support.netpeers.TrackingServer` overrides.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import os
import socket
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias

from .common import Lifecycle
from .exchanges import LoggedRequest, Predicate, RequestInfo
from .fault_handler import FaultHandler
from .faults import Fault, FaultRule, ReplaceObject, Throttle

EtagMode: TypeAlias = Literal["md5", "multipart", "opaque", "none"]
ETAG_MODES: tuple[str, ...] = ("md5", "multipart", "opaque", "none")
DEFAULT_PART_SIZE = 8 * 1024 * 1024  # what the AWS CLI / boto3 use by default

_log = logging.getLogger(__name__)


class QuietThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    owner: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up is normal here; never print tracebacks to the test output."""
        _log.debug("error on connection from %s", client_address, exc_info=True)


class FaultServer(Lifecycle):
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
        self._live: set[socket.socket] = set()  # connections whose handler is still running
        self._httpd: QuietThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultServer:
        """Bind (same port as before after a :meth:`stop`) and serve in a daemon thread."""
        with self._lock:
            if self._httpd is not None:
                return self
            self._stop.clear()
            httpd = QuietThreadingServer(("127.0.0.1", self._port), FaultHandler)
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
        # The handlers of stalled or held requests only log them once they wake from their
        # wait; a loaded machine may run those threads late. Wait for them, so that the log
        # read after close() holds every request (a stalled one too), not most of them.
        with self._idle:
            self._idle.wait_for(lambda: not self._live, timeout=5)

    close = stop

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
        with self._idle:
            if add:
                self._conns.add(conn)
                self._live.add(conn)
            else:
                self._conns.discard(conn)
                self._live.discard(conn)
                self._idle.notify_all()
