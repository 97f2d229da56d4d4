"""What a person or a CI log sees while a fetch runs: progress off a terminal, ``--verbose``,
``--log-file``, and log lines that never land inside a progress bar.

What a user depends on: a CI job's log shows the fetch moving (a plain line at most every
``ISIC2020_PROGRESS_INTERVAL`` seconds, with bytes, percent and the images unpacked) instead of
minutes of silence; ``--log-file`` keeps the per-file decisions with timestamps across runs; on
a terminal, a message printed during a ``--direct`` fetch is a line of its own, not glued to a
bar. Everything runs the real CLI against a real FaultServer slowed with its Throttle fault.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.fixtures import served_dataset
from support.servers import FaultServer, Stall
from support.terminal import run_on_pty

PREFIX = "/challenges/2020/"
ZIP = "ISIC_2020_Training_JPEG.zip"
SIZE = r"\d+(\.\d)? [KMGT]?B"
PLAIN = re.compile(
    rf"^isic2020: train jpeg: {SIZE} of {SIZE} \(\d+%\)"
    rf"(, {SIZE}/s(, ETA (\d+ s|\d+ min|\d+ h \d+ min|unknown \(stalled\)))?)?"
    r", [\d,]+ images? unpacked$"
)


dataset, mirror = served_dataset("syn", n_train=120, n_test=4, image_size=96)


@pytest.fixture
def slow(mirror: FaultServer) -> FaultServer:
    """The mirror, every GET body at 40 KB/s per connection: a fetch of a few seconds."""
    mirror.throttle(40_000)
    return mirror


def _fetch(srv, data, *extra: str) -> tuple[str, ...]:
    """The arguments of a fetch of the training JPEGs from ``srv`` into ``data``."""
    return ("fetch", "--mirror", srv.url, "--split", "train", "--format", "jpeg",
            "--data-dir", str(data), *extra)


def test_off_a_terminal_a_plain_progress_line_every_interval(dataset, slow, tmp_path):
    """stderr a pipe, ``ISIC2020_PROGRESS_INTERVAL=0.2``: the slowed fetch prints plain lines
    (no carriage return, no bar), each ``train jpeg: X of Y (P%)[, rate[, ETA]], N images
    unpacked``, at least two of them, their byte counts never going back."""
    env = cli_env(dataset.manifest_path, ISIC2020_PROGRESS_INTERVAL="0.2")
    r = run_cli(*_fetch(slow, tmp_path / "d"), env=env)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("isic2020: train jpeg:")]
    assert len(lines) >= 2, r.stderr
    for ln in lines:
        assert PLAIN.match(ln), ln
    done = [float(re.search(r": (\d+(?:\.\d)?) ([KMG]?)B of", ln).group(1))
            * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[re.search(r" ([KMG]?)B of", ln).group(1)]
            for ln in lines]
    assert done == sorted(done), lines



def test_a_stalled_transfer_shows_its_rate_falling_to_zero(dataset, tmp_path):
    """The archive's only connection gets a few KB, then nothing for 7 s (longer than the
    5 s the rate looks back): the plain lines go on during the stall, and show the rate at
    0 with the ETA unknown, instead of a frozen last good rate. The fetch then completes."""
    env = cli_env(dataset.manifest_path, ISIC2020_PROGRESS_INTERVAL="0.2",
                  ISIC2020_READ_TIMEOUT="30", ISIC2020_RETRY_WINDOW="60")
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.add_fault(Stall(seconds=7, after=8192), ZIP, times=1)
        r = run_cli(*_fetch(srv, tmp_path / "d", "--connections", "1"), env=env)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("isic2020: train jpeg:")]
    assert all(PLAIN.match(ln) for ln in lines), lines
    assert any(", 0 B/s, ETA unknown (stalled)," in ln for ln in lines), r.stderr


def test_a_malformed_progress_interval_is_a_usage_error(dataset, slow, tmp_path):
    env = cli_env(dataset.manifest_path, ISIC2020_PROGRESS_INTERVAL="often")
    r = run_cli(*_fetch(slow, tmp_path / "d"), env=env)
    assert r.returncode == 2, r.stderr
    assert "$ISIC2020_PROGRESS_INTERVAL" in r.stderr and "Traceback" not in r.stderr


def test_log_file_gets_the_verbose_lines_with_timestamps_appended(dataset, slow, tmp_path):
    """``--log-file`` without ``--verbose``: stderr shows no per-file decision, the file has
    them (the host chosen for each file) with a UTC timestamp each; a second run with
    ``--verbose`` shows them on stderr too, and appends to the file."""
    log = tmp_path / "fetch.log"
    data = tmp_path / "d"
    env = cli_env(dataset.manifest_path)
    r = run_cli(*_fetch(slow, data, "--log-file", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    assert f"from {slow.url}" not in r.stderr, r.stderr  # not verbose on stderr
    first = log.read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert first and all(re.match(stamp, ln) for ln in first), first
    chosen = [ln for ln in first if f"{ZIP}: from {slow.url}{ZIP}" in ln]
    assert chosen and "DEBUG" in chosen[0], first

    # --verbose shows the same decisions on stderr; the file keeps the first run's lines.
    r = run_cli(*_fetch(slow, tmp_path / "d2", "--verbose", "--log-file", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    assert f"isic2020: {ZIP}: from {slow.url}{ZIP}" in r.stderr, r.stderr
    second = log.read_text().splitlines()
    assert second[:len(first)] == first and len(second) > len(first)


def test_log_file_says_where_a_download_resumed(dataset, tmp_path):
    """A partial archive left by a killed run: the next run's log file says the byte it
    resumed at (the first byte missing), counted from the state on disk."""
    data = tmp_path / "d"
    log = tmp_path / "fetch.log"
    env = cli_env(dataset.manifest_path)
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(20_000, ZIP)
        proc = subprocess.Popen(
            cli_cmd(*_fetch(srv, data, "--connections", "1", "--quiet")), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            state = data / ".isic2020" / "partial"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _claims_bytes(state):
                time.sleep(0.05)
            assert _claims_bytes(state), "no checkpoint of the archive appeared"
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        srv.clear_faults()
        r = run_cli(*_fetch(srv, data, "--log-file", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    text = log.read_text()
    m = re.search(rf"{re.escape(ZIP)}\.part: resumed at byte (\d+) \((\d+) of (\d+) bytes", text)
    assert m, text
    assert int(m.group(2)) > 0 and int(m.group(3)) == (dataset.root / ZIP).stat().st_size


def _claims_bytes(state_dir) -> bool:
    """A state file of the archive's partial download that claims some bytes."""
    import json

    for p in state_dir.glob("*.state.json") if state_dir.exists() else []:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if ZIP in p.name and any(b > a for a, b in doc.get("done", [])):
            return True
    return False


