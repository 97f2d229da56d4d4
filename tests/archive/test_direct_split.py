"""``--direct`` uses every connection even when its members coalesce into fewer ranges
(issue 14, goal 3): a range in flight is split at a member's local header for an idle
connection, and a connection dropped mid-piece resumes at the broken byte. Counted on a real
server (FaultServer on 127.0.0.1), never timed."""

from __future__ import annotations

import zipfile

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer, Reset

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TEST_ZIP = "ISIC_2020_Test_JPEG.zip"
MiB = 1 << 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    """~2,000 test JPEGs of ~2 KB: a ~4.5 MB zip, one range of members (< 8 MiB)."""
    return build_dataset(tmp_path_factory.mktemp("split"), n_train=20, n_test=2000,
                         image_size=128)


def _range_start(header: str | None) -> int:
    assert header is not None and header.startswith("bytes=")
    return int(header[6:].split("-")[0])


def test_one_range_is_served_over_every_connection_and_a_break_resumes_at_its_byte(
    dataset, tmp_path
) -> None:
    path = dataset.path(TEST_ZIP)
    with zipfile.ZipFile(path) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        cd_offset = zf.start_dir
        members = {i.filename.rsplit("/", 1)[-1]: zf.read(i) for i in infos
                   if i.filename.endswith(".jpg")}
    first = min(i.header_offset for i in infos if i.filename.endswith(".jpg"))
    assert cd_offset - first > 4 * MiB  # long enough for 4 pieces of >= 1 MiB
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        # ~1 MB/s per response: the pieces are in flight together however loaded the machine.
        srv.throttle(1_000_000, TEST_ZIP)
        # One break 100,000 bytes into a piece a second connection took (it starts past the
        # first request of the single range): it must resume at the broken byte.
        srv.add_fault(Reset(after=100_000), TEST_ZIP, times=1,
                      when=lambda r: r.ranged and first + 2 * MiB <= r.start < cd_offset)
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, "--json",
                    "--split", "test", "--direct", "--connections", "4",
                    env=cli_env(dataset.manifest_path), timeout=300)
        gets = [g for g in srv.requests(TEST_ZIP, "GET")
                if _range_start(g.header("Range")) < cd_offset]
        at_once = srv.most_at_once()
    assert r.returncode == 0, r.stderr
    assert "in 1 range) over 4 connections" in r.stderr, r.stderr
    # served by 4 connections at once, though the plan had one range
    assert at_once == 4, f"at most {at_once} responses at once"
    assert len({g.peer for g in gets}) >= 4  # (one more: the reset connection is replaced)
    # the images exact
    got = {p.name: p.read_bytes() for p in (data / "jpeg" / "test").iterdir()}
    assert got == members and len(got) == 2000
    # the broken piece resumed at the broken byte
    (broken,) = [g for g in gets if g.outcome == "reset"]
    at = _range_start(broken.header("Range")) + broken.bytes_sent
    assert broken.bytes_sent == 100_000
    assert at in {_range_start(g.header("Range")) for g in gets if g.outcome == "ok"}
    # every member byte served exactly once: the requests tile the range, no overlap
    served = sorted((_range_start(g.header("Range")), g.bytes_sent) for g in gets)
    pos = served[0][0]
    assert pos == first
    for start, n in served:
        assert start == pos, f"request at {start}, expected {pos}: a gap or an overlap"
        pos += n
    assert pos == cd_offset or pos >= max(i.header_offset for i in infos)
