"""More real network peers on 127.0.0.1 for the README's promises: a forward proxy, a host
whose listening socket never accepts, and a FaultServer that records how many requests it was
serving at once.

Each is the real thing in miniature (a socket the kernel answers, an HTTP proxy that really
forwards), so the tests observe the client's behaviour from the other end of the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import FaultServer, RequestInfo

__all__ = ["ForwardProxy", "ProxiedRequest", "TrackingServer", "blackhole_url", "serve_tls",
           "self_signed_certificate"]

#: Headers a proxy must not forward (RFC 9110 section 7.6.1), plus the proxy's own.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
}
VIA = "1.1 isic2020-test-proxy"


@dataclass(frozen=True)
class ProxiedRequest:
    """One request as the proxy received it (absolute-form target, as clients send proxies)."""

    method: str
    target: str
    headers: dict[str, str]
    status: int | None


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_CONNECT(self) -> None:
        """``CONNECT host:port``: a TCP tunnel (how https goes through a proxy); the bytes
        that cross it are counted both ways."""
        owner = self.server.owner
        headers = dict(self.headers.items())
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except (OSError, ValueError):
            owner.record(ProxiedRequest("CONNECT", self.path, headers, 502))
            self.send_error(502, "cannot reach the target")
            return
        owner.record(ProxiedRequest("CONNECT", self.path, headers, 200))
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        client = self.connection
        try:
            while True:
                ready, _, _ = select.select([client, upstream], [], [], 30)
                if not ready:
                    return
                for src in ready:
                    dst = upstream if src is client else client
                    block = src.recv(65536)
                    if not block:
                        return
                    dst.sendall(block)
                    owner.count_tunneled(len(block))
        except OSError:
            return
        finally:
            upstream.close()

    def _forward(self) -> None:
        """Forward to the origin named in the absolute-form target, add ``Via``, stream back."""
        owner = self.server.owner
        headers = dict(self.headers.items())
        target = urllib.parse.urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            owner.record(ProxiedRequest(self.command, self.path, headers, 400))
            self.send_error(400, "absolute http:// target expected (this is a proxy)")
            return
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        out["Via"] = VIA
        path = target.path + (f"?{target.query}" if target.query else "")
        status: int | None = None
        try:
            upstream.request(self.command, path or "/", headers=out)
            resp = upstream.getresponse()
            status = resp.status
            self.send_response(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            self.send_header("Via", VIA)
            if length is None and self.command != "HEAD":
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                while True:
                    block = resp.read(64 * 1024)
                    if not block:
                        break
                    self.wfile.write(block)
        except OSError:
            self.close_connection = True
        finally:
            upstream.close()
            owner.record(ProxiedRequest(self.command, self.path, headers, status))


class _ProxyHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: ForwardProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ForwardProxy:
    """A plain-HTTP forward proxy on 127.0.0.1 that logs every request it forwards and marks
    each forwarded request with ``Via: 1.1 isic2020-test-proxy``, so the origin's own log shows
    which requests came through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._log: list[ProxiedRequest] = []
        self.tunneled = 0
        self._httpd: _ProxyHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ForwardProxy:
        httpd = _ProxyHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def count_tunneled(self, n: int) -> None:
        with self._lock:
            self.tunneled += n

    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._log)


@contextlib.contextmanager
def blackhole_url(path: str = "/challenges/2020/") -> Iterator[str]:
    """A URL on 127.0.0.1 whose port is open but never accepts: the listen backlog is full,
    so the kernel drops every further SYN and a client's connect hangs until its own connect
    timeout (or the kernel's SYN retries, about two minutes). Proven before it is handed out:
    a probe connect must time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(64):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            finally:
                probe.close()
        else:
            raise RuntimeError("could not fill the listen backlog of the blackhole socket")
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


class TrackingServer(FaultServer):
    """A :class:`FaultServer` that logs every request's start and end with the number of
    requests it is serving right after it (:attr:`events`, ``("start" | "end", count)``):
    the client's parallelism as the server sees it. ``mark_when(n)`` gives a fault predicate
    that fires on the first ranged request once ``n`` requests have started and remembers
    where in :attr:`events` that was (:attr:`mark`).

    ``answer_delay`` seconds pass before each ranged GET is answered, so requests overlap;
    the body then goes at full speed (a throttle would keep a request counted while the
    server paces its last bytes, after the client has them and has moved on).
    """

    def __init__(self, *args: Any, answer_delay: float = 0.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.answer_delay = answer_delay
        self.events: list[tuple[str, int]] = []
        self.mark: int | None = None

    def _select_faults(self, req: RequestInfo) -> Any:
        if self.answer_delay and req.ranged and req.method == "GET":
            self._stop.wait(self.answer_delay)
        return super()._select_faults(req)

    @property
    def starts(self) -> list[int]:
        """Requests in progress at the start of each request (that one included)."""
        with self._lock:
            return [n for kind, n in self.events if kind == "start"]

    def _busy(self, delta: int) -> None:
        super()._busy(delta)
        with self._lock:
            self.events.append(("start" if delta > 0 else "end", self._active))

    def mark_when(self, n: int) -> Any:
        def predicate(req: RequestInfo) -> bool:
            with self._lock:
                started = sum(1 for kind, _ in self.events if kind == "start")
                if self.mark is None and req.ranged and started >= n:
                    self.mark = len(self.events)
                    return True
                return False

        return predicate


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for ``127.0.0.1``, valid for two days, self-signed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def serve_tls(server: FaultServer, cert: Path, key: Path) -> str:
    """Make a started :class:`FaultServer` speak TLS (before any client connects); return its
    ``https://127.0.0.1:PORT<prefix>`` mirror URL. Its listening socket is wrapped in place,
    so every later connection is TLS, with all the server's faults and counters."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = server._httpd
    assert httpd is not None, "start the server first"
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    return f"https://127.0.0.1:{server.port}{server.prefix}"
