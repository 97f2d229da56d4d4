"""``fetch --direct`` into an empty images folder stages its members and moves them in at once.

What a user depends on: while the members download, no image stands at a final path before
every one is checked (they are written in place under ``DATA/.isic2020/staging``); a run killed
with SIGKILL leaves the staged members there, and the same command then fetches only what is
missing, moves everything into ``jpeg/train`` and leaves no staging behind; a folder that
already holds images is filled at the final paths as before, nothing staged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

from support.cli import cli_cmd, cli_env, run_cli
from support.fixtures import served_dataset

TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 80

dataset, server = served_dataset("direct-staging", n_train=N_TRAIN, n_test=2, image_size=64)


def _args(data: Path, url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
            "--format", "jpeg", "--direct", "--connections", "2", "--json", *extra]


def _images(d: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(d) if n.endswith(".jpg") and not n.startswith("."))
    except FileNotFoundError:
        return []


def _members(dataset) -> dict[str, bytes]:
    """Image file name -> its bytes in the archive (of the split's images only)."""
    with zipfile.ZipFile(dataset.archive("train", "jpeg")) as zf:
        return {f"{n}.jpg": zf.read(f"train/{n}.jpg") for n in dataset.train_names}


def test_killed_mid_way_the_staged_members_are_kept_and_moved_in_together(dataset, server,
                                                                         tmp_path: Path):
    data = tmp_path / "d"
    final = data / "jpeg" / "train"
    staged = data / ".isic2020" / "staging" / TRAIN / "images"
    server.throttle(60_000, TRAIN)
    proc = subprocess.Popen(cli_cmd(*_args(data, server.url)), env=cli_env(dataset.manifest_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_images(staged)) < 10 and proc.poll() is None and time.monotonic() < deadline:
        assert _images(final) == []  # nothing at a final path while members are staged
        time.sleep(0.01)
    assert proc.poll() is None, "the fetch ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kept = _images(staged)
    assert len(kept) >= 10 and _images(final) == []
    server.clear_faults()

    r = run_cli(*_args(data, server.url), env=cli_env(dataset.manifest_path), timeout=180)

    assert r.returncode == 0, r.stderr[-2000:]
    members = _members(dataset)
    assert _images(final) == sorted(members)
    assert all((final / n).read_bytes() == b for n, b in members.items())
    (entry,) = (f for f in r.json["files"] if f["name"] == TRAIN)
    ext = entry["extraction"]
    # the staged members of the killed run were not fetched again (one may have been cut
    # short by the kill: fetched anew)
    assert ext["skipped"] >= len(kept) - 1 and ext["written"] + ext["skipped"] == N_TRAIN
    assert r.json["verification"]["ok"] is True
    assert not (data / ".isic2020" / "staging" / TRAIN).exists()


def test_a_folder_that_holds_images_is_filled_in_place_nothing_staged(dataset, server,
                                                                      tmp_path: Path):
    data = tmp_path / "d"
    final = data / "jpeg" / "train"
    members = _members(dataset)
    final.mkdir(parents=True)
    first = sorted(members)[:5]
    for n in first:
        (final / n).write_bytes(members[n])
    staging = data / ".isic2020" / "staging" / TRAIN
    server.throttle(200_000, TRAIN)
    proc = subprocess.Popen(cli_cmd(*_args(data, server.url)), env=cli_env(dataset.manifest_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    seen_staging = False
    while proc.poll() is None:
        seen_staging = seen_staging or staging.exists()
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert not seen_staging
    assert _images(final) == sorted(members)
    assert all((final / n).read_bytes() == b for n, b in members.items())
