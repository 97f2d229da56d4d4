"""Helpers the servers share and tests use on their own: a free port, URLs where nothing
answers (refused, unresolvable), S3's multipart ETag, S3's XML error body, HTTP dates.

Everything is on 127.0.0.1 or under ``.invalid`` (reserved, RFC 2606/6761): nothing here
reaches the network.
"""

from __future__ import annotations

import email.utils
import hashlib
import socket
from types import TracebackType
from typing import Any, TypeVar

#: A URL whose host never resolves: ``.invalid`` is reserved (RFC 2606/6761) and resolvers must
#: answer NXDOMAIN without asking anyone, so it fails fast and never hits a real host.
DNS_FAIL_URL = "http://no-such-host.invalid/challenges/2020/"


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


def s3_error(code: str, message: str, **extra: Any) -> bytes:
    """An S3-style XML error body (clients may log or parse it)."""
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{inner}"
        "<RequestId>FAULTSERVER</RequestId></Error>"
    ).encode()


def http_date(ts: float) -> str:
    """``ts`` as an HTTP date (``Last-Modified``, RFC 9110 section 5.6.7)."""
    return email.utils.formatdate(ts, usegmt=True)


_S = TypeVar("_S", bound="Lifecycle")


class Lifecycle:
    """``with Server(...) as srv:`` starts a server and always closes it, whatever the test
    raised: the one context-manager protocol every test server shares."""

    def start(self: _S) -> _S:  # pragma: no cover - every server defines it
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - every server defines it
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
