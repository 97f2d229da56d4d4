"""Random faults and kills against the real CLI (hypothesis; issue 11, "What must show").

The promise: whatever a mirror does wrong (resets, short bodies, wrong ``Content-Range``,
500/503, ranges ignored, stalls, trickles, flipped bytes, captive HTML pages, gzip bodies,
redirect loops and redirects to ``file://``, weak or unquoted ETags, a bad ``Content-Length``,
no ``?partNumber=``, the object replaced) and wherever the command is killed
(SIGKILL, or SIGTERM/SIGINT: then exit 130 and no traceback) after some bytes arrived, every
run ends with the exact bytes at every final path or with a clean exit 1/3 and one error
line, and nothing at a final path is ever anything but exact. A final run against the
healthy server then completes (exit 0, every landed file's sha256 equal to the source's);
only when the object really was replaced may it refuse instead, cleanly.

``tests/transfer/test_range_properties.py`` checks the download engine alone (range bookkeeping,
fault sequences on one file, in-process); this file adds what only the whole command shows:
the metadata CSVs, the archive, its extraction while it downloads (or ``--direct``), the
state kept across a kill, and the CLI's exit codes and error lines.

To add a fault: one line in :data:`FAULTS` (a name and a strategy that builds the ``Fault``;
the ``when`` predicate, if the fault must only hit some requests, in :data:`WHEN`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.cli import CliResult, cli_cmd, cli_env, run_cli
from support.servers import (
    BadContentRange,
    BadLength,
    CaptivePortal,
    Fault,
    FaultServer,
    FlipByte,
    GzipBody,
    IgnoreRange,
    NoPartNumber,
    Predicate,
    Redirect,
    ReplaceObject,
    Reset,
    RewriteEtag,
    ShortBody,
    Stall,
    Status,
    Trickle,
    ranged,
)

from isic2020.store.fsutil import is_temp_name
from isic2020.synthetic import build_dataset

pytestmark = pytest.mark.slow

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
GT2 = "ISIC_2020_Training_GroundTruth_v2.csv"
KiB = 1024
RUN_TIMEOUT = 90  # per CLI run: the total budget is bounded by runs x this
#: Fast giving up (a fault that persists ends a run in seconds) and a read timeout small
#: enough that a stall costs a second.
ENV = {"ISIC2020_RETRY_WINDOW": "3", "ISIC2020_READ_TIMEOUT": "1",
       # and a lowest-speed window short enough that a trickle costs two seconds
       "ISIC2020_LOWEST_SPEED": "1K", "ISIC2020_SPEED_TIME": "2"}

# --------------------------------------------------------------------------------------------
# The faults: one line each (and, if they must only hit some requests, a predicate in WHEN).

FAULTS: dict[str, st.SearchStrategy[Fault]] = {
    "reset": st.builds(Reset, after=st.integers(0, 64 * KiB), seed=st.integers(0, 9)),
    "reset_before_headers": st.builds(Reset, before_headers=st.just(True)),
    "short_body": st.builds(ShortBody, sent=st.one_of(st.none(), st.integers(0, 32 * KiB))),
    "bad_content_range": st.builds(BadContentRange, shift=st.sampled_from([-5, -1, 1, 7])),
    "internal_error": st.builds(Status.internal_error),
    "slow_down": st.builds(Status.slow_down, retry_after=st.just(0)),
    "ignore_range": st.builds(IgnoreRange),
    "stall": st.builds(Stall, seconds=st.just(30.0), after=st.integers(0, 16 * KiB)),
    "bad_length": st.builds(BadLength),
    "flip_byte": st.builds(FlipByte, mask=st.sampled_from([0x01, 0x80, 0xFF])),
    "captive_portal": st.builds(CaptivePortal, etag=st.booleans()),
    "gzip_body": st.builds(GzipBody, etag=st.sampled_from(["weak", "keep", "none"])),
    "trickle": st.builds(Trickle, nbytes=st.just(1), every=st.just(0.5),
                         after=st.integers(0, 16 * KiB)),
    "redirect_loop": st.builds(Redirect),
    "redirect_to_file": st.builds(Redirect, to=st.just("file:///etc/passwd")),
    "weak_or_unquoted_etag": st.builds(RewriteEtag, style=st.sampled_from(["weak", "unquoted"])),
    "no_part_number": st.builds(NoPartNumber),
}
#: Requests a fault may hit (default: any it applies to).
WHEN: dict[str, Predicate] = {"bad_content_range": ranged, "ignore_range": ranged}
#: Files the faults may be pinned to (None: any request of the run).
TARGETS = [None, TRAIN, GT2]


@dataclass
class Planned:
    """One fault of an example: which, pinned to which file, how many firings."""

    name: str
    fault: Fault
    path: str | None
    times: int


@st.composite
def fault_plans(draw: st.DrawFn) -> list[Planned]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(sorted(FAULTS)))
        out.append(Planned(name, draw(FAULTS[name]), draw(st.sampled_from(TARGETS)),
                           draw(st.integers(1, 3))))
    return out


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    """1,500 small training images: a ~1.5 MB zip in many chunks, whose ~100 KB central
    directory starts before the tail the streaming extractor reads first (so a resumed run
    asks for the directory region, as with the real archive), and the CSVs."""
    return build_dataset(tmp_path_factory.mktemp("random"), n_train=1500, n_test=10,
                         image_size=32)


@pytest.fixture(scope="module")
def expected(dataset) -> dict[str, str]:
    """sha256 of everything a ``fetch --split train`` may put at a final path."""
    out: dict[str, str] = {}
    for f in dataset.manifest.metadata("train"):
        out[f"metadata/{f.name}"] = f.sha256 or ""
    out[f"archives/{TRAIN}"] = hashlib.sha256(dataset.path(TRAIN).read_bytes()).hexdigest()
    with zipfile.ZipFile(dataset.path(TRAIN)) as zf:
        for info in zf.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if base.startswith("ISIC_") and base.endswith(".jpg"):
                out[f"jpeg/train/{base}"] = hashlib.sha256(zf.read(info)).hexdigest()
    return out


#: Where served bytes land (the root's CITATION.txt and LICENSE-DATA.txt are the tool's own).
FINAL_DIRS = ("archives", "metadata", "jpeg")


def landed(data: Path) -> dict[str, str]:
    """sha256 of every file at a final path: in the data folders, not a temporary."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(data):
        rel_dir = os.path.relpath(dirpath, data)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d in FINAL_DIRS]
            continue
        for n in filenames:
            if is_temp_name(n) or n.startswith("."):
                continue
            p = Path(dirpath, n)
            rel = os.path.normpath(os.path.join(rel_dir, n))
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_nothing_wrong_landed(data: Path, expected: dict[str, str]) -> None:
    got = landed(data)
    wrong = {k: v for k, v in got.items() if expected.get(k) != v}
    assert not wrong, f"at final paths, not exact: {sorted(wrong)[:10]}"


