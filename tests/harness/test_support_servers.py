"""Sanity tests of the test servers themselves: if these fail, every download test lies.

Fast (a few seconds in all): small files, short stalls, everything on 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
import requests
from support.servers import (
    BadContentRange,
    FaultServer,
    IgnoreRange,
    ReplaceObject,
    Reset,
    S3Server,
    ShortBody,
    Stall,
    Status,
    multipart_etag_of,
    range_starts_at_or_after,
    ranged,
    refused_url,
    unresolvable_url,
)

NAME = "ISIC_2020_Training_GroundTruth.csv"
DATA = os.urandom(300_000)


@pytest.fixture
def srv(fault_server: FaultServer, served_dir: Path) -> FaultServer:
    (served_dir / NAME).write_bytes(DATA)
    return fault_server


def raw_get(
    srv: FaultServer, name: str, headers: dict[str, str] | None = None
) -> tuple[bytes, bytes, BaseException | None]:
    """GET over a bare socket: (head, body bytes received, error that ended the read)."""
    lines = [f"GET {srv.url_path(name)} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines += ["Connection: close", "", ""]
    buf = b""
    err: BaseException | None = None
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall("\r\n".join(lines).encode())
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            err = exc
    head, _, body = buf.partition(b"\r\n\r\n")
    return head, body, err


# ---- FaultServer: plain S3 behaviour --------------------------------------------------------


def test_get_and_head_like_s3(srv: FaultServer) -> None:
    r = requests.get(srv.url_for(NAME), headers={"Accept-Encoding": "gzip, deflate"}, timeout=5)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"] == f'"{hashlib.md5(DATA).hexdigest()}"'
    assert "Last-Modified" in r.headers and "Content-Encoding" not in r.headers
    h = requests.head(srv.url_for(NAME), timeout=5)
    assert h.status_code == 200 and h.headers["Content-Length"] == str(len(DATA))
    assert h.headers["ETag"] == r.headers["ETag"]
    assert srv.url == f"http://127.0.0.1:{srv.port}/challenges/2020/"


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len(DATA) - 1),
        ("bytes=-500", len(DATA) - 500, len(DATA) - 1),
        ("bytes=299990-400000", 299990, len(DATA) - 1),
    ],
)
def test_ranges(srv: FaultServer, spec: str, start: int, end: int) -> None:
    r = requests.get(srv.url_for(NAME), headers={"Range": spec}, timeout=5)
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert r.content == DATA[start : end + 1]
    assert r.headers["Content-Length"] == str(end - start + 1)


def test_unsatisfiable_range_and_missing(srv: FaultServer) -> None:
    r = requests.get(srv.url_for(NAME), headers={"Range": f"bytes={len(DATA)}-"}, timeout=5)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert b"InvalidRange" in r.content
    assert requests.get(srv.url_for("nope.zip"), timeout=5).status_code == 404
    assert requests.get(f"{srv.base_url}/{NAME}", timeout=5).status_code == 404  # outside prefix
    assert requests.get(srv.url + "..%2F..%2Fetc%2Fpasswd", timeout=5).status_code == 404


def test_etag_modes(srv: FaultServer, served_dir: Path) -> None:
    st = (served_dir / NAME).stat()
    srv.set_etag(NAME, "multipart", part_size=100_000)
    assert srv.etag_for(NAME) == f'"{multipart_etag_of(DATA, 100_000)}"'
    assert requests.head(srv.url_for(NAME), timeout=5).headers["ETag"].endswith('-3"')
    srv.set_etag(NAME, "opaque")
    assert srv.etag_for(NAME) == f'"{int(st.st_mtime):x}-{st.st_size:x}"'
    srv.set_etag(NAME, "none")
    assert "ETag" not in requests.head(srv.url_for(NAME), timeout=5).headers


def test_part_number_like_s3(srv: FaultServer) -> None:
    srv.set_etag(NAME, "multipart", part_size=128_000)
    etag = srv.etag_for(NAME)
    r = requests.get(srv.url_for(NAME) + "?partNumber=2", timeout=5)
    assert r.status_code == 206 and r.content == DATA[128_000:256_000]
    assert r.headers["x-amz-mp-parts-count"] == "3"
    assert r.headers["Content-Range"] == f"bytes 128000-255999/{len(DATA)}"
    assert r.headers["ETag"] == etag  # the whole object's ETag, as S3 sends
    h = requests.head(srv.url_for(NAME) + "?partNumber=3", timeout=5)
    assert h.status_code == 206 and h.headers["Content-Length"] == str(len(DATA) - 256_000)
    assert requests.head(srv.url_for(NAME) + "?partNumber=4", timeout=5).status_code == 416


def test_conditional_requests(srv: FaultServer) -> None:
    etag = srv.etag_for(NAME)
    assert etag is not None
    url = srv.url_for(NAME)
    rng = {"Range": "bytes=10-19"}
    assert requests.get(url, headers={**rng, "If-Match": '"nope"'}, timeout=5).status_code == 412
    assert requests.get(url, headers={**rng, "If-Match": etag}, timeout=5).status_code == 206
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=5).status_code == 304
    r = requests.get(url, headers={**rng, "If-Range": '"other"'}, timeout=5)
    assert r.status_code == 200 and r.content == DATA  # RFC 9110: stale validator, whole body
    assert requests.get(url, headers={**rng, "If-Range": etag}, timeout=5).status_code == 206
    lm = requests.head(url, timeout=5).headers["Last-Modified"]
    assert requests.get(url, headers={**rng, "If-Range": lm}, timeout=5).status_code == 206


def test_counting_and_request_log(srv: FaultServer) -> None:
    url = srv.url_for(NAME)
    requests.get(url, headers={"Range": "bytes=0-999"}, timeout=5)
    requests.get(url, timeout=5)
    requests.head(url, timeout=5)
    assert srv.bytes_sent(NAME) == 1000 + len(DATA)
    assert srv.bytes_sent() == srv.bytes_sent(srv.url_path(NAME))
    # In arrival order: the log takes a request when its handler ends, which under load can be
    # after the client (which has its answer) sent the next one.
    log = sorted(srv.requests(NAME), key=lambda r: r.arrived)
    assert [(r.method, r.status, r.bytes_sent) for r in log] == [
        ("GET", 206, 1000),
        ("GET", 200, len(DATA)),
        ("HEAD", 200, 0),
    ]
    assert log[0].header("range") == "bytes=0-999" and log[0].outcome == "ok"


def test_parallel_ranges(srv: FaultServer) -> None:
    step = 30_000
    with requests.Session() as s, concurrent.futures.ThreadPoolExecutor(8) as pool:

        def fetch(off: int) -> bytes:
            hdr = {"Range": f"bytes={off}-{off + step - 1}"}
            return s.get(srv.url_for(NAME), headers=hdr, timeout=5).content

        parts = list(pool.map(fetch, range(0, len(DATA), step)))
    assert b"".join(parts) == DATA
    assert srv.bytes_sent(NAME) == len(DATA)


# ---- FaultServer: faults --------------------------------------------------------------------


def test_reset_after_exact_bytes(srv: FaultServer) -> None:
    srv.add_fault(Reset(after=12_345), NAME)
    head, body, err = raw_get(srv, NAME)
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 12_345
    assert isinstance(err, ConnectionResetError)
    assert srv.requests(NAME)[0].outcome == "reset"
    with pytest.raises(requests.exceptions.RequestException):
        srv.add_fault(Reset(after=1000), NAME)
        requests.get(srv.url_for(NAME), timeout=5)
    r = requests.get(srv.url_for(NAME), timeout=5)  # both firings used up: healthy again
    assert r.content == DATA


def test_reset_random_offsets_are_seeded(srv: FaultServer) -> None:
    def offsets() -> list[int]:
        srv.clear_faults()
        srv.add_fault(Reset(after=(100, 50_000), seed=7), NAME, times=3)
        return [len(raw_get(srv, NAME)[1]) for _ in range(3)]

    first = offsets()
    assert first == offsets() and len(set(first)) > 1
    assert all(100 <= n <= 50_000 for n in first)


def test_reset_before_headers(srv: FaultServer) -> None:
    srv.add_fault(Reset(before_headers=True), NAME)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url_for(NAME), timeout=5)


def test_status_fault_counts_and_predicate(srv: FaultServer) -> None:
    rule = srv.add_fault(Status.slow_down(retry_after=1), NAME, times=2, when=ranged)
    url = srv.url_for(NAME)
    assert requests.get(url, timeout=5).status_code == 200  # not ranged: not fired
    for _ in range(2):
        r = requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert b"<Code>SlowDown</Code>" in r.content
    assert requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5).status_code == 206
    assert rule.fired == 2 and rule.remaining == 0
    srv.add_fault(Status(500), times=None, when=range_starts_at_or_after(1000))  # any path
    assert requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5).status_code == 206
    assert requests.get(url, headers={"Range": "bytes=1000-"}, timeout=5).status_code == 500
    assert requests.get(url, headers={"Range": "bytes=2000-"}, timeout=5).status_code == 500


def test_stall_trips_read_timeout_and_close_ends_it(served_dir: Path) -> None:
    """A stall holds the response open (the client's read timeout fires: had the server
    closed instead, the client would see a short body, not a timeout) until ``close()``
    ends it, long before its 600 s are up (the stall's log entry appears)."""
    (served_dir / NAME).write_bytes(DATA)
    server = FaultServer(served_dir, prefix="/challenges/2020/").start()
    server.add_fault(Stall(seconds=600, after=1000), NAME)
    with pytest.raises(requests.exceptions.ConnectionError, match="Read timed out"):
        r = requests.get(server.url_for(NAME), timeout=(2, 0.3), stream=True)
        assert r.status_code == 200
        b"".join(r.iter_content(65536))
    assert server.bytes_sent(NAME, settle=1) == 1000  # a stalled response is not "busy"
    assert server.requests(NAME, settle=0) == []  # still stalled: logged only when it ends
    server.close()
    deadline = time.monotonic() + 60  # a bound for the test, far below the stall's 600 s
    while not server.requests(NAME, settle=0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.outcome for r in server.requests(NAME, settle=0)] == ["stall"]


def test_ignore_range_and_bad_content_range(srv: FaultServer) -> None:
    url = srv.url_for(NAME)
    srv.add_fault(IgnoreRange(), NAME)
    requests.get(url, timeout=5)  # unranged: does not use up the fault
    r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
    assert r.status_code == 200 and r.content == DATA
    srv.add_fault(BadContentRange(shift=5), NAME)
    r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 105-204/{len(DATA)}"
    assert r.content == DATA[105:205]


def test_short_body(srv: FaultServer) -> None:
    srv.add_fault(ShortBody(sent=5000), NAME)
    head, body, err = raw_get(srv, NAME)
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert len(body) == 5000 and err is None  # clean EOF, too early
    srv.add_fault(ShortBody(), NAME)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(srv.url_for(NAME), timeout=5)


def test_replace_object_after_requests(srv: FaultServer) -> None:
    new = os.urandom(1000)
    srv.add_fault(ReplaceObject(new, after_requests=1), NAME)
    first = requests.get(srv.url_for(NAME), headers={"Range": "bytes=0-9"}, timeout=5)
    second = requests.get(srv.url_for(NAME), timeout=5)
    assert first.content == DATA[:10] and second.content == new
    assert first.headers["ETag"] != second.headers["ETag"]
    assert second.headers["ETag"] == f'"{hashlib.md5(new).hexdigest()}"'


def test_replace_object_after_bytes_keeps_stream_consistent(srv: FaultServer) -> None:
    new = os.urandom(len(DATA))
    srv.add_fault(ReplaceObject(new, after_bytes=50_000), NAME)
    r = requests.get(srv.url_for(NAME), timeout=5)
    assert r.content == DATA  # the response in flight still sends the old version
    assert requests.get(srv.url_for(NAME), timeout=5).content == new


def test_throttle(srv: FaultServer) -> None:
    """100 kB at 400 kB/s cannot arrive in under 0.2 s (a lower bound only: a busy machine
    can make it slower, never faster)."""
    srv.throttle(400_000, NAME)
    t0 = time.monotonic()
    r = requests.get(srv.url_for(NAME), headers={"Range": "bytes=0-99999"}, timeout=5)
    elapsed = time.monotonic() - t0
    assert r.content == DATA[:100_000] and elapsed >= 0.2


def test_most_at_once_counts_responses_in_flight_together(srv: FaultServer) -> None:
    """What the parallel-transfer tests rely on: one after another is 1, three throttled
    responses started together are 3."""
    url = srv.url_for(NAME)
    for _ in range(3):
        assert requests.get(url, headers={"Range": "bytes=0-99"}, timeout=5).status_code == 206
        assert srv.wait_idle()  # the handler counts a response done just after its last byte
    assert srv.most_at_once() == 1
    srv.reset_counters()
    srv.throttle(200_000, NAME)  # 50 kB each: ~0.25 s, so the three overlap
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda i: requests.get(
            url, headers={"Range": f"bytes={i}-{i + 49_999}"}, timeout=10).content, range(3)))
    assert got == [DATA[i : i + 50_000] for i in range(3)]
    assert srv.most_at_once() == 3


