"""How :class:`~support.servers.fault_server.FaultServer` puts bytes on the wire: the handler
base class with keep-alive HTTP/1.1, body sending that counts every byte as it leaves (so tests
can prove a resume did not fetch a byte twice), throttled, trickled or with a flipped byte, and
the abrupt close (TCP RST after the queued bytes left).

The byte counts and the busy counter live on the server (``owner``); this module only reports
to it. What to answer is decided in :mod:`support.servers.fault_handler`.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import socket
import struct
import termios
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from .faults import Trickle

if TYPE_CHECKING:
    from .fault_server import FaultServer, QuietThreadingServer

CHUNK = 256 * 1024


class Abort(Exception):
    """Stop handling this connection now (its socket is already dealt with)."""


class WireHandler(http.server.BaseHTTPRequestHandler):
    """The per-connection handler's plumbing (HTTP/1.1 keep-alive, like S3); subclasses answer."""

    protocol_version = "HTTP/1.1"
    server_version = "FaultServer"
    sys_version = ""
    server: QuietThreadingServer
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
        except (Abort, ConnectionError, TimeoutError, OSError):
            self.close_connection = True

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
        raise Abort

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
