"""``fetch``'s network conventions, as aria2c and curl users expect them: ``--limit-rate`` over
all connections, ``--timeout``/``--connect-timeout``/``--retry-window`` beside their environment
variables (the option wins), plain folder paths as mirrors, and subsets or ``--direct`` read in
place from a ``file://`` mirror (only the members' bytes, no copy of the archive).

Real processes against a real FaultServer or a real folder; no timing upper bounds (a lower
bound on time is what a rate cap promises).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.fixtures import served_dataset
from support.servers.faults import Stall

from isic2020.transfer.ratelimit import MIN_BURST, RateLimit

ZIP = "ISIC_2020_Training_JPEG.zip"


# Photo-sized stored JPEGs: a training zip of a few MB, enough for a rate to show.
dataset, server = served_dataset(
    "synthetic", n_train=16, n_test=4, photo=True, photo_sizes=[(1024, 768)], compression="stored"
)


def _fetch(data: Path, mirror: str, *extra: str, manifest: Path, **env: str):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", mirror, "--split", "train",
                   *extra, env=cli_env(manifest, **env))


def test_limit_rate_caps_the_sum_of_all_connections_and_never_trips_the_lowest_speed(
    dataset, server, tmp_path
):
    """``-c 4 --limit-rate R``: the whole fetch takes at least (bytes - burst) / R, so the cap
    is on the sum of the 4 connections (a cap per connection would be 4x faster); and the
    lowest-speed rule, set at R/2, twice each connection's quarter share, never fires: the
    time a read waits for the cap is ours, not the server's."""
    size = (dataset.root / ZIP).stat().st_size
    rate = max(size // 4, MIN_BURST)  # about 4 s for the zip
    t0 = time.monotonic()
    r = _fetch(tmp_path / "data", server.url, "--format", "jpeg", "-c", "4",
               "--limit-rate", str(rate), "--json", manifest=dataset.manifest_path,
               ISIC2020_LOWEST_SPEED=str(rate // 2), ISIC2020_SPEED_TIME="1")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    doc = r.json
    total = sum(f["bytes_transferred"] for f in doc["files"])
    assert total >= size
    burst = RateLimit(rate).burst
    assert took >= (total - burst) / rate * 0.95, (took, total, rate)
    peers = {q.peer for q in server.requests() if q.method == "GET" and q.path.endswith(ZIP)}
    assert len(peers) >= 2  # the zip came over several connections, under one cap
    zip_row = next(f for f in doc["files"] if f["name"] == ZIP)
    assert zip_row["retries"] == 0, zip_row


@pytest.mark.parametrize("bad", ["fast", "-1M", "1X", "inf"])
def test_a_malformed_limit_rate_is_one_line_and_exit_2(dataset, server, tmp_path, bad):
    r = _fetch(tmp_path / "data", server.url, "--format", "none", f"--limit-rate={bad}",
               manifest=dataset.manifest_path)
    assert r.returncode == 2, r.stderr
    assert len(r.error_lines) == 1 and "--limit-rate" in r.error_lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "metadata").exists()


def test_timeout_and_retry_window_options_win_over_their_environment_variables(
    dataset, server, tmp_path
):
    """The environment says a read may wait 6 s and a host may go 30 s without a byte; the
    server stalls one request 8 s mid-body. ``--retry-window 3`` wins over the 30 s: the 6 s
    wait exceeds it and the only host is given up (exit 3). Adding ``--timeout 0.3`` wins
    over the 6 s: the stalled read is retried at once and the fetch completes."""
    def stalled(data: Path, *extra: str):
        server.clear_faults()
        server.add_fault(Stall(seconds=8, after=0), ZIP, times=1,
                         when=lambda req: req.ranged and req.start == 0)
        return _fetch(data, server.url, "--format", "jpeg", "-c", "1", "--json", *extra,
                      manifest=dataset.manifest_path, ISIC2020_READ_TIMEOUT="6",
                      ISIC2020_RETRY_WINDOW="30")

    window_only = stalled(tmp_path / "a", "--retry-window", "3")
    assert window_only.returncode == 3, window_only.stderr
    both = stalled(tmp_path / "b", "--retry-window", "3", "--timeout", "0.3")
    assert both.returncode == 0, both.stderr
    row = next(f for f in both.json["files"] if f["name"] == ZIP)
    assert row["retries"] >= 1, row


@pytest.mark.parametrize("option", ["--timeout", "--connect-timeout", "--retry-window"])
def test_a_non_positive_timeout_option_is_refused_before_anything_is_read(
    dataset, server, tmp_path, option
):
    r = _fetch(tmp_path / "data", server.url, "--format", "none", option, "0",
               manifest=dataset.manifest_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and option in r.stderr
    assert server.requests() == []


def test_a_plain_folder_path_is_a_mirror(dataset, tmp_path):
    """``--mirror ./mirror`` (relative, resolved against the working directory) works as
    ``file://`` does: every file verified, the images unpacked."""
    link = tmp_path / "work" / "mirror"
    link.parent.mkdir()
    link.symlink_to(dataset.root, target_is_directory=True)
    data = tmp_path / "data"
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", "./mirror", "--split", "train",
                "--json", env=cli_env(dataset.manifest_path), cwd=link.parent)
    assert r.returncode == 0, r.stderr
    assert r.json["ok"] is True
    assert len(list((data / "jpeg" / "train").glob("ISIC_*.jpg"))) == 16


def test_a_mirror_path_that_does_not_exist_is_one_line_and_exit_2(dataset, tmp_path):
    r = _fetch(tmp_path / "data", str(tmp_path / "no-such-mirror"), "--format", "none",
               manifest=dataset.manifest_path)
    assert r.returncode == 2, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert "does not exist" in r.error_lines[0] and "no-such-mirror" in r.error_lines[0]
    assert not (tmp_path / "data" / "metadata").exists()


def _no_archive_copy(data: Path) -> None:
    """Neither a kept archive nor a partial copy of the zip anywhere under DATA."""
    big = [p for p in data.rglob("*") if p.is_file() and p.stat().st_size > 400_000]
    assert big == [], big


def test_a_subset_from_a_file_mirror_reads_only_its_members_in_place(dataset, tmp_path):
    """``--sample 3`` from a ``file://`` mirror: the three images, each CRC-checked, verify
    passes, and the bytes read are those members and the directory, not the whole zip (no copy
    of the archive lands in DATA, not even as a partial file)."""
    data = tmp_path / "data"
    r = _fetch(data, dataset.root.as_uri(), "--sample", "3", "--json",
               manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    row = next(f for f in r.json["files"] if f["name"] == ZIP)
    size = (dataset.root / ZIP).stat().st_size
    assert 0 < row["bytes_transferred"] < size / 2, row
    assert len(list((data / "jpeg" / "train").glob("ISIC_*.jpg"))) == 3
    _no_archive_copy(data)
    v = run_cli("verify", "--data-dir", str(data), "--split", "train",
                env=cli_env(dataset.manifest_path))
    assert v.returncode == 0, v.stdout + v.stderr


def test_direct_from_a_plain_path_mirror_unpacks_every_image_and_stores_no_archive(
    dataset, tmp_path
):
    data = tmp_path / "data"
    r = _fetch(data, str(dataset.root), "--direct", "--json", manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    images = sorted(p.name for p in (data / "jpeg" / "train").glob("ISIC_*.jpg"))
    assert len(images) == 16
    _no_archive_copy(data)
    again = _fetch(data, str(dataset.root), "--direct", "--json",
                   manifest=dataset.manifest_path)
    assert again.returncode == 0, again.stderr
    row = next(f for f in again.json["files"] if f["name"] == ZIP)
    assert row["extraction"]["written"] == 0  # a re-run finds every image in place


@pytest.mark.parametrize("extra, images", [((), 16), (("--sample", "3"), 3)],
                         ids=["whole", "sample"])
def test_an_upper_case_file_scheme_is_a_file_mirror(dataset, tmp_path, extra, images):
    """``--mirror FILE:///folder`` is the same mirror as ``file:///folder`` (URL schemes are
    case-insensitive, and ``--mirror`` accepts it): the whole-file copy and the in-place member
    reads both take it as a local folder, never as a host to send an HTTP request to."""
    url = "FILE" + dataset.root.as_uri()[len("file"):]
    data = tmp_path / "data"
    r = _fetch(data, url, *extra, "--json", manifest=dataset.manifest_path)
    assert r.returncode == 0, r.stderr
    assert len(list((data / "jpeg" / "train").glob("ISIC_*.jpg"))) == images
    if extra:
        _no_archive_copy(data)
    dry = _fetch(tmp_path / "dry", url, "--dry-run", manifest=dataset.manifest_path)
    assert dry.returncode == 0, dry.stderr
    assert "unreachable" not in dry.stdout + dry.stderr, dry.stdout
