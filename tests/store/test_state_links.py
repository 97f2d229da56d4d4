"""Symbolic links planted in the data directory never make isic2020 write or delete outside it.

The threat (issue 11 B): whoever can write into a shared ``DATA/.isic2020`` (a group-writable
lab folder) plants links there. The rule these tests pin down:

* inside the state folder ``DATA/.isic2020`` (and in its place) a link is refused: the run
  stops before it writes anything, exit 3, one line naming the link;
* ``DATA`` itself and the layout folders (``jpeg/train``...) may be links the user made: they
  are followed; a file at a final or temporary name is replaced by a rename or made anew,
  never written through a link found there.

Every attack runs against real symlinks on the real filesystem, and a decoy folder outside
DATA (the link's target) must end byte-identical: same names, same bytes, same modes.
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
from support.fixtures import served_dataset

TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 60


dataset, server = served_dataset("links", n_train=N_TRAIN, n_test=2, image_size=64)


def _args(data: Path, url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
            "--format", "jpeg", "--connections", "2", *extra]


def _env(dataset, **extra: str) -> dict[str, str]:
    return cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(64 * 1024), **extra)


def _decoy(root: Path) -> Path:
    """A folder outside DATA with files worth keeping (one named like an image, like a
    partial download, like a staging folder)."""
    root.mkdir(parents=True)
    (root / "precious.txt").write_bytes(b"do not touch\n")
    (root / "ISIC_0000000.jpg").write_bytes(b"not an image\n")
    (root / f"{TRAIN}.part").write_bytes(b"someone else's file\n")
    (root / TRAIN).mkdir()
    (root / TRAIN / "object.json").write_bytes(b'{"etag": "other"}')
    (root / TRAIN / "notes.txt").write_bytes(b"keep\n")
    return root


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every name below ``root`` (not following links) -> (content of files, mode)."""
    out: dict[str, tuple[bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(root))] = (data, st.st_mode)
    return out


def _count(d: Path) -> int:
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(".jpg") and not n.startswith("."))
    except FileNotFoundError:
        return 0


