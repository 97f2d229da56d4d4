"""An :class:`support.s3gate.S3Gate` that can hold the writes of one object key.

A test that kills a writer "after the first object appears" needs the writer to be still busy
then, whatever the machine's speed: ``hold(key)`` makes every write request (PUT, POST) for
``key`` wait, unanswered, until :meth:`release`; :attr:`holding` is set as soon as one waits
(observable state to poll, no sleeps). A held request is never forwarded to moto: after the
release it gets 503, so a writer killed while held leaves nothing of that object behind.
``puts[key]`` counts the write requests forwarded per key.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from support.s3gate import S3Gate


class HoldingGate(S3Gate):
    def __init__(self, upstream: str, **kw: object) -> None:
        super().__init__(upstream, **kw)  # type: ignore[arg-type]
        self.held_key: str | None = None
        self.holding = threading.Event()
        self._release = threading.Event()
        self.puts: Counter[str] = Counter()

    def hold(self, key: str) -> None:
        self.held_key = key
        self.holding.clear()
        self._release.clear()

    def release(self) -> None:
        self.held_key = None
        self._release.set()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        key = urlsplit(h.path).path.split("/", 2)[-1]
        if h.command in ("PUT", "POST"):
            if self.held_key is not None and key == self.held_key:
                length = int(h.headers.get("Content-Length") or 0)
                if length:
                    h.rfile.read(length)
                self.holding.set()
                self._release.wait(timeout=120)
                h.send_response(503)
                h.send_header("Content-Length", "0")
                h.end_headers()
                h.close_connection = True
                return
            with self._lock:
                self.puts[key] += 1
        super().handle(h)
