"""What a server says about an object before we download it: size, ETag, Last-Modified.

``HEAD`` with a few quick retries (``GET bytes=0-0`` where HEAD is refused). For a multipart
S3 ETag (``<md5>-<N>``) the part size is asked with ``HEAD ?partNumber=1`` so the ETag can be
checked; a server that does not answer it gets the part sizes that fit the size and the part
count (``digests.part_size_candidates``), tried in order after the download.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from isic2020.transfer.digests import (
    etag_kind,
    multipart_count,
    normalize_etag,
    part_size_candidates,
)
from isic2020.transfer.http import Timeouts, header_int
from isic2020.transfer.model import RemoteObject
from isic2020.transfer.ranges import CONTENT_RANGE_RE
from isic2020.transfer.retry import (
    HostFailed,
    RetryPolicy,
    describe,
    network_errors,
    redirect_errors,
    retry_after,
)

if TYPE_CHECKING:
    import requests


class Prober:
    """Probes objects over one shared session (the caller's; never closed here).

    Invariant: :meth:`probe` returns a RemoteObject or raises HostFailed; a stated part size
    always cuts the object into exactly the ETag's part count (at most 10,000), so what a
    server claims can never make us keep more than 10,000 part digests.
    """

    def __init__(self, session: requests.Session, timeouts: Timeouts, retry: RetryPolicy):
        self.session = session
        self.timeouts = timeouts
        self.retry = retry

    def probe(self, url: str) -> RemoteObject:
        """HEAD the object (with a few quick retries); raise HostFailed when it cannot be had."""
        last = ""
        for attempt in range(self.retry.probe_attempts):
            try:
                resp = self.session.head(
                    url, timeout=self.timeouts.as_tuple(), allow_redirects=True
                )
            except redirect_errors() as exc:
                raise HostFailed(describe(exc)) from None
            except network_errors() as exc:
                last = describe(exc)
                from requests.exceptions import SSLError

                if "DNS" in last or isinstance(exc, SSLError):
                    break  # retrying cannot fix a missing name or a bad certificate
            else:
                if resp.status_code in (405, 501):
                    return self._probe_get(url)
                if resp.status_code == 200:
                    return self._remote_from(url, resp, resp.headers.get("Content-Length"))
                if resp.status_code in (429, 503) or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    time.sleep(self.retry.delay(attempt, retry_after(resp)))
                    continue
                raise HostFailed(f"HTTP {resp.status_code}")
            time.sleep(self.retry.delay(attempt))
        raise HostFailed(last or "no answer")

    def _probe_get(self, url: str) -> RemoteObject:
        with self.session.get(
            url, headers={"Range": "bytes=0-0"}, stream=True, timeout=self.timeouts.as_tuple()
        ) as resp:
            if resp.status_code == 206:
                m = CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
                total = m.group(3) if m else None
                return self._remote_from(url, resp, total if total != "*" else None)
            if resp.status_code == 200:
                return self._remote_from(url, resp, resp.headers.get("Content-Length"))
            raise HostFailed(f"HTTP {resp.status_code}")

    def _remote_from(self, url: str, resp: requests.Response, length: str | None) -> RemoteObject:
        size = header_int(length)
        remote = RemoteObject(
            url=url,
            size=size,
            etag=normalize_etag(resp.headers.get("ETag")),
            last_modified=resp.headers.get("Last-Modified"),
            validator=resp.headers.get("ETag"),
            content_encoding=resp.headers.get("Content-Encoding"),
        )
        if size and remote.etag and etag_kind(remote.etag) == "multipart":
            self._find_part_size(remote)
        return remote

    def _find_part_size(self, remote: RemoteObject) -> None:
        """The part size the server states (``HEAD ?partNumber=1``), else the candidates that
        fit: the first is hashed while downloading, the others only if it does not reproduce
        the ETag."""
        assert remote.size is not None and remote.etag is not None
        n = multipart_count(remote.etag)
        sep = "&" if "?" in remote.url else "?"
        try:
            resp = self.session.head(
                remote.url + sep + "partNumber=1", timeout=self.timeouts.as_tuple()
            )
            length = resp.headers.get("Content-Length", "")
            if resp.status_code in (200, 206) and header_int(length) is not None:
                p = int(length)
                if p > 0 and math.ceil(remote.size / p) == n and (n > 1 or p == remote.size):
                    remote.part_size, remote.part_size_source = p, "server"
                    return
        except network_errors():
            pass
        remote.part_sizes = tuple(part_size_candidates(remote.size, n))
        if remote.part_sizes:
            remote.part_size, remote.part_size_source = remote.part_sizes[0], "guess"