def assert_clean(r: CliResult) -> None:
    """Exit 0, or exit 1/3 with exactly one error line and no traceback."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-3000:]
    if r.returncode == 0:
        return
    assert r.returncode in (1, 3), (r.returncode, r.stderr[-3000:])
    assert len(r.error_lines) == 1, r.stderr[-3000:]


def run_killed(
    args: list[str], env: dict[str, str], srv: FaultServer, after: int, sig: signal.Signals
) -> CliResult | None:
    """Run the CLI; send ``sig`` once the server has sent ``after`` body bytes. Returns the
    result (None for SIGKILL: nothing to check but the files it left)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cli_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while proc.poll() is None:
                if srv.bytes_sent(settle=0) >= after:
                    proc.send_signal(sig)
                    break
                assert time.monotonic() < deadline, "the run neither ended nor got its bytes"
                time.sleep(0.005)  # polling the server's counter, not a delay before a signal
            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        result = CliResult(proc.returncode, "", err.read().decode())
    return None if sig == signal.SIGKILL else result


# --------------------------------------------------------------------------------------------
# the property


@settings(
    max_examples=20,
    deadline=None,
    # No shrinking: each example is a few CLI runs, and a failing one is printed as drawn.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=fault_plans(),
    mode=st.sampled_from(["stream", "direct"]),
    connections=st.sampled_from([1, 4]),
    replace_after=st.one_of(st.none(), st.integers(1, 6)),
    kill_at=st.one_of(st.none(), st.floats(0.05, 0.9)),
    sig=st.sampled_from([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT]),
)
def test_random_faults_and_kills_end_exact_or_clean(
    dataset, expected, plan, mode, connections, replace_after, kill_at, sig
):
    zip_size = dataset.path(TRAIN).stat().st_size
    with tempfile.TemporaryDirectory(prefix="isic2020-random-") as tmp:
        served, data = Path(tmp, "served"), Path(tmp, "data")
        served.mkdir()
        for f in dataset.manifest.files:
            shutil.copyfile(dataset.path(f.name), served / f.name)
        with FaultServer(served, prefix=PREFIX) as srv:
            for p in plan:
                srv.add_fault(p.fault, p.path, times=p.times, when=WHEN.get(p.name))
            replaced = None
            if replace_after is not None:
                other = bytearray(dataset.path(TRAIN).read_bytes())
                other[len(other) // 3] ^= 0xFF  # same size, one byte off: a new version
                replaced = srv.add_fault(
                    ReplaceObject(bytes(other), after_requests=replace_after), TRAIN,
                )
            args = ["fetch", "--data-dir", str(data), "--mirror", srv.url, "--split", "train",
                    "--connections", str(connections)]
            if mode == "direct":
                args.append("--direct")
            env = cli_env(dataset.manifest_path, **ENV)

            if kill_at is not None:
                k = run_killed(args, env, srv, int(kill_at * zip_size), sig)
                if k is not None and k.returncode != 130:  # it ended before the signal
                    assert_clean(k)
                elif k is not None:
                    assert "Traceback" not in k.stderr, k.stderr[-3000:]
            else:
                r = run_cli(*args, env=env, timeout=RUN_TIMEOUT)
                assert_clean(r)
            assert_nothing_wrong_landed(data, expected)

            # The final run: the faults are gone (the replacement, if it happened, is not).
            srv.clear_faults()
            final = run_cli(*args, env=env, timeout=RUN_TIMEOUT)
            assert_clean(final)
            assert_nothing_wrong_landed(data, expected)
            if replaced is None or not replaced.fired:
                assert final.returncode == 0, final.stderr[-3000:]
                got = landed(data)
                want = {k for k in expected if not (mode == "direct" and k.startswith("arch"))}
                assert set(got) == want