def _kill_midway(args: list[str], env: dict[str, str], until) -> None:
    """Start a throttled fetch, SIGKILL it once ``until()`` holds (state left on disk)."""
    proc = subprocess.Popen(cli_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not until() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the fetch ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _has_progress(state: Path) -> bool:
    """The partial download's record names finished bytes (so a resume would reuse them)."""
    try:
        return bool(json.loads(state.read_bytes()).get("done"))
    except (OSError, ValueError):
        return False


def _assert_refused(r, link: Path) -> None:
    assert r.returncode == 3, r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert str(link) in r.error_lines[0] and "symbolic link" in r.error_lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_link_in_place_of_the_staging_images_folder_is_refused(dataset, server, tmp_path):
    """Attack 1: ``staging/<zip>/images`` -> another folder, with the real ``object.json``
    (public HEAD data): the images must not be written there, and nothing there deleted."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    staging = data / ".isic2020" / "staging" / TRAIN
    server.throttle(20_000)  # slow enough that the kill lands while images are staged
    _kill_midway(_args(data, server.url), _env(dataset),
                 lambda: _count(staging / "images") >= 5)
    assert (staging / "object.json").is_file()
    for p in (staging / "images").iterdir():
        p.unlink()
    (staging / "images").rmdir()
    (staging / "images").symlink_to(decoy)
    before = _snapshot(decoy)
    server.clear_faults()
    r = run_cli(*_args(data, server.url), env=_env(dataset))
    _assert_refused(r, staging / "images")
    assert _snapshot(decoy) == before
    assert _count(data / "jpeg" / "train") == 0


def test_a_link_in_place_of_a_partial_download_is_refused(dataset, server, tmp_path):
    """Attack 2: ``partial/<zip>.part`` -> a file, with the progress record intact."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    partial = data / ".isic2020" / "partial" / f"{TRAIN}.part"
    server.throttle(40_000, TRAIN)
    _kill_midway(_args(data, server.url, "--no-extract"), _env(dataset),
                 lambda: _has_progress(partial.with_name(f"{TRAIN}.state.json")))
    partial.unlink()
    partial.symlink_to(decoy / "precious.txt")
    before = _snapshot(decoy)
    server.clear_faults()
    r = run_cli(*_args(data, server.url, "--no-extract"), env=_env(dataset))
    _assert_refused(r, partial)
    assert _snapshot(decoy) == before


def test_a_link_in_place_of_the_lock_is_refused_not_truncated(dataset, server, tmp_path):
    """Attack 3: ``lock`` -> a file: it was truncated and overwritten with a pid."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    (data / ".isic2020").mkdir(parents=True)
    (data / ".isic2020" / "lock").symlink_to(decoy / "precious.txt")
    before = _snapshot(decoy)
    r = run_cli(*_args(data, server.url), env=_env(dataset))
    _assert_refused(r, data / ".isic2020" / "lock")
    assert _snapshot(decoy) == before


@pytest.mark.parametrize(
    ("planted", "extra"),
    [
        ("partial", ()),  # a stale "partial download" there was deleted
        ("staging", ()),  # a stale "staging folder" there was removed
        ("staging", ("--direct",)),  # the members were staged there
        ("remote", ("--sample", "5")),  # the cached directory was written there
        ("selections", ("--sample", "5")),  # the selection record was written there
        ("records.json", ()),
        ("", ()),  # the state folder itself
    ],
    ids=["partial", "staging", "staging-direct", "remote", "selections", "records",
         "state-folder"],
)
def test_a_link_anywhere_in_the_state_folder_is_refused_before_anything_is_written(
    dataset, server, tmp_path, planted, extra
):
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    link = data / ".isic2020" / planted if planted else data / ".isic2020"
    link.parent.mkdir(parents=True, exist_ok=True)
    target = decoy / "precious.txt" if planted == "records.json" else decoy
    link.symlink_to(target)
    before = _snapshot(decoy)
    r = run_cli(*_args(data, server.url, *extra), env=_env(dataset))
    _assert_refused(r, link)
    assert _snapshot(decoy) == before
    assert not (data / "jpeg").exists()
    # Removing the link is all it takes: the same command then works.
    link.unlink()
    r = run_cli(*_args(data, server.url, *extra), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert _snapshot(decoy) == before


@pytest.mark.parametrize("how", ["extract", "direct"])
def test_a_link_at_an_images_temporary_name_is_replaced_not_written_through(
    dataset, server, tmp_path, how
):
    """In the layout (the user's folders) a link at the name an image is written under
    first (``.NAME.part``) is removed and the image made anew: its target is untouched."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    name = f"{dataset.train_names[0]}.jpg"
    dest = data / "jpeg" / "train"
    dest.mkdir(parents=True)
    (dest / f".{name}.part").symlink_to(decoy / "precious.txt")
    before = _snapshot(decoy)
    extra = ("--direct",) if how == "direct" else ()
    r = run_cli(*_args(data, server.url, *extra), env=_env(dataset, ISIC2020_STREAM="0"))
    assert r.returncode == 0, r.stderr
    assert _snapshot(decoy) == before
    assert not (dest / name).is_symlink() and (dest / name).stat().st_size > 100
    assert not os.path.lexists(dest / f".{name}.part")
    assert _count(dest) == N_TRAIN


def test_a_link_at_a_final_path_is_replaced_by_the_verified_file(dataset, server, tmp_path):
    """A downloaded file lands by rename: a link at its final name is replaced, its target
    keeps its bytes."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    csv = dataset.manifest.metadata("train")[0].name
    (data / "metadata").mkdir(parents=True)
    (data / "metadata" / csv).symlink_to(decoy / "precious.txt")
    before = _snapshot(decoy)
    r = run_cli(*_args(data, server.url), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert _snapshot(decoy) == before
    assert not (data / "metadata" / csv).is_symlink()
    assert (data / "metadata" / csv).read_bytes() == (dataset.root / csv).read_bytes()


# --------------------------------------------------------------------------------------------
# Links the user makes on purpose: followed


def test_the_data_directory_itself_may_be_a_link(dataset, server, tmp_path):
    real = tmp_path / "big-disk" / "isic"
    real.mkdir(parents=True)
    (tmp_path / "d").symlink_to(real)
    r = run_cli(*_args(tmp_path / "d", server.url), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert _count(real / "jpeg" / "train") == N_TRAIN


def test_an_images_folder_linked_to_another_folder_is_followed(dataset, server, tmp_path):
    """``jpeg/train`` -> a folder elsewhere (the user's choice): the images go there, staged
    ones included, and nothing else is left there."""
    data = tmp_path / "d"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / "jpeg").mkdir(parents=True)
    (data / "jpeg" / "train").symlink_to(elsewhere)
    r = run_cli(*_args(data, server.url, "--json"), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert (data / "jpeg" / "train").is_symlink()
    assert sorted(os.listdir(elsewhere)) == sorted(f"{n}.jpg" for n in dataset.train_names)


def test_an_images_folder_linked_to_another_filesystem_is_filled(dataset, server, tmp_path):
    """``jpeg/train`` on another filesystem (a tmpfs): staged images cannot be renamed there,
    so the extraction unpacks them there instead of failing with EXDEV."""
    from support.fs import small_filesystem

    data = tmp_path / "d"
    with small_filesystem(tmp_path / "other-disk", 64 * 1024 * 1024) as other:
        (data / "jpeg").mkdir(parents=True)
        (data / "jpeg" / "train").symlink_to(other)
        r = run_cli(*_args(data, server.url, "--json"), env=_env(dataset))
        assert r.returncode == 0, r.stderr
        assert _count(other) == N_TRAIN
        assert r.json["verification"]["ok"] is True


@pytest.mark.parametrize(
    ("folder", "extra", "ready"),
    [
        (f"staging/{TRAIN}/images", (), lambda d: _count(d) >= 5),
        (f"staging/{TRAIN}/images", ("--direct",), lambda d: _count(d) >= 5),
        ("partial", ("--no-extract",), lambda d: _has_progress(d / f"{TRAIN}.state.json")),
    ],
    ids=["staging-images", "staging-images-direct", "partial"],
)
def test_a_folder_swapped_for_a_link_during_a_run_gets_nothing_written_through_it(
    dataset, server, tmp_path, folder, extra, ready
):
    """The same attacks while a run is under way: the real folder is moved aside (still in
    DATA) and a link to the decoy put in its place. What the run writes from then on goes
    to the folder it opened, or the run stops with one line: never into the decoy."""
    data, decoy = tmp_path / "d", _decoy(tmp_path / "decoy")
    before = _snapshot(decoy)
    target = data / ".isic2020" / folder
    server.throttle(40_000, TRAIN)
    proc = subprocess.Popen(cli_cmd(*_args(data, server.url, *extra)), env=_env(dataset),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while not ready(target) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the fetch ended before the folder could be swapped"
    target.rename(target.with_name(target.name + "-moved"))
    target.symlink_to(decoy)
    server.clear_faults()
    _, err = proc.communicate(timeout=120)
    assert _snapshot(decoy) == before
    assert "Traceback" not in err and "internal error" not in err, err
    if proc.returncode != 0:
        lines = [ln for ln in err.splitlines() if ln.startswith("isic2020: error")]
        assert proc.returncode == 3 and len(lines) == 1, err
        assert str(target) in lines[0] and "symbolic link" in lines[0], err
