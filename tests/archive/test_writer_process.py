"""Unpacking while downloading in processes of their own (``archive/writer_process.py``).

What a user depends on: the images staged by the writer processes are the zip's bytes, checked
(a damaged member is named and leaves nothing); threads (``ISIC2020_STREAM_PROCESSES=0``) and
processes give the same layout; a writer that dies only moves the work to the extraction after
the download (the fetch still ends complete, exit 0); a fetch killed with SIGKILL leaves no
writer process behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.dataset import files_under
from support.servers import FaultServer

from isic2020.archive.rules import Member
from isic2020.archive.writer_process import WriterDied, WriterProcess
from isic2020.archive.zipformat import read_directory
from isic2020.errors import VerificationError
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("wproc"), n_train=N_TRAIN, n_test=4,
                         image_size=64)


def _args(data: Path, url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
            "--format", "jpeg", "--connections", "2", "--json", *extra]


def _env(dataset, **extra: str) -> dict[str, str]:
    return cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(64 * 1024), **extra)


def _train(doc: dict) -> dict:
    (train,) = [f for f in doc["files"] if f["name"] == TRAIN]
    return train


def _writers_of(data: Path) -> list[int]:
    """Pids of writer processes whose command line names a folder under ``data``."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"writer_process" in a for a in argv) and any(str(data).encode() in a
                                                              for a in argv):
            pids.append(int(pid))
    return pids


def _zip(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, list[Member]]:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    fd = os.open(path, os.O_RDONLY)
    try:
        _, entries = read_directory(lambda at, n: os.pread(fd, n, at), path.stat().st_size)
    finally:
        os.close(fd)
    return path, [Member(e, e.name.rsplit("/", 1)[-1]) for e in entries]


def _open(path: Path, flags: int) -> int:
    if flags & os.O_DIRECTORY:
        path.mkdir(exist_ok=True)
    return os.open(path, flags)


def test_a_writer_process_stages_the_members_checked_and_names_a_damaged_one(tmp_path):
    bodies = {f"train/ISIC_{i:07d}.jpg": os.urandom(3000 + i) * 2 for i in range(5)}
    path, members = _zip(tmp_path, bodies)
    out = tmp_path / "images"
    afd = _open(path, os.O_RDONLY)
    dfd = _open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = WriterProcess(afd, dfd, str(out), 0o644, "a.zip")
        try:
            assert w.write(members[:4]) == 4
            bad = members[4]
            damaged = Member(dataclasses.replace(bad.entry, crc=bad.entry.crc ^ 1), bad.final)
            with pytest.raises(VerificationError) as err:
                w.write([damaged])
        finally:
            w.close()
    finally:
        os.close(afd)
        os.close(dfd)
    for m in members[:4]:
        assert (out / m.final).read_bytes() == bodies[m.entry.name]
    assert bad.final in err.value.message and "CRC-32" in err.value.message
    assert not (out / bad.final).exists()  # nothing left of the damaged member
    assert sorted(os.listdir(out)) == sorted(m.final for m in members[:4])


def test_a_writer_that_died_is_reported_not_waited_for(tmp_path):
    path, members = _zip(tmp_path, {"train/ISIC_0000001.jpg": b"x" * 5000})
    out = tmp_path / "images"
    afd = _open(path, os.O_RDONLY)
    dfd = _open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        w = WriterProcess(afd, dfd, str(out), 0o644, "a.zip")
        w.proc.kill()
        w.proc.wait()
        with pytest.raises(WriterDied, match="signal 9"):
            w.write(members)
        w.close()
    finally:
        os.close(afd)
        os.close(dfd)


def test_processes_and_threads_stage_the_same_images(dataset, tmp_path):
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(200_000)
        a = run_cli(*_args(tmp_path / "a", srv.url), env=_env(dataset))
        b = run_cli(*_args(tmp_path / "b", srv.url),
                    env=_env(dataset, ISIC2020_STREAM_PROCESSES="0"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    for r in (a, b):
        stream = _train(r.json)["extraction"]["while_downloading"]
        assert stream["disabled"] is None and stream["unpacked"] == N_TRAIN
    got = files_under(tmp_path / "a" / "jpeg")
    assert len(got) == N_TRAIN and got == files_under(tmp_path / "b" / "jpeg")


def test_a_writer_killed_mid_download_moves_the_work_after_it_and_the_fetch_completes(
    dataset, tmp_path
):
    data = tmp_path / "d"
    args = cli_cmd(*_args(data, "URL"))
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(60_000)
        args[args.index("URL")] = srv.url
        proc = subprocess.Popen(args, env=_env(dataset), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            staged = data / ".isic2020" / "staging" / TRAIN / "images"
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not (
                staged.is_dir() and len(os.listdir(staged)) >= 5 and _writers_of(data)
            ):
                time.sleep(0.01)
            victims = _writers_of(data)
            assert victims, "no writer process was seen while the archive downloaded"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    stream = _train(json.loads(out))["extraction"]["while_downloading"]
    assert "unpacking process stopped" in (stream["disabled"] or ""), stream
    assert len(files_under(data / "jpeg")) == N_TRAIN


def test_a_fetch_killed_with_sigkill_leaves_no_writer_process(dataset, tmp_path):
    data = tmp_path / "d"
    args = cli_cmd(*_args(data, "URL"))
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(60_000)
        args[args.index("URL")] = srv.url
        proc = subprocess.Popen(args, env=_env(dataset), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not _writers_of(data):
                time.sleep(0.01)
            assert _writers_of(data), "no writer process was seen"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while _writers_of(data) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = _writers_of(data)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert left == [], f"writer processes outlived the fetch: {left}"
