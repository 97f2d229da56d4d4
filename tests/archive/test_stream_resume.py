"""Resuming a fetch whose archive was being unpacked while it downloaded (issue 11 E1).

What a user depends on: after Ctrl-C or SIGTERM the same command resumes, keeps unpacking
while it downloads, and prints no thread traceback; and whenever the unpacking side stops,
``--json`` says why in ``while_downloading.disabled`` instead of ``null``.

The race: a resumed transfer already has the archive's tail, so the streaming planner, started
by ``observer.begin()``, can ask for the central directory (``prioritize``) at once, before the
transfer has planned its queue. The archive here has a directory larger than the tail the
engine fetches first (~1,200 members), so every resumed run makes that request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.servers import FaultServer

from isic2020.archive.remote import TAIL_BYTES
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 1200
RESUMES = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("resume"), n_train=N_TRAIN, n_test=2,
                         image_size=16)


def _count(d: Path) -> int:
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(".jpg") and not n.startswith("."))
    except FileNotFoundError:
        return 0


def _interrupt_once_more_is_staged(
    args: list[str], env: dict[str, str], staged: Path
) -> tuple[int, str]:
    """Run a fetch until it has staged more images than before, then SIGTERM it: its exit
    code and stderr. A run whose unpacking silently stopped stages nothing and ends on its
    own (exit 0): that is returned as it is, for the caller to judge."""
    before = _count(staged)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while _count(staged) <= before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_resumed_runs_keep_unpacking_while_downloading_without_thread_errors(
    dataset, tmp_path
):
    import zipfile

    with zipfile.ZipFile(dataset.root / TRAIN) as zf:
        assert (dataset.root / TRAIN).stat().st_size - zf.start_dir > TAIL_BYTES, (
            "the directory must not fit in the tail, or no resumed run asks for it"
        )
    data = tmp_path / "d"
    env = cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(64 * 1024))
    staged = data / ".isic2020" / "staging" / TRAIN / "images"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        args = cli_cmd("fetch", "--data-dir", str(data), "--mirror", srv.url, "--split",
                       "train", "--format", "jpeg", "--connections", "2", "--json")
        srv.throttle(150_000)
        runs = [_interrupt_once_more_is_staged(args, env, staged) for _ in range(RESUMES)]
        srv.clear_faults()
        r = run_cli(*args[3:], env=env)
    for _, err in runs:
        assert "Exception in thread" not in err, err
        assert "Traceback" not in err, err
    # Each resumed run staged more images while downloading (else it would not have been
    # interrupted but ended on its own, having unpacked after the download).
    assert [code for code, _ in runs] == [130] * RESUMES
    assert "Exception in thread" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["status"] == "resumed"
    stream = train["extraction"]["while_downloading"]
    assert stream["disabled"] is None
    assert stream["members"] == N_TRAIN
    assert stream["already_staged"] > 0
    assert stream["already_staged"] + stream["unpacked"] == N_TRAIN
    assert train["extraction"]["from_staging"] == N_TRAIN
    assert _count(data / "jpeg" / "train") == N_TRAIN
