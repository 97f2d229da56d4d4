"""Runs that must end, and resumes that must not start over (issue 11, parts D and E2).

Each test runs the real ``isic2020`` process against FaultServer on 127.0.0.1 and checks what
a user sees: the exit code, one line on stderr, nothing at a final path, and what the next
run of the same command costs. Every run is bounded by a subprocess timeout tied to the
configured windows (retry window, lowest-speed window) with a generous factor, so a run that
never ends fails the test instead of hanging it; no test asserts how fast the tool is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.servers import FaultServer, IgnoreRange, Redirect, Reset, Trickle, method_is, ranged

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.config import parse_rate
from isic2020.synthetic import build_dataset
from isic2020.transfer.speed import SpeedGuard

PREFIX = "/challenges/2020/"
ARCHIVE = "ISIC_2020_Training_JPEG.zip"
KiB = 1024
MiB = 1024 * KiB
#: Seconds: short windows so a give-up comes quickly; the bounds below are multiples of them.
RETRY_WINDOW = 3.0
SPEED_TIME = 2.0
#: A run that has not ended after this many windows is a run that never ends.
FACTOR = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("synthetic"), n_train=24, n_test=12,
                         formats=("jpeg",))


@dataclasses.dataclass
class Mirror:
    root: Path
    manifest: Path
    blob: bytes


@pytest.fixture
def blob_mirror(dataset, tmp_path: Path) -> Mirror:
    """The synthetic mirror with a 4 MiB random training 'archive' (fetched --no-extract),
    pinned by size and sha256 in the manifest."""
    return _blob_mirror(dataset, tmp_path, 4 * MiB)


def _blob_mirror(dataset, tmp_path: Path, size: int) -> Mirror:
    root = tmp_path / "mirror"
    root.mkdir()
    blob = os.urandom(size)
    man = load_manifest(dataset.manifest_path)
    files = []
    for f in man.files:
        if f.name == ARCHIVE:
            (root / f.name).write_bytes(blob)
            f = dataclasses.replace(f, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        else:
            (root / f.name).write_bytes(dataset.path(f.name).read_bytes())
        files.append(f)
    path = tmp_path / "blob.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=tuple(files))))
    return Mirror(root, path, blob)


def _env(manifest: Path, **extra: str) -> dict[str, str]:
    return cli_env(manifest, ISIC2020_RETRY_WINDOW=str(RETRY_WINDOW),
                   ISIC2020_SPEED_TIME=str(SPEED_TIME), **extra)


def _args(data: Path, *mirrors: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
            "--no-extract", "--connections", "4", "--quiet", *extra]
    for m in mirrors:
        args += ["--mirror", m]
    return args


def _one_error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    return r.error_lines[0]


def _assert_nothing_landed(data: Path) -> None:
    assert not (data / "archives" / ARCHIVE).exists()


# --------------------------------------------------------------------------------------------
# D1: a server that ignores ranges and drops every connection before the end


def test_server_ignoring_ranges_and_dropping_every_connection_is_given_up(
    blob_mirror: Mirror, tmp_path: Path
):
    """Every GET of the archive is answered 200 with the whole body (ranges ignored) and the
    connection is reset after 1.5 MiB: each attempt starts from zero and gets no further.
    Restarts are no progress: after the retry window the run ends with exit 3 and one line
    saying the server neither resumes nor completes a transfer (it used to retry forever,
    as every restart "received" bytes). Once the server behaves, the same command works."""
    data = tmp_path / "d"
    with FaultServer(blob_mirror.root, prefix=PREFIX) as srv:
        srv.add_fault(IgnoreRange(), ARCHIVE, times=None)
        srv.add_fault(Reset(after=1536 * KiB), ARCHIVE, times=None)
        args = _args(data, srv.url)
        r = run_cli(*args, env=_env(blob_mirror.manifest), timeout=FACTOR * RETRY_WINDOW + 30)
        assert r.returncode == 3, r.stderr
        line = _one_error_line(r)
        assert "neither resumes nor completes a transfer" in line, line
        _assert_nothing_landed(data)
        attempts = [q for q in srv.requests(ARCHIVE, "GET") if q.outcome == "reset"]
        assert len(attempts) >= 2  # it did retry before giving up

        srv.clear_faults()
        r = run_cli(*args, env=_env(blob_mirror.manifest), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob_mirror.blob


def test_ranged_server_dropping_every_connection_early_still_completes(
    blob_mirror: Mirror, tmp_path: Path
):
    """The ranged counterpart: every ranged GET is reset after 100 KiB, less than one socket
    read's block. Each retry must resume after the bytes that came, so every attempt is new
    progress and the file completes, with little served twice (they used to be dropped with
    the unfinished block: the same range was asked again and again until the host was given
    up, exit 3)."""
    data = tmp_path / "d"
    size = len(blob_mirror.blob)
    with FaultServer(blob_mirror.root, prefix=PREFIX) as srv:
        srv.add_fault(Reset(after=100 * KiB), ARCHIVE, times=None, when=ranged)
        r = run_cli(*_args(data, srv.url), env=_env(blob_mirror.manifest),
                    timeout=FACTOR * RETRY_WINDOW + 60)
        served = srv.bytes_sent(ARCHIVE)
    assert r.returncode == 0, r.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob_mirror.blob
    assert served <= 1.25 * size, f"{served} bytes served for a {size}-byte file"


# --------------------------------------------------------------------------------------------
# D2: bodies that trickle


def test_trickling_ranges_fail_the_host_and_the_next_mirror_serves(
    blob_mirror: Mirror, tmp_path: Path
):
    """Every ranged GET of the archive trickles one byte every 0.5 s: never silent long
    enough for the read timeout, yet 4 MiB would take weeks. Below the lowest speed for
    ``$ISIC2020_SPEED_TIME`` a request fails; a host that only trickles is given up after the
    retry window: exit 3 and one line that names the rule, within a small multiple of the
    windows. With a good second mirror, the same command lands the exact file from it."""
    data = tmp_path / "d"
    env = _env(blob_mirror.manifest)
    bound = FACTOR * (RETRY_WINDOW + SPEED_TIME)
    with FaultServer(blob_mirror.root, prefix=PREFIX) as slow, FaultServer(
        blob_mirror.root, prefix=PREFIX
    ) as good:
        slow.add_fault(Trickle(nbytes=1, every=0.5), ARCHIVE, times=None, when=ranged)
        r = run_cli(*_args(data, slow.url), env=env, timeout=bound)
        assert r.returncode == 3, r.stderr
        line = _one_error_line(r)
        assert "slower than 1 KiB/s" in line and "ISIC2020_LOWEST_SPEED" in line, line
        _assert_nothing_landed(data)

        r = run_cli(*_args(data, slow.url, good.url), env=env, timeout=bound + 60)
        assert r.returncode == 0, r.stderr
        assert good.bytes_sent(ARCHIVE) > 0
    assert (data / "archives" / ARCHIVE).read_bytes() == blob_mirror.blob


def test_trickling_plain_stream_is_given_up(blob_mirror: Mirror, tmp_path: Path):
    """A server that ignores ranges (one plain stream) and trickles the body: the same rule
    ends it, exit 3, one line."""
    data = tmp_path / "d"
    with FaultServer(blob_mirror.root, prefix=PREFIX) as srv:
        srv.add_fault(IgnoreRange(), ARCHIVE, times=None)
        srv.add_fault(Trickle(nbytes=1, every=0.5), ARCHIVE, times=None)
        r = run_cli(*_args(data, srv.url), env=_env(blob_mirror.manifest),
                    timeout=FACTOR * (RETRY_WINDOW + SPEED_TIME))
    assert r.returncode == 3, r.stderr
    assert "slower than 1 KiB/s" in _one_error_line(r)
    _assert_nothing_landed(data)


def test_trickling_remote_zip_directory_read_is_given_up(dataset, tmp_path: Path):
    """``inspect`` reads the remote zip's directory with ranged GETs (the same range client
    as ``--direct`` and partial fetches): a trickling body ends in exit 3, one line."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.add_fault(Trickle(nbytes=1, every=0.5), ARCHIVE, times=None, when=ranged)
        r = run_cli("inspect", "--data-dir", str(tmp_path / "d"), "--split", "train",
                    "--format", "jpeg", "--mirror", srv.url, "--quiet",
                    env=_env(dataset.manifest_path),
                    timeout=FACTOR * (RETRY_WINDOW + SPEED_TIME))
    assert r.returncode == 3, r.stderr
    assert "slower than 1 KiB/s" in _one_error_line(r)


