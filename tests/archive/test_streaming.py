"""Unpacking a kept archive while it downloads (``isic2020.archive.streaming``), on real servers.

What a user depends on: the images are unpacked during the download (not after it), yet none
reaches the layout before the whole archive is verified; a failed verification or a changed
object leaves no image from the bad bytes anywhere; a killed run keeps what it unpacked and the
next run reuses it; and the result is always exactly the archive's images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.dataset import files_under, flip_byte
from support.processes import alive, children
from support.servers import FaultServer, IgnoreRange, ReplaceObject

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("stream"), n_train=N_TRAIN, n_test=4,
                         image_size=64)


def _args(data: Path, url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
            "--format", "jpeg", "--connections", "2", *extra]


def _env(manifest: Path, mode: str = "threads", **extra: str) -> dict[str, str]:
    """``mode``: who unpacks while the archive downloads, the fetch's own threads or its child
    processes (``stream_worker``), whatever the archive's size."""
    return cli_env(manifest, ISIC2020_CHUNK_SIZE=str(64 * 1024),
                   ISIC2020_STREAM_PROCESS_MIN="0" if mode == "processes" else "1024G", **extra)


@pytest.fixture(params=["threads", "processes"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def _unpackers(mode: str) -> int:
    """``while_downloading.processes`` of a run in ``mode`` (its 2 threads' children)."""
    return 2 if mode == "processes" else 0


class _Watcher(threading.Thread):
    """Looks at the data directory every few ms while a fetch runs: were images staged while
    the archive was still partial, and did any reach the layout before the archive landed?"""

    def __init__(self, data: Path) -> None:
        super().__init__(daemon=True)
        self.data = data
        self.staged_while_partial = 0
        self.in_layout_before_archive = 0
        self.done = threading.Event()

    def run(self) -> None:
        partial = self.data / ".isic2020" / "partial" / f"{TRAIN}.part"
        staged = self.data / ".isic2020" / "staging" / TRAIN / "images"
        layout = self.data / "jpeg" / "train"
        archive = self.data / "archives" / TRAIN
        while not self.done.is_set():
            if partial.exists():
                n = _count(staged)
                self.staged_while_partial = max(self.staged_while_partial, n)
            if not archive.exists():
                self.in_layout_before_archive = max(self.in_layout_before_archive,
                                                    _count(layout))
            time.sleep(0.005)


def _count(d: Path) -> int:
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(".jpg") and not n.startswith("."))
    except FileNotFoundError:
        return 0


def _unchanged_manifest(dataset, tmp_path: Path) -> Path:
    """The dataset's manifest without the archive's size and sha256 (like the real one today):
    only the server's ETag and the zip's own CRCs check it."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(
        dataclasses.replace(f, size=None, sha256=None) if f.name == TRAIN else f
        for f in man.files
    )
    path = tmp_path / "loose.toml"
    path.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    return path


def test_images_are_unpacked_during_the_download_but_land_only_after_it(dataset, tmp_path,
                                                                         mode):
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(100_000)
        watcher = _Watcher(data)
        watcher.start()
        r = run_cli(*_args(data, srv.url, "--json"), env=_env(dataset.manifest_path, mode))
        watcher.done.set()
        watcher.join()
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    ext = train["extraction"]
    stream = ext["while_downloading"]
    assert stream["members"] == N_TRAIN and stream["disabled"] is None
    assert stream["unpacked"] == N_TRAIN and stream["processes"] == _unpackers(mode)
    assert ext["from_staging"] == N_TRAIN and ext["written"] == 0
    # Overlap, observed on disk: images were staged while the archive was still partial...
    assert watcher.staged_while_partial > 0
    # ...and none reached the layout before the verified archive did.
    assert watcher.in_layout_before_archive == 0
    assert r.json["verification"]["ok"] is True
    assert not (data / ".isic2020" / "staging").exists() or not any(
        (data / ".isic2020" / "staging").iterdir()
    )


def test_streamed_images_equal_those_of_a_plain_extraction(dataset, tmp_path, mode):
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        a = run_cli(*_args(tmp_path / "a", srv.url), env=_env(dataset.manifest_path, mode))
        b = run_cli(*_args(tmp_path / "b", srv.url),
                    env=_env(dataset.manifest_path, ISIC2020_STREAM="0"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    streamed = files_under(tmp_path / "a" / "jpeg")
    assert streamed == files_under(tmp_path / "b" / "jpeg")
    assert len(streamed) == N_TRAIN
    modes = {(tmp_path / "a" / "jpeg" / p).stat().st_mode & 0o777 for p in streamed}
    assert all(not m & 0o002 for m in modes)


def test_an_archive_failing_verification_leaves_no_image_anywhere(dataset, tmp_path, mode):
    """Images are staged from the archive while it downloads; when the landed bytes then fail
    the manifest's sha256: exit 1, one error line naming the archive and sha256, and none of
    the staged images is left in the layout or the staging."""
    man = load_manifest(dataset.manifest_path)
    files = tuple(
        dataclasses.replace(f, sha256="0" * 64) if f.name == TRAIN else f for f in man.files
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    data = tmp_path / "d"
    watcher = _Watcher(data)
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(200_000)
        watcher.start()
        try:
            r = run_cli(*_args(data, srv.url), env=_env(bad, mode))
        finally:
            watcher.done.set()
            watcher.join()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert TRAIN in r.error_lines[0] and "sha256" in r.error_lines[0], r.stderr
    assert watcher.staged_while_partial > 0, "nothing was staged before the verification"
    assert _count(data / "jpeg" / "train") == 0
    staging = data / ".isic2020" / "staging"
    assert not staging.exists() or not any(staging.rglob("*.jpg"))


class _OldStaged(threading.Thread):
    """Copies images out of the staging folder while ``rule`` (the object's replacement) has
    not fired yet: bytes that can only have come from the old version of the archive. An image
    is staged in place (no temporary), so a copy counts only once it has the image's size
    (``sizes``): a shorter file is one still being written."""

    def __init__(self, data: Path, rule, sizes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.staged = data / ".isic2020" / "staging" / TRAIN / "images"
        self.rule = rule
        self.sizes = sizes
        self.copies: dict[str, bytes] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and not self.rule.done:
            try:
                names = [n for n in os.listdir(self.staged)
                         if n.endswith(".jpg") and not n.startswith(".")]
            except FileNotFoundError:
                names = []
            for n in names:
                if n in self.copies:
                    continue
                try:
                    content = (self.staged / n).read_bytes()
                except FileNotFoundError:
                    continue
                if self.rule.done:  # read after the swap: could be either version
                    return
                if len(content) == self.sizes.get(n):
                    self.copies[n] = content
            time.sleep(0.005)


def test_a_changed_object_discards_what_was_unpacked_from_the_old_one(dataset, tmp_path):
    # The new version: the same entries, the same sizes, other bytes (so that nothing but the
    # object's identity can tell an image unpacked from the old version).
    new_root = tmp_path / "new"
    new_root.mkdir()
    with zipfile.ZipFile(dataset.archive("train", "jpeg")) as old, zipfile.ZipFile(
        new_root / TRAIN, "w", zipfile.ZIP_DEFLATED
    ) as out:
        for info in old.infolist():
            data = bytearray(old.read(info))
            if info.filename.endswith(".jpg"):
                data[len(data) // 2] ^= 0x01
            out.writestr(info.filename, bytes(data))
    for f in dataset.root.iterdir():
        if f.name != TRAIN and f.is_file():
            (new_root / f.name).write_bytes(f.read_bytes())
    new_zip = (new_root / TRAIN).read_bytes()
    manifest = _unchanged_manifest(dataset, tmp_path)
    data = tmp_path / "d"
    served = tmp_path / "served"  # the fault rewrites the served file: not the shared dataset
    shutil.copytree(dataset.root, served)
    with FaultServer(served, prefix=PREFIX) as srv:
        srv.throttle(100_000)
        rule = srv.add_fault(ReplaceObject(content=new_zip, after_bytes=200_000), TRAIN)
        with zipfile.ZipFile(dataset.archive("train", "jpeg")) as old_zf:
            sizes = {i.filename.rsplit("/", 1)[-1]: i.file_size for i in old_zf.infolist()}
        old_staged = _OldStaged(data, rule, sizes)
        old_staged.start()
        try:
            r = run_cli(*_args(data, srv.url, "--json"), env=_env(manifest))
        finally:
            old_staged.done.set()
            old_staged.join()
    assert r.returncode == 0, r.stderr
    assert rule.done
    # images were staged from the old version before it changed...
    assert old_staged.copies, "nothing was staged from the old version: the test proves nothing"
    with zipfile.ZipFile(dataset.archive("train", "jpeg")) as old_zf:
        for n, content in old_staged.copies.items():
            assert content == old_zf.read(f"train/{n}"), n
    # ...and none of them survived: every image is the new version's
    for n in old_staged.copies:
        assert (data / "jpeg" / "train" / n).read_bytes() != old_staged.copies[n], n
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert (data / "archives" / TRAIN).read_bytes() == new_zip
    ref = tmp_path / "ref"
    with FaultServer(new_root, prefix=PREFIX) as srv2:
        rr = run_cli(*_args(ref, srv2.url), env=_env(manifest, ISIC2020_STREAM="0"))
    assert rr.returncode == 0, rr.stderr
    assert files_under(data / "jpeg") == files_under(ref / "jpeg")
    assert train["extraction"]["images"] == N_TRAIN


def _claims_bytes(state: Path) -> bool:
    """The partial's checkpoint exists and records finished bytes (what a resume keeps)."""
    try:
        doc = json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and any(b > a for a, b in doc.get("done") or [])


def test_a_kill_keeps_the_staged_images_and_the_next_run_reuses_them(dataset, tmp_path, mode):
    data = tmp_path / "d"
    env = _env(dataset.manifest_path, mode)
    args = cli_cmd(*_args(data, "URL", "--json"))
    staged = data / ".isic2020" / "staging" / TRAIN / "images"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(60_000)
        args[args.index("URL")] = srv.url
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        state = data / ".isic2020" / "partial" / (TRAIN + ".state.json")
        deadline = time.monotonic() + 60
        # Kill only once 20 images are staged AND the checkpoint claims bytes of the archive
        # (a resume needs both; on a busy machine the first checkpoint can come after them)
        # AND every unpacker is forked (each on its thread's first batch: a thread can wait
        # for its first while the other unpacks 20).
        while (_count(staged) < 20 or not _claims_bytes(state)
               or len(children(proc.pid)) < _unpackers(mode)) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the fetch ended before it could be killed"
        kids = children(proc.pid)  # the unpackers, maybe the CSVs' checks (forked too)
        assert len(kids) >= _unpackers(mode), kids
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # no unpacking process outlives the fetch (parent-death signal, end of its input)
        deadline = time.monotonic() + 10
        while any(map(alive, kids)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(alive, kids)), kids
        kept = _count(staged)
        assert kept >= 20
        assert _count(data / "jpeg" / "train") == 0
        srv.clear_faults()
        r = run_cli(*args[3:], env=env)
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["status"] == "resumed"
    stream = train["extraction"]["while_downloading"]
    assert stream["already_staged"] >= kept - 2  # a member being renamed at the kill may go
    assert stream["already_staged"] + stream["unpacked"] == N_TRAIN
    assert _count(data / "jpeg" / "train") == N_TRAIN
    assert r.json["verification"]["ok"] is True


def test_ctrl_c_while_unpacking_is_exit_130_in_one_line_and_the_next_run_completes(
        dataset, tmp_path, mode):
    """Ctrl-C reaches the whole process group, so the forked unpackers get it too: the fetch
    still ends with its one "interrupted" line and exit 130, no traceback (nor a child's), no
    child left, and the next run resumes and completes."""
    data = tmp_path / "d"
    env = _env(dataset.manifest_path, mode)
    staged = data / ".isic2020" / "staging" / TRAIN / "images"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(60_000)
        args = cli_cmd(*_args(data, srv.url))
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        # Every unpacker must be forked before Ctrl-C (each forks on its thread's first batch:
        # one thread can stage 20 members while the other still waits for its first).
        while (_count(staged) < 20 or len(children(proc.pid)) < _unpackers(mode)) \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the fetch ended before Ctrl-C"
        kids = children(proc.pid)
        assert len(kids) >= _unpackers(mode), kids
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while any(map(alive, kids)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(alive, kids)), kids
        srv.clear_faults()
        r = run_cli(*args[3:], env=env)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception" not in err, err
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1, err
    assert r.returncode == 0, r.stderr
    assert _count(data / "jpeg" / "train") == N_TRAIN


def test_a_server_ignoring_ranges_still_gives_every_image(dataset, tmp_path):
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.add_fault(IgnoreRange(), TRAIN, times=None)
        r = run_cli(*_args(data, srv.url, "--json"), env=_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["extraction"]["while_downloading"]["members"] == 0  # one plain stream
    assert train["extraction"]["written"] == N_TRAIN
    assert _count(data / "jpeg" / "train") == N_TRAIN


def test_a_server_without_etags_unpacks_after_the_download(dataset, tmp_path):
    """Without an ETag nothing proves the staged images came from the archive that landed, so
    streaming says why it stays off and the extraction after the download does the work."""
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.set_etag(TRAIN, "none")
        r = run_cli(*_args(data, srv.url, "--json"), env=_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    stream = train["extraction"]["while_downloading"]
    assert stream["members"] == 0 and "ETag" in stream["disabled"]
    assert train["extraction"]["written"] == N_TRAIN
    assert _count(data / "jpeg" / "train") == N_TRAIN
    assert not (data / ".isic2020" / "staging").exists() or not any(
        (data / ".isic2020" / "staging").rglob("*.jpg")
    )


def test_a_member_the_unpacking_cannot_write_stops_it_and_is_named(dataset, tmp_path, mode):
    """A member whose bytes do not match its CRC-32 (an archive damaged at the source, pinned
    as it is): the unpacking while downloading stops and says why, in its threads as in its
    processes; the extraction after the download names the member, exit 1, no traceback, and
    the damaged member never reaches the layout."""
    root = tmp_path / "mirror"
    shutil.copytree(dataset.root, root)
    zpath = root / TRAIN
    victim = sorted(zipfile.ZipFile(zpath).namelist())[N_TRAIN // 2]
    flip_byte(zpath, victim)
    man = load_manifest(dataset.manifest_path)
    files = tuple(
        dataclasses.replace(f, size=zpath.stat().st_size,
                            sha256=hashlib.sha256(zpath.read_bytes()).hexdigest())
        if f.name == TRAIN else f for f in man.files
    )
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    data = tmp_path / "d"
    with FaultServer(root, prefix=PREFIX) as srv:
        srv.throttle(400_000)
        r = run_cli(*_args(data, srv.url, "-v"), env=_env(pinned, mode))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.error_lines) == 1, r.stderr
    assert victim in r.error_lines[0] and "damaged" in r.error_lines[0], r.stderr
    stopped = [ln for ln in r.stderr.splitlines() if "stopped unpacking while downloading" in ln]
    assert len(stopped) == 1 and victim in stopped[0], r.stderr
    # every other member is checked on its own: those of a verified archive may land, never
    # the damaged one
    assert not (data / "jpeg" / "train" / Path(victim).name).exists()