def test_no_tracebacks_on_client_disconnect(
    srv: FaultServer, capfd: pytest.CaptureFixture[str]
) -> None:
    srv.throttle(1_000_000, NAME)
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(f"GET {srv.url_path(NAME)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(100)
    srv.clear_faults()
    time.sleep(0.2)
    assert srv.requests(NAME)[0].outcome == "client_gone"
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out


def test_stop_and_start_on_same_port(srv: FaultServer) -> None:
    port = srv.port
    srv.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url_for(NAME), timeout=2)
    srv.start()
    assert srv.port == port and requests.get(srv.url_for(NAME), timeout=5).content == DATA


def test_refused_and_unresolvable_fail_fast() -> None:
    """Fast because nothing is waited for: the kernel refuses at once, the resolver answers
    "no such name" at once (a black-holed address would end in a connect timeout instead)."""
    for url, why in ((refused_url(), "Connection refused"),
                     (unresolvable_url(), "Failed to resolve|Name or service not known")):
        with pytest.raises(requests.exceptions.ConnectionError, match=why) as ei:
            requests.get(url + NAME, timeout=5)
        assert not isinstance(ei.value, requests.exceptions.ConnectTimeout), url


# ---- nginx ------------------------------------------------------------------------------------


@pytest.mark.nginx
def test_nginx_serves_ranges_and_counts(nginx_server_factory, served_dir: Path) -> None:  # noqa: ANN001
    (served_dir / NAME).write_bytes(DATA)
    ng = nginx_server_factory(served_dir)
    assert ng.url.endswith("/challenges/2020/")
    r = requests.get(ng.url_for(NAME), headers={"Range": "bytes=100-199"}, timeout=5)
    assert r.status_code == 206 and r.content == DATA[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    st = (served_dir / NAME).stat()
    assert r.headers["ETag"] == f'"{int(st.st_mtime):x}-{st.st_size:x}"'
    full = requests.get(ng.url_for(NAME), timeout=5)
    assert full.content == DATA and "Content-Encoding" not in full.headers
    stale = requests.get(
        ng.url_for(NAME), headers={"Range": "bytes=0-9", "If-Range": '"x"'}, timeout=5
    )
    assert stale.status_code == 200
    assert requests.get(ng.url_for("nope.zip"), timeout=5).status_code == 404
    assert ng.bytes_sent(NAME, wait_for=4) == 100 + 2 * len(DATA)


# ---- moto S3 ----------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_anonymous_get_single_put(s3_server: S3Server, s3_bucket: str) -> None:
    url = s3_server.upload(s3_bucket, NAME, DATA)
    r = requests.get(url, timeout=5)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["ETag"] == f'"{hashlib.md5(DATA).hexdigest()}"'
    assert requests.head(url, timeout=5).status_code == 200
    private = s3_server.upload(s3_bucket, "private.bin", b"x", public=False)
    assert requests.get(private, timeout=5).status_code == 403  # moto enforces ACLs for anon


@pytest.mark.s3
def test_s3_multipart_range_if_match_part_number(s3_server: S3Server, s3_bucket: str) -> None:
    url = s3_server.upload(s3_bucket, "multi.zip", DATA, part_size=128_000)
    etag = requests.head(url, timeout=5).headers["ETag"]
    assert etag == f'"{multipart_etag_of(DATA, 128_000)}"'
    r = requests.get(url, headers={"Range": "bytes=-500", "If-Match": etag}, timeout=5)
    assert r.status_code == 206 and r.content == DATA[-500:]
    assert r.headers["Content-Range"] == f"bytes {len(DATA) - 500}-{len(DATA) - 1}/{len(DATA)}"
    assert requests.get(url, headers={"If-Match": '"x"'}, timeout=5).status_code == 412
    h = requests.head(url + "?partNumber=1", timeout=5)  # moto: 200 (S3: 206), parts count ok
    assert h.headers["x-amz-mp-parts-count"] == "3"
    assert h.headers["Content-Length"] == "128000"


@pytest.mark.nginx
def test_nginx_limit_rate(nginx_server_factory, served_dir: Path) -> None:  # noqa: ANN001
    (served_dir / NAME).write_bytes(DATA)
    ng = nginx_server_factory(served_dir, limit_rate=1_000_000)
    t0 = time.monotonic()
    assert requests.get(ng.url_for(NAME), timeout=5).content == DATA
    assert time.monotonic() - t0 >= 0.1  # 300 kB at 1 MB/s, first chunk unthrottled
