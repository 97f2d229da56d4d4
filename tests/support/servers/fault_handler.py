"""What :class:`~support.servers.fault_server.FaultServer` answers: S3's rules for ranges,
``?partNumber=``, ETags and conditional requests (RFC 9110 section 13.2.2 order), and each
fault's effect on the answer.

A request opens its file once; the open handle pins one version (inode) of it, so an object
replaced mid-response keeps sending the old bytes, as S3 does for a GET in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import mimetypes
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Iterable
from typing import IO, Literal

from .common import http_date, s3_error
from .exchanges import LoggedRequest, RequestInfo
from .fault_wire import Abort, WireHandler
from .faults import (
    BadContentRange,
    BadLength,
    ExtraHeaders,
    Fault,
    FaultRule,
    FlipByte,
    GzipBody,
    Hold,
    PartSizeClaim,
    Redirect,
    Reset,
    RewriteEtag,
    ShortBody,
    Stall,
    Status,
    Throttle,
    Trickle,
)

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(value: str, size: int) -> tuple[int, int] | Literal["ignore", "unsatisfiable"]:
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


class FaultHandler(WireHandler):
    """The per-connection request handler: one S3-like answer per request, faults applied."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _not_allowed(self) -> None:
        self.close_connection = True  # the request body is not read: do not reuse the socket
        self._simple(405, s3_error("MethodNotAllowed", "Read-only test server"), {})
        self._record(405, 0, (), "ok")

    do_PUT = do_POST = do_DELETE = do_PATCH = _not_allowed

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
            parsed = parse_range(range_header, size)
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
        hold = chosen.get("hold")
        if hold is not None and isinstance(hold[1], Hold):
            self._idle_now()
            hold[1].wait(owner._stop)
            if hold[1].then == "drop" or owner._stop.is_set():
                self.close_connection = True
                self._record(None, 0, names, "held")
                return
            self._counted = True  # serving now: busy again
            owner._busy(1)
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
                404, s3_error("NoSuchKey", "The specified key does not exist."), {}
            )
            self._record(404, sent, names, "ok")
            return
        size = info.size
        common: dict[str, str] = {
            "Accept-Ranges": "bytes",
            "Last-Modified": http_date(st.st_mtime),
            "Content-Type": mimetypes.guess_type(info.path)[0] or "application/octet-stream",
        }
        if etag is not None:
            common["ETag"] = etag
        if self._answer_special(info, chosen, names, fh, size, etag, common):
            return

        # conditional requests, in RFC 9110 section 13.2.2 order
        if_match = self.headers.get("If-Match")
        if if_match is not None and not _strong_match(if_match, etag):
            body = s3_error(
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
            body = s3_error(
                "InvalidRequest", "Cannot specify both Range header and partNumber query parameter"
            )
            sent = self._simple(400, body, {})
            self._record(400, sent, names, "ok")
            return
        extra: dict[str, str] = {}
        if info.part_number is not None:
            if not 1 <= info.part_number <= n_parts:
                body = s3_error("InvalidPartNumber", "The requested partnumber is not satisfiable")
                sent = self._simple(416, body, {"Content-Range": f"bytes */{size}"})
                self._record(416, sent, names, "ok")
                return
            code, start, end = 206, info.start, info.end
            if mode == "multipart":
                extra["x-amz-mp-parts-count"] = str(n_parts)
        elif use_range and parsed == "unsatisfiable":
            body = s3_error(
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
            raise Abort from None
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