@pytest.mark.parametrize("value", ["fast", "-1", "1Q"])
def test_a_bad_lowest_speed_is_a_usage_error(blob_mirror: Mirror, tmp_path: Path, value: str):
    r = run_cli(*_args(tmp_path / "d", "http://127.0.0.1:9/"),
                env=_env(blob_mirror.manifest, ISIC2020_LOWEST_SPEED=value), timeout=60)
    assert r.returncode == 2, r.stderr
    assert "ISIC2020_LOWEST_SPEED" in _one_error_line(r)


# --------------------------------------------------------------------------------------------
# D3: redirects that go nowhere


REDIRECTS = {
    "loop": (Redirect(), "redirect loop"),
    "file": (Redirect(to="file:///etc/passwd"), "refused a redirect to file://"),
}


@pytest.mark.parametrize("get_only", [False, True], ids=["head-and-get", "get-only"])
@pytest.mark.parametrize("kind", sorted(REDIRECTS))
def test_redirect_loop_or_to_a_file_fails_the_host_and_the_next_mirror_serves(
    blob_mirror: Mirror, tmp_path: Path, kind: str, get_only: bool
):
    """A mirror whose archive redirects to itself forever, or to ``file:///etc/passwd``
    (for every request, or only for the GETs after a good HEAD): a failed host, named in one
    line, exit 3 when it is the only one; with a good mirror after it, the file comes from
    that one (it used to end in "internal error TooManyRedirects / InvalidSchema")."""
    fault, said = REDIRECTS[kind]
    data = tmp_path / "d"
    env = _env(blob_mirror.manifest)
    with FaultServer(blob_mirror.root, prefix=PREFIX) as bad, FaultServer(
        blob_mirror.root, prefix=PREFIX
    ) as good:
        bad.add_fault(fault, ARCHIVE, times=None, when=method_is("GET") if get_only else None)
        r = run_cli(*_args(data, bad.url), env=env, timeout=120)
        assert r.returncode == 3, r.stderr
        assert said in _one_error_line(r)
        _assert_nothing_landed(data)
        r = run_cli(*_args(data, bad.url, good.url), env=env, timeout=120)
        assert r.returncode == 0, r.stderr
    assert (data / "archives" / ARCHIVE).read_bytes() == blob_mirror.blob


