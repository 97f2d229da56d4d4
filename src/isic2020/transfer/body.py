"""A response body read straight into the caller's buffer: one ``recv_into`` per read.

Why below urllib3: its ``read1`` allocates a bytes object for every socket read, and a block
of several reads is then joined into one more: an allocation and a copy of every byte, paid
again for each read when the sender is slower than the receiver (each ``recv`` then returns
little). For a plain body (a Content-Length, not chunked, no content coding) over CPython's
``http.client``, :class:`BodyReader` first takes what the response's buffered socket file
already holds (``read1``, which never waits once it has bytes), then reads the socket itself
(the file's ``raw``, ``recv_into`` the caller's buffer). Not ``readinto1`` on the buffered
file: with a few bytes buffered it copies them out and then waits on the socket, and a
timeout there loses the copied bytes' count (a retry would fetch them again instead of
resuming after them). It keeps ``http.client``'s count of what is left, and at the body's last
byte closes the response and hands the connection back to urllib3's pool, exactly as urllib3
does when it reads a body to its end, so keep-alive works as before.

Anything else (a chunked body, a content coding, another HTTP stack under urllib3) is read
with urllib3's ``read1`` (undecoded) and copied into the buffer: the same bytes, one copy
more. Errors are what the caller already retries: a socket timeout (``TimeoutError``), a reset
(``ConnectionError``), and a body that ends before its Content-Length (``ConnectionError``
naming it), after the bytes that did arrive were returned.

Invariant: the reader never reads past the body (at most ``length`` bytes from the socket
file), so the connection's next response starts where it should.
"""

from __future__ import annotations

import http.client
import io
from typing import Any, Protocol


class Reader(Protocol):
    def readinto1(self, view: memoryview) -> int:
        """At most ``len(view)`` body bytes into ``view``, from one socket read at most;
        0 only at the body's end."""
        ...


class Truncated(ConnectionError):
    """The connection closed before the body's Content-Length was reached."""


class BodyReader:
    """The body of one streamed ``requests`` response (``resp.raw``, nothing read from it
    yet), read into caller-owned buffers; see the module for the two paths."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._http: http.client.HTTPResponse | None = None
        self._file: io.BufferedReader | None = None
        self._socket: Any = None  # the file's raw socket, once the file's buffer is empty
        # urllib3 keeps the http.client response it reads from as ``_fp`` (no public name);
        # the direct path is taken only when everything it relies on is as checked here.
        inner = getattr(raw, "_fp", None)
        coding = raw.headers.get("Content-Encoding", "identity").strip().lower()
        if (
            isinstance(inner, http.client.HTTPResponse)
            and not inner.chunked
            and isinstance(inner.length, int)
            and isinstance(inner.fp, io.BufferedReader)
            and coding in ("", "identity")
            and raw.tell() == 0
        ):
            self._http, self._file = inner, inner.fp

    @property
    def direct(self) -> bool:
        """Whether reads go from the socket file into the caller's buffer (no copy between)."""
        return self._http is not None

    def readinto1(self, view: memoryview) -> int:
        inner, fp = self._http, self._file
        if inner is None or fp is None:
            data = self.raw.read1(len(view), decode_content=False) or b""
            n = len(data)
            view[:n] = data
            return n
        left = inner.length or 0
        if left <= 0 or not view:
            return 0
        want = min(len(view), left)
        if self._socket is None:  # bytes the file read ahead with the headers come first
            data = fp.read1(want)
            n = len(data)
            view[:n] = data
            if n < want:  # read1 returned all it held (or read the socket once): it is empty
                self._socket = fp.raw
        else:
            n = self._socket.readinto(view[:want]) or 0
        if not n:
            inner.close()
            raise Truncated(
                f"connection closed before the body was complete ({left} bytes missing)")
        left -= n
        inner.length = left
        if left == 0:  # the body's end: as urllib3 does, close it and give back the connection
            inner.close()
            self.raw.release_conn()
        return n
