"""How many connections a download runs (issue 14, goal 2), counted at the server, never timed.

What a user depends on: against a server that caps each connection, the default fetch opens
more connections than its start while that makes it faster, never more than the cap
(``$ISIC2020_MAX_CONNECTIONS``); ``--connections N`` means exactly N at once; a 503 SlowDown
makes it withdraw and grow no more (politeness to S3); every byte still arrives exactly once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from pathlib import Path

import pytest
from support.servers import FaultServer, Status

from isic2020.commands.fetch_options import download_options
from isic2020.transfer.adaptive import MAX_RETRY_WINDOWS, RETRY_WINDOWS, Growth
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.pool import Piece, RangePool, Span, SpanSink
from isic2020.transfer.ranges import RangeClient
from isic2020.transfer.retry import RetryPolicy
from isic2020.transfer.throttle import Throttle

KiB, MiB = 1024, 1024 * 1024
NAME = "blob.bin"
TIMEOUTS = Timeouts(connect=5.0, read=10.0)
RETRY = RetryPolicy(base=0.01, cap=0.1, window=60.0, probe_attempts=2)


def _serve(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(size)
    (root / NAME).write_bytes(data)
    return root, data


class Assembler(SpanSink):
    """Writes every piece's bytes into one buffer; a byte delivered twice is an error."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.seen = bytearray(size)
        self.lock = threading.Lock()

    def data(self, piece: Piece, offset: int, block: bytes) -> None:
        with self.lock:
            end = offset + len(block)
            assert not any(self.seen[offset:end]), "a byte delivered twice"
            self.seen[offset:end] = b"\x01" * len(block)
            self.buf[offset:end] = block


def _pool(srv: FaultServer, size: int, start: int, **kw) -> RangePool:
    url = srv.url_for(NAME)
    remote = Downloader(DownloadOptions(timeouts=TIMEOUTS, retry=RETRY)).probe(url)
    client = RangeClient(url, size, remote.etag, remote.last_modified, timeouts=TIMEOUTS,
                         retry=RETRY, throttle=Throttle(start), block=64 * KiB,
                         validator=remote.validator)
    return RangePool(client, start, **kw)