# --------------------------------------------------------------------------------------------
# E2: an interrupt keeps what was written inside chunks, not only whole chunks


def _intervals(state: Path) -> list[list[int]]:
    """The byte intervals a partial file's state claims (none while there is no state)."""
    try:
        return [list(map(int, iv)) for iv in json.loads(state.read_text()).get("done", [])]
    except (OSError, ValueError):
        return []


def _claimed(state: Path) -> int:
    return sum(b - a for a, b in _intervals(state))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupt_half_way_then_the_same_command_serves_at_most_1_25x(
    dataset, tmp_path: Path, sig: signal.Signals
):
    """8 MiB over 4 throttled connections is 4 chunks of 2 MiB, all in flight at once: at 40%
    not one chunk is finished. Interrupted once the state file claims that much (SIGTERM, or
    kill -9), the same command then fetches only the rest: at most 1.25x the file served in
    all, the result "resumed", the bytes exact. (Signalled by what the state claims, not by
    what the server sent: checkpoints are spaced out on a slow disk, and bytes in socket
    buffers were sent but never written.)"""
    mirror = _blob_mirror(dataset, tmp_path, 8 * MiB)
    size = len(mirror.blob)
    data = tmp_path / "d"
    env = _env(mirror.manifest)
    with FaultServer(mirror.root, prefix=PREFIX) as srv:
        srv.throttle(600_000, ARCHIVE)
        args = _args(data, srv.url)
        proc = subprocess.Popen(cli_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            state = data / ".isic2020" / "partial" / f"{ARCHIVE}.state.json"
            while _claimed(state) < 0.4 * size:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the state never claimed 40 %"
                time.sleep(0.01)
            assert not any(b - a >= 2 * MiB for a, b in _intervals(state))  # inside chunks
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sig == signal.SIGTERM:
            assert proc.returncode == 130, err
        assert not (data / "archives" / ARCHIVE).exists()
        srv.clear_faults()
        r = run_cli(*args, "--json", env=env, timeout=120)  # the same command (+ --json)
        served = srv.bytes_sent(ARCHIVE)
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == ARCHIVE]
    assert entry["status"] == "resumed"
    assert (data / "archives" / ARCHIVE).read_bytes() == mirror.blob
    assert served <= 1.25 * size, f"{served} bytes served for a {size}-byte file"


# --------------------------------------------------------------------------------------------
# The lowest-speed rule itself, on a clock the test moves


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rate, trips", [(2048, False), (1100, False), (500, True), (0, True)])
def test_speed_guard_trips_only_after_a_whole_window_below_the_floor(rate: int, trips: bool):
    """1 KiB/s over 30 s: a body at or above the floor never trips; one below trips once the
    window has passed, never before (a slow start is not a failure)."""
    clock = _Clock()
    guard = SpeedGuard(1024, 30, clock=clock)
    tripped_at = None
    for _ in range(120):  # 60 s in steps of 0.5 s
        clock.now += 0.5
        if rate:
            guard.feed(rate // 2)
        if guard.too_slow() and tripped_at is None:
            tripped_at = clock.now - 100.0
    assert (tripped_at is not None) == trips
    if trips:
        assert tripped_at >= 30
    assert guard.healthy() == (not trips)


def test_speed_guard_off_and_rates():
    clock = _Clock()
    guard = SpeedGuard(0, 30, clock=clock)
    clock.now += 1000
    assert not guard.too_slow() and guard.healthy()
    assert parse_rate("1K") == 1024 and parse_rate("1.5M") == 1.5 * MiB and parse_rate("0") == 0
    for bad in ("", "fast", "-1", "1Q", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_rate(bad)
