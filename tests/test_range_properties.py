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

from isic2020.download import (
    Downloader,
    DownloadOptions,
    RetryPolicy,
    _chunks_to_intervals,
    _intervals_to_chunks,
)
from isic2020.errors import DownloadError
from isic2020.http import Timeouts

NAME = "ISIC_2020_Test_JPEG.zip"
SIZE = 700_001
CHUNK = 64 * 1024


@given(st.sets(st.integers(min_value=0, max_value=500)))
def test_done_chunks_survive_the_state_file_round_trip(done: set[int]) -> None:
    intervals = _chunks_to_intervals(done)
    assert _intervals_to_chunks(intervals) == done
    # Intervals are sorted, disjoint and not adjacent: the state file stays small.
    for (a, b), (c, _d) in zip(intervals, intervals[1:]):
        assert a < b < c


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
