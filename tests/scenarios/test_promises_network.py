"""README promises about the network that no other test showed, each tried for real: a
``file://`` mirror, proxies from the environment, the User-Agent, the connect timeout, the
connection limit, a 503 halving the parallel requests, failover to the next mirror
mid-transfer (and never a splice across hosts with different ETags), and SIGTERM.

Servers are real sockets on 127.0.0.1 (tests/support/servers/, tests/support/netpeers.py);
the CLI runs as a real process. No test bounds wall-clock time: each counts requests, bytes or
connections, and only the subprocess timeouts guard against a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.netpeers import (
    VIA,
    ForwardProxy,
    TrackingServer,
    blackhole_url,
    self_signed_certificate,
    serve_tls,
)
from support.servers import FaultServer, Status, range_starts_at_or_after

from isic2020.synthetic import build_dataset
from isic2020.transfer.engine import Downloader
from isic2020.transfer.http import Timeouts
from isic2020.transfer.model import DownloadOptions
from isic2020.transfer.retry import RetryPolicy
from isic2020.version import __version__

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"
TEST_CSV = "ISIC_2020_Test_Metadata.csv"
KiB = 1024


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    """About 260 KB of training zip (120 images of 128 px): enough chunks to interrupt."""
    return build_dataset(
        tmp_path_factory.mktemp("syn"), n_train=120, n_test=10, image_size=128
    )


def _env(dataset, **extra: str) -> dict[str, str]:
    return cli_env(dataset.manifest_path, **extra)


def _no_proxy_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without any inherited proxy settings (either case)."""
    return {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("isic2020: error")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# --------------------------------------------------------------------------------------------
# --mirror file://


def test_file_mirror_fetches_verifies_and_unpacks_without_any_server(dataset, tmp_path):
    """``--mirror file:///folder``: every file copied from the folder, checked against the
    manifest's sha256, unpacked and verified; no host is contacted (the manifest's hosts are
    the official https ones, and no server runs here). A damaged copy in the folder is refused
    with exit 1 and nothing reaches the layout."""
    data = tmp_path / "data"
    url = dataset.root.as_uri()
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
                "--format", "jpeg", "--json", env=_env(dataset))
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["verification"]["ok"] is True
    for entry in doc["files"]:
        assert entry["url"] == f"{url}/{entry['name']}"
        assert entry["etag_check"] == "sha256"
        assert Path(entry["path"]).read_bytes() == dataset.path(entry["name"]).read_bytes()
    assert sorted(p.stem for p in (data / "jpeg" / "train").iterdir()) == sorted(
        dataset.train_names
    )

    damaged_root = tmp_path / "damaged-mirror"
    damaged_root.mkdir()
    for f in dataset.root.iterdir():
        (damaged_root / f.name).write_bytes(f.read_bytes())
    blob = bytearray((damaged_root / ZIP).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (damaged_root / ZIP).write_bytes(bytes(blob))
    other = tmp_path / "other"
    r = run_cli("fetch", "--data-dir", str(other), "--mirror", damaged_root.as_uri(),
                "--split", "train", "--format", "jpeg", env=_env(dataset))
    assert r.returncode == 1, r.stderr
    line = _one_error_line(r.stderr)
    assert ZIP in line and "sha256" in line
    assert not (other / "archives" / ZIP).exists()
    assert not (other / "jpeg" / "train").exists() or not any((other / "jpeg" / "train").iterdir())


# --------------------------------------------------------------------------------------------
# Proxies and the User-Agent


def test_http_proxy_from_the_environment_carries_every_request_and_no_proxy_bypasses_it(
    dataset, tmp_path
):
    """``HTTP_PROXY`` sends every request through the proxy (the origin sees each one with
    the proxy's ``Via`` header, and as many as the proxy forwarded); with the origin in
    ``NO_PROXY`` the proxy sees nothing and the origin gets the requests directly."""
    with FaultServer(dataset.root, prefix=PREFIX) as origin, ForwardProxy() as proxy:
        base = _no_proxy_env(_env(dataset))
        env = dict(base, HTTP_PROXY=proxy.url, NO_PROXY="no-such-host.invalid")
        r = run_cli("fetch", "--data-dir", str(tmp_path / "a"), "--mirror", origin.url,
                    "--split", "train", "--format", "jpeg", "--json", env=env)
        assert r.returncode == 0, r.stderr
        seen = origin.requests()
        assert seen, "the origin got no request at all"
        assert all(req.header("Via") == VIA for req in seen), [
            (req.method, req.path, req.header("Via")) for req in seen
        ]
        through = proxy.requests()
        assert len(through) == len(seen)
        assert {(q.method, urlpath(q.target)) for q in through} == {
            (s.method, s.path) for s in seen
        }
        assert any(q.method == "GET" and q.headers.get("Range") for q in through)

        origin.reset_counters()
        env = dict(base, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        before = len(proxy.requests())
        r = run_cli("fetch", "--data-dir", str(tmp_path / "b"), "--mirror", origin.url,
                    "--split", "test", "--format", "none", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert len(proxy.requests()) == before, "NO_PROXY was not honoured"
        seen = origin.requests()
        assert seen and all(req.header("Via") is None for req in seen)


def test_https_proxy_from_the_environment_tunnels_the_https_requests(dataset, tmp_path):
    """The official hosts are https: ``HTTPS_PROXY`` carries them as ``CONNECT`` tunnels to
    the host (certificate still verified, here via ``REQUESTS_CA_BUNDLE``); every byte the
    origin sent crossed the proxy, and the origin saw every request."""
    cert, key = self_signed_certificate(tmp_path / "tls")
    with FaultServer(dataset.root, prefix=PREFIX) as origin, ForwardProxy() as proxy:
        url = serve_tls(origin, cert, key)
        env = dict(_no_proxy_env(_env(dataset)), HTTPS_PROXY=proxy.url,
                   NO_PROXY="no-such-host.invalid", REQUESTS_CA_BUNDLE=str(cert))
        r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", url,
                    "--split", "train", "--format", "jpeg", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert r.json["verification"]["ok"] is True
        sent = origin.bytes_sent()
        connects = proxy.requests()
    assert connects and {q.method for q in connects} == {"CONNECT"}
    assert {q.target for q in connects} == {f"127.0.0.1:{origin.port}"}
    assert sent >= dataset.path(ZIP).stat().st_size
    assert proxy.tunneled > sent  # the bodies plus TLS and HTTP overhead, both ways


def urlpath(target: str) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(target).path)


def test_every_request_names_isic2020_and_its_version_in_the_user_agent(dataset, tmp_path):
    """HEADs, ranged GETs of the archive and the metadata GETs all carry
    ``User-Agent: isic2020/<version> ...`` (the server's own log)."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", srv.url,
                    "--split", "train", "--format", "jpeg", env=_env(dataset))
        assert r.returncode == 0, r.stderr
        seen = srv.requests()
    assert {req.method for req in seen} == {"HEAD", "GET"}
    agents = {req.header("User-Agent") for req in seen}
    assert len(agents) == 1, agents
    (agent,) = agents
    assert agent is not None and agent.startswith(f"isic2020/{__version__} "), agent


# --------------------------------------------------------------------------------------------
# Connect timeout, connection limit


def test_a_host_that_never_accepts_is_given_up_by_the_connect_timeout_then_the_next_serves(
    dataset, tmp_path
):
    """A first mirror whose port is open but never accepts (full backlog: the kernel drops
    the SYNs): ``$ISIC2020_CONNECT_TIMEOUT`` ends each attempt, the host is named as timed
    out in ``failed_hosts`` and the next mirror serves the file; with only that host, exit 3
    and one line saying it timed out. The kernel alone would retry the SYN for minutes (more
    than the subprocess timeout here), so finishing at all shows the connect timeout."""
    retries = int(Path("/proc/sys/net/ipv4/tcp_syn_retries").read_text())
    kernel_gives_up_after = 2 ** (retries + 1) - 1  # 1 + 2 + 4 + ... seconds of SYN retries
    timeout = 60
    assert kernel_gives_up_after > timeout
    env = _env(dataset, ISIC2020_CONNECT_TIMEOUT="1")
    with blackhole_url() as dead, FaultServer(dataset.root, prefix=PREFIX) as live:
        r = run_cli("fetch", "--data-dir", str(tmp_path / "a"), "--mirror", dead,
                    "--mirror", live.url, "--split", "test", "--format", "none", "--json",
                    env=env, timeout=timeout)
        assert r.returncode == 0, r.stderr
        (entry,) = r.json["files"]
        assert entry["url"].startswith(live.url)
        assert len(entry["failed_hosts"]) == 1
        assert entry["failed_hosts"][0].startswith(dead) and "timed out" in entry[
            "failed_hosts"][0]

        r = run_cli("fetch", "--data-dir", str(tmp_path / "b"), "--mirror", dead,
                    "--split", "test", "--format", "none", env=env, timeout=timeout)
    assert r.returncode == 3, r.stderr
    line = _one_error_line(r.stderr)
    assert TEST_CSV in line and "timed out" in line
    assert not (tmp_path / "b" / "metadata" / TEST_CSV).exists()


@pytest.mark.parametrize("n", ["65", "0", "-1"])
def test_connections_outside_1_to_64_are_refused_exit_2_and_nothing_is_written(
    dataset, tmp_path, n
):
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url,
                    "--connections", n, env=_env(dataset))
        assert srv.requests() == []
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r.stderr)
    assert "--connections" in line and "1<=x<=64" in line.replace(" ", "")
    assert not data.exists()


def test_connections_64_is_accepted(dataset, tmp_path):
    """The upper end of the documented range is a working fetch, not a usage error."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli("fetch", "--data-dir", str(tmp_path / "d"), "--mirror", srv.url,
                    "--split", "train", "--format", "jpeg", "--connections", "64",
                    env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "archives" / ZIP).read_bytes() == dataset.path(ZIP).read_bytes()


# --------------------------------------------------------------------------------------------
# 503 SlowDown halves the parallel requests


def test_a_503_slowdown_halves_the_requests_in_flight_then_they_grow_back(tmp_path):
    """Eight connections are busy; one ranged GET gets 503 SlowDown with ``Retry-After: 1``.
    Counted by the server (requests in progress after each request starts or ends): 8 at
    once before the 503; then every connection pauses, so the count falls to 0 before the
    download is over (without the pause the other seven would go on); the first requests
    after that pause are at most half as many at once (+1: the additive increase earned by
    the requests that were in flight when the 503 came); and later the count grows back to
    8 (AIMD: the halving is for a while, not for ever). "At once" for the first requests after
    the pause is the peak reached before the first of them ends."""
    root = tmp_path / "mirror"
    root.mkdir()
    data = os.urandom(4 * 1024 * KiB)
    (root / ZIP).write_bytes(data)
    conns = 8
    opts = DownloadOptions(
        connections=conns, chunk_size=64 * KiB, timeouts=Timeouts(connect=5, read=10),
        retry=RetryPolicy(base=0.01, cap=0.1, window=30),
    )
    with TrackingServer(root, prefix=PREFIX, answer_delay=0.1) as srv:
        srv.add_fault(Status.slow_down(retry_after=1), ZIP, times=1, when=srv.mark_when(12))
        d = Downloader(opts)
        try:
            d.download(ZIP, [srv.url_for(ZIP)], tmp_path / "p" / "x.part",
                       tmp_path / "p" / "x.json", tmp_path / "out" / ZIP)
        finally:
            d.close()
        assert srv.wait_idle()
        events, mark = list(srv.events), srv.mark
    assert (tmp_path / "out" / ZIP).read_bytes() == data
    assert mark is not None, "the 503 was never served"
    assert max(n for kind, n in events[:mark] if kind == "start") == conns
    later = events[mark:]
    last_start = max(i for i, (kind, _) in enumerate(later) if kind == "start")
    paused = [i for i, (kind, n) in enumerate(later[:last_start]) if kind == "end" and n == 0]
    assert paused, f"the other connections never paused: {later}"
    after_pause = later[paused[0] + 1:]
    first_end = next(i for i, (kind, _) in enumerate(after_pause) if kind == "end")
    first_wave = [n for _, n in after_pause[:first_end]]  # all starts, before any ends
    assert 0 < max(first_wave) <= conns // 2 + 1, (first_wave, later)
    assert max(n for _, n in after_pause) == conns, f"never grew back: {after_pause}"


# --------------------------------------------------------------------------------------------
# Failover mid-transfer, ETags compared across hosts


def _failing_half(srv: FaultServer, size: int) -> None:
    """From the middle of the archive on, this host answers 500 to every ranged GET."""
    srv.add_fault(Status.internal_error(), ZIP, times=None,
                  when=range_starts_at_or_after(size // 2))


def test_failover_mid_transfer_resumes_on_the_next_mirror_with_the_same_etag(dataset, tmp_path):
    """The first mirror serves the first half of the zip, then fails every request: after
    ``$ISIC2020_RETRY_WINDOW`` s without progress the next mirror takes over and, as it
    serves the same object (same ETag), only the missing bytes travel from it."""
    size = dataset.path(ZIP).stat().st_size
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as a, \
            FaultServer(dataset.root, prefix=PREFIX) as b:
        assert a.etag_for(ZIP) == b.etag_for(ZIP)
        _failing_half(a, size)
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", a.url, "--mirror", b.url,
                    "--split", "train", "--format", "jpeg", "--connections", "2", "--json",
                    env=_env(dataset, ISIC2020_RETRY_WINDOW="2",
                             ISIC2020_CHUNK_SIZE=str(16 * KiB)))
        assert r.returncode == 0, r.stderr
        from_a, from_b = a.bytes_sent(ZIP), b.bytes_sent(ZIP)
        statuses_a = [q.status for q in a.requests(ZIP, "GET")]
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["url"] == b.url_for(ZIP)
    assert len(entry["failed_hosts"]) == 1 and entry["failed_hosts"][0].startswith(a.url)
    assert entry["status"] == "resumed"
    assert (data / "archives" / ZIP).read_bytes() == dataset.path(ZIP).read_bytes()
    assert 500 in statuses_a and from_a > 0
    assert from_b < size, f"the second mirror sent {from_b} of {size} bytes: no resume"
    assert from_a + from_b < size * 1.25
    assert r.json["verification"]["ok"] is True


def test_failover_to_a_mirror_with_another_etag_starts_over_never_splices(dataset, tmp_path):
    """Same failure, but the next mirror names the object with another ETag: nothing proves
    its bytes belong to the object the partial file came from, so it starts over and sends
    the whole file; the result is exact."""
    size = dataset.path(ZIP).stat().st_size
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as a, \
            FaultServer(dataset.root, prefix=PREFIX, etag="opaque") as b:
        assert a.etag_for(ZIP) != b.etag_for(ZIP)
        _failing_half(a, size)
        r = run_cli("fetch", "--data-dir", str(data), "--mirror", a.url, "--mirror", b.url,
                    "--split", "train", "--format", "jpeg", "--connections", "2", "--json",
                    env=_env(dataset, ISIC2020_RETRY_WINDOW="2",
                             ISIC2020_CHUNK_SIZE=str(16 * KiB)))
        assert r.returncode == 0, r.stderr
        from_a, from_b = a.bytes_sent(ZIP), b.bytes_sent(ZIP)
        ranges_b = sorted(int(q.header("Range").split("=")[1].split("-")[0])
                          for q in b.requests(ZIP, "GET") if q.header("Range"))
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["url"] == b.url_for(ZIP) and entry["status"] == "downloaded"
    assert from_a > 0
    assert from_b >= size, f"only {from_b} of {size} bytes from the second mirror: a splice"
    assert ranges_b[0] == 0
    assert (data / "archives" / ZIP).read_bytes() == dataset.path(ZIP).read_bytes()
    assert "starting over" in r.stderr


# --------------------------------------------------------------------------------------------
# SIGTERM


def _wait_for_progress(state: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the partial download's state file lists a finished chunk (or the process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fetch ended early: {proc.returncode} {proc.stderr.read()}")
        try:
            if json.loads(state.read_text()).get("done"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError("no chunk finished in time")


def test_sigterm_during_fetch_exits_130_keeps_the_partial_state_and_the_rerun_resumes(
    dataset, tmp_path
):
    """CI cancelling a job sends SIGTERM: exit 130, one line saying to run it again, the
    partial file and its state kept, nothing at the final path; the same command then
    finishes with ``status: resumed`` and fewer bytes than the file from the server."""
    size = dataset.path(ZIP).stat().st_size
    data = tmp_path / "d"
    state = data / ".isic2020" / "partial" / (ZIP + ".state.json")
    args = ("fetch", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
            "--connections", "2", "--json")
    env = _env(dataset, ISIC2020_CHUNK_SIZE=str(16 * KiB))
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        rule = srv.throttle(32 * KiB, ZIP)
        proc = subprocess.Popen(cli_cmd(*args, "--mirror", srv.url), env=env, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            _wait_for_progress(state, proc)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 130, err
        lines = [ln for ln in err.splitlines() if ln.startswith("isic2020:")]
        assert lines[-1].startswith("isic2020: interrupted") and "run the same command" in lines[
            -1]
        assert "Traceback" not in err
        assert not (data / "archives" / ZIP).exists()
        done = json.loads(state.read_text())["done"]
        kept = sum(b - a for a, b in done)
        assert 0 < kept < size
        assert (data / ".isic2020" / "partial" / (ZIP + ".part")).exists()

        srv.remove_fault(rule)
        assert srv.wait_idle(timeout=30)  # the killed run's responses have ended
        srv.reset_counters()
        r = run_cli(*args, "--mirror", srv.url, env=env)
        assert r.returncode == 0, r.stderr
        again = srv.bytes_sent(ZIP)
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["status"] == "resumed"
    assert again <= size - kept
    assert (data / "archives" / ZIP).read_bytes() == dataset.path(ZIP).read_bytes()

