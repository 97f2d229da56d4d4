"""Property-based tests of the range bookkeeping (hypothesis).

The promise: whatever sequence of partial responses, drops, bad ranges, throttling answers and
restarts happens, a download ends with exactly the source bytes at the final path, or with a
clear error and nothing at the final path; and a later clean run always completes it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.servers import BadContentRange, FaultServer, Reset, ShortBody, Status, ranged

from isic2020.errors import DownloadError
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.intervals import add_interval, missing_ranges, plan_chunk
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy

NAME = "ISIC_2020_Test_JPEG.zip"
SIZE = 700_001
CHUNK = 64 * 1024


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(1, 60)), max_size=40),
    st.integers(0, 500),
)
def test_finished_intervals_merge_into_exactly_the_union(spans, size) -> None:
    """Ranges finish in any order; the state keeps exactly their union, compactly, and the
    missing ranges are exactly the rest (so a resume asks for every missing byte, once)."""
    done: list[list[int]] = []
    covered: set[int] = set()
    for start, length in spans:
        done = add_interval(done, start, start + length)
        covered.update(range(start, start + length))
    assert {i for a, b in done for i in range(a, b)} == covered
    for (a, b), (c, _d) in zip(done, done[1:]):
        assert a < b < c  # sorted, disjoint, not adjacent: the state file stays small
    gaps = missing_ranges(done, size)
    assert {i for a, b in gaps for i in range(a, b)} == set(range(size)) - covered


@given(st.integers(1, 50 << 30), st.integers(1, 64), st.integers(1, 64 << 20))
def test_chunk_plan_keeps_every_connection_busy_in_the_last_round(size, connections, base):
    chunk = plan_chunk(size, connections, base)
    assert chunk >= min(base, 1 << 20)
    n = -(-size // chunk)
    if chunk > min(base, 1 << 20):  # not floored: chunks come in whole rounds (bar rounding)
        rounds = -(-n // connections)
        assert n > (rounds - 1) * connections


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mirror")
    data = os.urandom(SIZE)
    (root / NAME).write_bytes(data)
    with FaultServer(root, prefix="/challenges/2020/") as srv:
        yield srv, data


faults = st.lists(
    st.one_of(
        st.builds(Reset, after=st.integers(0, CHUNK), seed=st.integers(0, 9)),
        st.builds(Reset, before_headers=st.just(True)),
        st.builds(ShortBody, sent=st.one_of(st.none(), st.integers(0, CHUNK - 1))),
        st.builds(BadContentRange, shift=st.integers(-5, 5).filter(lambda s: s != 0)),
        st.just(Status.slow_down(retry_after=0)),
        st.just(Status.internal_error()),
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=faults, connections=st.integers(1, 4), give_up_early=st.booleans())
def test_any_fault_sequence_yields_the_exact_file_or_a_clear_error(
    server, plan, connections, give_up_early
):
    srv, data = server
    srv.clear_faults()
    for fault in plan:
        srv.add_fault(fault, NAME, times=2, when=ranged)
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp, ".isic2020", NAME + ".part")
        state = Path(tmp, ".isic2020", NAME + ".state.json")
        final = Path(tmp, NAME)
        window = 0.0 if give_up_early else 10.0
        opts = DownloadOptions(
            connections=connections,
            chunk_size=CHUNK,
            timeouts=Timeouts(connect=2, read=2),
            retry=RetryPolicy(base=0.001, cap=0.01, window=window, probe_attempts=1),
        )
        d = Downloader(opts)
        try:
            d.download(NAME, [srv.url_for(NAME)], partial, state, final)
        except DownloadError as exc:
            # A clear error, and nothing at the final path.
            assert "every host failed" in exc.message
            assert not final.exists()
        else:
            assert final.read_bytes() == data
        finally:
            d.close()
        # A "restart" after whatever happened: the next clean run completes exactly.
        srv.clear_faults()
        d = Downloader(opts)
        try:
            if not final.exists():
                d.download(NAME, [srv.url_for(NAME)], partial, state, final)
        finally:
            d.close()
        assert final.read_bytes() == data
        assert not partial.exists()