def test_a_log_file_that_cannot_be_opened_is_one_usage_line(dataset, slow, tmp_path):
    env = cli_env(dataset.manifest_path)
    bad = tmp_path / "missing" / "fetch.log"
    r = run_cli(*_fetch(slow, tmp_path / "d", "--log-file", str(bad)), env=env)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("isic2020: error")]
    assert len(errors) == 1 and "log file" in errors[0], r.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was written


def _run_on_pty(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    return run_on_pty(cmd, env, columns=100, timeout=180)


@pytest.mark.parametrize("verbose", [(), ("--verbose",)], ids=["plain", "verbose"])
def test_on_a_terminal_log_lines_never_land_inside_a_bar_under_direct(
    dataset, slow, tmp_path, verbose
):
    """``--direct`` on a terminal: bars are drawn (an overall one with the images unpacked),
    and every message (``isic2020: ... fetching N members``, with ``--verbose`` the hosts
    chosen too) starts its own screen line and carries no piece of a bar."""
    env = cli_env(dataset.manifest_path)
    code, tty = _run_on_pty(cli_cmd(*_fetch(slow, tmp_path / "d", "--direct", *verbose)), env)
    assert code == 0, tty
    assert "%|" in tty and "images unpacked" in tty, tty
    messages = []
    for line in re.split(r"\r\n|\n", tty):
        screen = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\r", line)  # a cursor move starts a line
        for segment in screen.split("\r"):
            if "isic2020:" in segment:
                messages.append(segment)
                assert segment.startswith("isic2020:"), repr(segment)
                assert "%|" not in segment and "█" not in segment, repr(segment)
    assert any("fetching" in m and "members" in m for m in messages), tty
    if verbose:
        assert any(f": from {slow.url}" in m for m in messages), tty
