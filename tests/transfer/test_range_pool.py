"""The one range pool (isic2020.transfer.pool) on its own, against the FaultServer.

What its two users (the whole-object engine, the archive layer's member fetcher) rely on:
every byte of every span reaches the sink exactly once and in order per piece, a broken
connection resumes at the broken byte (no byte sent twice), a 503 SlowDown halves the
connections, a sink that raises stops everything, and an idle connection takes over the back
half of a big span only where the span allows a cut.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.servers import FaultServer, Reset, Status, Throttle

from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.pool import Piece, RangePool, Span, SpanSink
from isic2020.transfer.ranges import RangeClient
from isic2020.transfer.retry import RetryPolicy
from isic2020.transfer.throttle import Throttle as ConnectionThrottle

KiB = 1024
NAME = "blob.bin"
SIZE = 1024 * KiB + 4321
TIMEOUTS = Timeouts(connect=2.0, read=2.0)
RETRY = RetryPolicy(base=0.01, cap=0.1, window=20.0, probe_attempts=2)


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / NAME).write_bytes(data)
    with FaultServer(root, prefix="/p/") as srv:
        yield srv, data


class Recorder(SpanSink):
    """Keeps every piece's bytes; checks order within a piece; may raise at an offset."""

    def __init__(self, fail_at: int | None = None, watch: ConnectionThrottle | None = None):
        self.lock = threading.Lock()
        self.pieces: dict[int, tuple[Piece, bytearray]] = {}
        self.ended: list[tuple[int, int, bool]] = []
        self.fail_at = fail_at
        self.watch = watch
        self.limits: list[int] = []

    def begin(self, piece: Piece) -> None:
        with self.lock:
            self.pieces[piece.index] = (piece, bytearray())

    def data(self, piece: Piece, offset: int, block: bytes) -> None:
        with self.lock:
            _, buf = self.pieces[piece.index]
            assert offset == piece.start + len(buf), "a block out of order or repeated"
            buf += block
            if self.watch is not None:
                self.limits.append(self.watch.limit)
        if self.fail_at is not None and offset + len(block) > self.fail_at:
            raise ValueError("the sink refuses")

    def end(self, piece: Piece, complete: bool) -> None:
        with self.lock:
            self.ended.append((piece.start, piece.end, complete))

    def tiles(self) -> list[tuple[int, int]]:
        return sorted((p.start, p.start + len(b)) for p, b in self.pieces.values())

    def assembled(self) -> bytes:
        out = bytearray(SIZE)
        for p, buf in self.pieces.values():
            out[p.start : p.start + len(buf)] = buf
        return bytes(out)


def _pool(srv: FaultServer, connections: int, **kw) -> RangePool:
    url = srv.url_for(NAME)
    remote = Downloader(DownloadOptions(timeouts=TIMEOUTS, retry=RETRY)).probe(url)
    client = RangeClient(url, SIZE, remote.etag, remote.last_modified, timeouts=TIMEOUTS,
                         retry=RETRY, throttle=ConnectionThrottle(connections),
                         block=64 * KiB, validator=remote.validator)
    return RangePool(client, connections, **kw)


def _spans(n: int) -> list[Span]:
    step = -(-SIZE // n)
    return [Span(a, min(SIZE, a + step)) for a in range(0, SIZE, step)]


def test_every_span_arrives_once_and_in_order(served):
    srv, data = served
    sink = Recorder()
    pool = _pool(srv, 3)
    pool.run(_spans(7), sink)
    assert sink.tiles() == [(s.start, s.end) for s in _spans(7)]
    assert sink.assembled() == data
    assert sorted(sink.ended) == [(s.start, s.end, True) for s in _spans(7)]
    assert srv.bytes_sent(NAME) == SIZE


def test_a_connection_dropped_mid_span_resumes_at_the_broken_byte(served):
    srv, data = served
    spans = _spans(4)
    broken = spans[1].start + 100_000
    srv.add_fault(Reset(after=100_000), NAME, times=1,
                  when=lambda r: r.ranged and r.start == spans[1].start)
    sink = Recorder()
    pool = _pool(srv, 2)
    pool.run(spans, sink)
    assert sink.assembled() == data
    assert pool.client.retries == 1
    assert srv.bytes_sent(NAME) == SIZE  # not one byte twice
    ranges = [r.header("Range") for r in srv.requests(NAME, "GET")]
    assert f"bytes={broken}-{spans[1].end - 1}" in ranges


def test_a_503_slowdown_halves_the_connections(served):
    srv, data = served
    srv.add_fault(Throttle(bytes_per_second=2_000_000), NAME, times=None)
    srv.add_fault(Status.slow_down(retry_after=0), NAME, times=1, when=lambda r: r.ranged)
    pool = _pool(srv, 4)
    sink = Recorder(watch=pool.client.throttle)
    pool.run(_spans(4), sink)
    assert sink.assembled() == data
    assert [r.status for r in srv.requests(NAME, "GET")].count(503) == 1
    assert min(sink.limits) == 2  # 4 halved, while the other connections were still reading


def test_a_sink_that_raises_stops_the_pool_and_its_error_surfaces(served):
    srv, _ = served
    srv.add_fault(Throttle(bytes_per_second=2_000_000), NAME, times=None)
    sink = Recorder(fail_at=200_000)
    pool = _pool(srv, 2)
    with pytest.raises(ValueError, match="the sink refuses"):
        pool.run(_spans(8), sink)
    assert len(sink.pieces) < 8, "spans were still begun after the sink raised"
    assert not any(done for a, b, done in sink.ended if a <= 200_000 < b)
    assert srv.bytes_sent(NAME) < SIZE


def test_one_big_span_is_cut_at_its_cuts_as_connections_take_it(served):
    srv, data = served
    srv.add_fault(Throttle(bytes_per_second=1_000_000), NAME, times=None)
    cuts = tuple(range(100_000, SIZE, 100_000))
    sink = Recorder()
    pool = _pool(srv, 4, take_min=64 * KiB)
    pool.run([Span(0, SIZE, tag="one span", cuts=cuts)], sink)
    assert sink.assembled() == data
    tiles = sink.tiles()
    assert len(tiles) >= 4, "the other connections did not help with the span"
    assert srv.most_at_once() == 4
    assert tiles[0][0] == 0 and tiles[-1][1] == SIZE
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:])), "pieces do not tile the span"
    assert all(a in cuts for a, _ in tiles[1:])
    assert all(p.span.tag == "one span" for p, _ in sink.pieces.values())
    assert all(complete for _, _, complete in sink.ended)
    assert srv.bytes_sent(NAME) == SIZE  # one request per piece: no byte served twice


def test_a_span_without_cuts_is_never_split(served):
    srv, data = served
    srv.add_fault(Throttle(bytes_per_second=2_000_000), NAME, times=None)
    sink = Recorder()
    pool = _pool(srv, 4, take_min=64 * KiB)
    pool.run([Span(0, SIZE, cuts=())], sink)
    assert sink.tiles() == [(0, SIZE)]
    assert sink.assembled() == data