def test_an_adaptive_pool_adds_connections_on_a_capped_server_up_to_its_cap(tmp_path):
    size = 6 * MiB
    root, data = _serve(tmp_path, size)
    with FaultServer(root, prefix="/p/") as srv:
        srv.throttle(512 * KiB, NAME)  # per connection, as S3 caps one stream
        said: list[str] = []
        pool = _pool(srv, size, 2, max_connections=8, take_min=64 * KiB,
                     window=0.2, log=said.append)
        sink = Assembler(size)
        pool.run([Span(0, size // 2), Span(size // 2, size)], sink)
        at_once = srv.most_at_once()
    assert bytes(sink.buf) == data and all(sink.seen)
    assert 2 < at_once <= 8, f"{at_once} responses at once"
    assert pool.most <= 8
    # --verbose says each step the count took (what a user reads to see why it is N)
    assert said and said[0].startswith("connections: 2 -> "), said
    assert all(line.startswith("connections: ") for line in said), said


def test_a_fixed_count_is_exactly_that_many_connections_at_once(tmp_path):
    size = 3 * MiB
    root, data = _serve(tmp_path, size)
    with FaultServer(root, prefix="/p/") as srv:
        srv.throttle(512 * KiB, NAME)
        # what ``--connections 3`` hands the engine: fixed, no adaptation
        opts = download_options(3)
        assert (opts.connections, opts.max_connections) == (3, 3)
        dl = Downloader(opts)
        res = dl.download(NAME, [srv.url_for(NAME)], tmp_path / "part", tmp_path / "state",
                          tmp_path / "final")
        dl.close()
        at_once = srv.most_at_once()
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert at_once == 3


def test_the_default_fetch_opens_more_than_16_connections_never_past_the_cap(
    tmp_path, monkeypatch: pytest.MonkeyPatch
):
    size = 32 * MiB  # chunks for 20 connections: 4 are queued when the first 16 start
    root, data = _serve(tmp_path, size)
    monkeypatch.setenv("ISIC2020_MAX_CONNECTIONS", "20")
    with FaultServer(root, prefix="/p/") as srv:
        srv.throttle(512 * KiB, NAME)
        said: list[str] = []
        opts = dataclasses.replace(download_options(), log=said.append)
        assert (opts.connections, opts.max_connections) == (16, 20)
        dl = Downloader(opts)
        res = dl.download(NAME, [srv.url_for(NAME)], tmp_path / "part", tmp_path / "state",
                          tmp_path / "final")
        dl.close()
        at_once = srv.most_at_once()
        sent = srv.bytes_sent(NAME)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert 16 < at_once <= 20, f"{at_once} responses at once"
    assert res.bytes_transferred == sent == size  # no request is cut short, no byte twice
    assert f"{NAME}: connections: 16 -> 20" in " ".join(said), said  # what -v shows


def test_a_503_slowdown_withdraws_the_new_connections_and_stops_the_growth(tmp_path):
    size = 6 * MiB
    root, data = _serve(tmp_path, size)
    with FaultServer(root, prefix="/p/") as srv:
        srv.throttle(512 * KiB, NAME)
        # S3 answers an overload with SlowDown: here, any GET while 6 responses are in flight
        rule = srv.add_fault(Status.slow_down(retry_after=None), NAME, times=None,
                             when=lambda r: r.ranged and srv._active > 6)
        said: list[str] = []
        pool = _pool(srv, size, 4, max_connections=16, take_min=64 * KiB,
                     window=0.2, log=said.append)
        sink = Assembler(size)
        pool.run([Span(0, size // 2), Span(size // 2, size)], sink)
    assert bytes(sink.buf) == data and all(sink.seen)
    assert rule.fired >= 1
    assert pool.growth.stopped and pool.growth.target == 4  # the step withdrawn, no other
    assert said[-1].startswith("connections: staying at 4: the server throttled"), said
    # growth went on to 16 would have drawn a SlowDown for every request past 6
    assert rule.fired <= 4


def test_growth_keeps_a_step_only_when_the_rate_rose():
    g = Growth(16, 100)
    assert g.window(32.0, has_work=True) == 32  # first window: a base, then twice as many
    assert g.window(60.0, has_work=True) == 64  # +87% for +100% connections: kept
    assert g.window(66.0, has_work=True) == 32  # +10% for +100%: withdrawn
    assert not g.stopped


def test_a_trial_window_whose_rate_fell_is_measured_again():
    # A moment of a busy machine (a streamed zip's directory parsed while it downloads) drops
    # the aggregate in the very window that judges a step: that window decides nothing.
    g = Growth(16, 64)
    assert g.window(30.0, has_work=True) == 32
    assert g.window(12.0, has_work=True) == 32  # fell below the base: one more window
    assert g.window(60.0, has_work=True) == 64  # that one decides: it paid, kept, and on
    g = Growth(16, 64)
    assert g.window(30.0, has_work=True) == 32
    assert g.window(12.0, has_work=True) == 32
    assert g.window(13.0, has_work=True) == 16  # the second window decides, fallen or not
    assert g.retry_in == RETRY_WINDOWS


def test_a_step_that_did_not_pay_is_tried_again_ever_more_rarely():
    # One window is a small sample: a moment of a busy CPU must not hold a capped download at
    # half its rate for good, yet a link that is the bottleneck is asked ever more rarely.
    g = Growth(16, 64)
    assert g.window(30.0, has_work=True) == 32
    assert g.window(31.0, has_work=True) == 16  # no faster: withdrawn
    waits = []
    for _ in range(5):
        n = 0
        while g.window(30.0, has_work=True) == 16:  # waits at 16, then tries 32 again
            n += 1
            assert n < 100
        waits.append(n)
        assert g.window(30.5, has_work=True) == 16  # still no faster: withdrawn again
    assert waits == [RETRY_WINDOWS, 2 * RETRY_WINDOWS, 4 * RETRY_WINDOWS, MAX_RETRY_WINDOWS,
                     MAX_RETRY_WINDOWS]
    while g.window(30.0, has_work=True) == 16:
        pass
    assert g.window(60.0, has_work=True) == 64  # the retried step paid: kept, and on
    assert g.window(200.0, has_work=False) == 64  # no work for more: no step


def test_a_throttled_pool_never_grows_again():
    g = Growth(16, 100)
    assert g.window(32.0, has_work=True) == 32
    assert g.throttled() == 16 and g.stopped
    assert all(g.window(500.0 * i, has_work=True) == 16 for i in range(1, 200))
    capped = Growth(16, 20)
    assert capped.window(1.0, has_work=True) == 20  # never past the ceiling
    fixed = Growth(8, 8)
    assert fixed.fixed and fixed.window(1.0, has_work=True) == 8
    nothing = Growth(4, 64)
    assert nothing.window(10.0, has_work=False) == 4  # no work for more: no step
    assert nothing.window(10.0, has_work=True) == 8
    assert nothing.throttled() == 4 and nothing.stopped
