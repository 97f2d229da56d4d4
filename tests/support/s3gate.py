"""A gate in front of moto's S3 server: credentials, expiry, throttling and byte counts.

moto 5.2 in server mode accepts any credentials and never expires a presigned URL (its IAM
checks, when turned on, read only the ``Authorization`` header and are process-wide). The gate
is a small HTTP proxy on 127.0.0.1 that forwards every request to moto after the checks S3
makes, so the client's handling of them can be tested for real:

* ``access_key``: a request signed with another key (header or presigned query) gets 403
  ``InvalidAccessKeyId``; one with no signature gets 403 ``AccessDenied``;
* ``expired_token``: a request carrying a session token gets 400 ``ExpiredToken`` (S3 sends
  400 for it);
* a presigned URL past ``X-Amz-Date + X-Amz-Expires`` gets 403 ``AccessDenied`` "Request has
  expired"; ``uses_per_url`` makes each presigned URL expire after that many requests (the
  same, without waiting);
* ``expire_signed_before(t)``: presigned URLs signed (``X-Amz-Date``) before ``t`` are
  refused as expired from now on, as when their lifetime ran out mid-transfer, and the bodies
  being sent for them are cut off (so the client must ask again);
  ``signed_at`` lists the signing times of the presigned GETs seen;
* ``rate``: response bodies are sent at most that many bytes per second;
* ``served[key]``: body bytes sent per object key (path without the bucket), ``gets``,
  ``signed_requests`` (those that carried a signature), ``refused``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "content-length", "host"}


def _error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


def _signed_at(path: str) -> float | None:
    """When a presigned URL was signed (its ``X-Amz-Date``), or None."""
    q = {k.lower(): v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    if "x-amz-date" not in q:
        return None
    return datetime.strptime(q["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=timezone.utc).timestamp()


class S3Gate:
    def __init__(self, upstream: str, *, access_key: str | None = "testing",
                 expired_token: bool = False, uses_per_url: int | None = None,
                 rate: float | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.access_key = access_key
        self.expired_token = expired_token
        self.uses_per_url = uses_per_url
        self.rate = rate
        self.served: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # request body bytes per object key
        self.gets = 0
        self.refused = 0
        self._uses: Counter[str] = Counter()
        self.signed_before: float | None = None
        self.signed_at: list[float] = []
        self.signed_requests = 0  # requests that carried a signature (header or query)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> S3Gate:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                gate.handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def expire_signed_before(self, t: float) -> None:
        self.signed_before = t

    # -- the checks ---------------------------------------------------------------------------
    def refusal(self, h: BaseHTTPRequestHandler) -> tuple[int, bytes] | None:
        parts = urlsplit(h.path)
        q = {k.lower(): v[0] for k, v in parse_qs(parts.query).items()}
        auth = h.headers.get("Authorization", "")
        key = None
        if "Credential=" in auth:
            key = auth.split("Credential=", 1)[1].split("/", 1)[0]
        elif "x-amz-credential" in q:
            key = q["x-amz-credential"].split("/", 1)[0]
        elif "awsaccesskeyid" in q:
            key = q["awsaccesskeyid"]
        if key is not None:
            with self._lock:
                self.signed_requests += 1
        token = h.headers.get("X-Amz-Security-Token") or q.get("x-amz-security-token")
        if self.expired_token and token:
            return 400, _error("ExpiredToken", "The provided token has expired.")
        if self.access_key is not None and key != self.access_key:
            if key is None:
                return 403, _error("AccessDenied", "Access Denied")
            return 403, _error("InvalidAccessKeyId", "The AWS Access Key Id you provided "
                               "does not exist in our records.")
        start = _signed_at(h.path)
        if "x-amz-expires" in q and start is not None:
            if h.command == "GET":
                with self._lock:
                    self.signed_at.append(start)
            if time.time() > start + int(q["x-amz-expires"]) or (
                    self.signed_before is not None and start < self.signed_before):
                return 403, _error("AccessDenied", "Request has expired")
        if self.uses_per_url is not None and "x-amz-signature" in q:
            with self._lock:
                self._uses[q["x-amz-signature"]] += 1
                if self._uses[q["x-amz-signature"]] > self.uses_per_url:
                    return 403, _error("AccessDenied", "Request has expired")
        return None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        refused = self.refusal(h)
        with self._lock:
            self.received[urlsplit(h.path).path.split("/", 2)[-1]] += len(body)
        if refused is not None:
            with self._lock:
                self.refused += 1
            status, payload = refused
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(0 if h.command == "HEAD" else len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        headers["Host"] = h.headers.get("Host", "")
        resp = requests.request(h.command, self.upstream + h.path, headers=headers,
                                data=body or None, stream=True, allow_redirects=False,
                                timeout=30)
        key = urlsplit(h.path).path.split("/", 2)[-1]
        signed = _signed_at(h.path)
        try:
            h.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in _HOP:
                    h.send_header(k, v)
            h.send_header("Content-Length", resp.headers.get("Content-Length", "0"))
            h.end_headers()
            if h.command == "HEAD":
                return
            if h.command == "GET":
                with self._lock:
                    self.gets += 1
            for block in resp.raw.stream(4096 if self.rate else 65536, decode_content=False):
                h.wfile.write(block)
                with self._lock:
                    self.served[key] += len(block)
                if self.rate:
                    time.sleep(len(block) / self.rate)
                if (signed is not None and self.signed_before is not None
                        and signed < self.signed_before):
                    h.close_connection = True
                    break
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            resp.close()
