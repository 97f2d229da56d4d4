"""``isic2020 status`` and ``isic2020 clean`` on data a real fetch left: what is where, what the
disk holds, and what can be given back without losing anything that is not rebuilt.

The data come from the synthetic dataset served on 127.0.0.1; the partial download and the
staged images are made by a real fetch interrupted mid-transfer (SIGINT), the remote-directory
cache by a real ``inspect``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.fetched import fetch_into, run_unprivileged
from support.fixtures import served_dataset
from support.servers import FaultServer, Throttle

from isic2020.store.lock import data_dir_lock
from isic2020.store.records import read_json

TRAIN_ZIP = "ISIC_2020_Training_JPEG.zip"
TEST_ZIP = "ISIC_2020_Test_JPEG.zip"


dataset, mirror = served_dataset("syn", n_train=24, n_test=40, image_size=48, distinct_images=40)


def _cli(dataset, *args: str):
    return run_cli(*args, env=cli_env(dataset.manifest_path))


def _blocks(folder: Path) -> int:
    """What ``du`` says: the folder's own blocks and those of everything in it."""
    return sum(p.lstat().st_blocks * 512 for p in (folder, *folder.rglob("*")))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


def _interrupted_test_fetch(data: Path, dataset, srv: FaultServer) -> None:
    """Fetch the test split until part of its zip is on disk (its progress record says so),
    then Ctrl-C: what a user's interrupted run leaves."""
    srv.add_fault(Throttle(bytes_per_second=20_000), TEST_ZIP, times=None)
    env = cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(4096))
    proc = subprocess.Popen(
        cli_cmd("fetch", "--data-dir", str(data), "--split", "test", "--mirror", srv.url,
                "--connections", "1", "-q"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    state = data / ".isic2020" / "partial" / f"{TEST_ZIP}.state.json"
    deadline = time.monotonic() + 60
    while not (read_json(state) or {}).get("done") \
            and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished or failed before the signal: proves nothing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    srv.clear_faults()


def _stage(data: Path) -> None:
    """Images unpacked from the test zip while it downloaded, as a run killed then leaves them
    in ``staging/<zip>/`` (the real run moves them out within milliseconds of the zip's last
    byte, too quickly to interrupt reliably)."""
    staged = data / ".isic2020" / "staging" / TEST_ZIP
    staged.mkdir(parents=True, exist_ok=True)
    for image in sorted((data / "jpeg" / "train").iterdir())[:5]:
        (staged / image.name).write_bytes(image.read_bytes())


def test_status_shows_each_files_state_each_folders_images_and_blocks(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    _interrupted_test_fetch(data, dataset, mirror)
    _stage(data)
    csv = data / "metadata" / "ISIC_2020_Training_Duplicates.csv"
    csv.write_bytes(csv.read_bytes() + b"\n")  # changed since it was verified
    (data / ".isic2020" / "lock").unlink()
    before = _tree(data)

    r = _cli(dataset, "status", "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert (doc["command"], doc["ok"], doc["exit_code"], doc["schema"]) == ("status", True, 0, 1)
    states = {f["name"]: f["states"] for f in doc["files"]}
    assert states[TRAIN_ZIP] == ["verified", "extracted"]
    assert states[TEST_ZIP] == ["partial"]
    assert states["ISIC_2020_Training_Duplicates.csv"] == ["present", "changed"]
    assert states["ISIC_2020_Training_GroundTruth.csv"] == ["verified"]
    (test_zip,) = [f for f in doc["files"] if f["name"] == TEST_ZIP]
    assert 0 < test_zip["partial_bytes"] < dataset.path(TEST_ZIP).stat().st_size
    (folder,) = [f for f in doc["image_folders"] if f["path"] == "jpeg/train"]
    assert folder["images"] == len(dataset.train_names) and folder["other_files"] == 0
    assert folder["disk_bytes"] == _blocks(data / "jpeg" / "train")  # blocks, not sizes
    assert doc["disk_bytes"]["archives"] == _blocks(data / "archives")
    assert doc["disk_bytes"]["partial"] == _blocks(data / ".isic2020" / "partial") > 0
    assert doc["disk_bytes"]["staging"] == _blocks(data / ".isic2020" / "staging")
    assert doc["disk_bytes"]["staging"] > 20_000
    assert isinstance(doc["free_bytes"], int) and doc["free_bytes"] > 0
    # Read-only: no lock taken (none made), nothing written or touched.
    assert _tree(data) == before

    human = _cli(dataset, "status", "--data-dir", str(data))
    assert human.returncode == 0, human.stderr
    assert "24 images" in human.stdout and "partial" in human.stdout


def test_status_of_an_unreadable_folder_says_permission_denied(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    os.chmod(tmp_path, 0o755)  # so the unprivileged run can reach DATA at all
    folder = data / "jpeg" / "train"
    folder.chmod(0)
    try:
        r = run_unprivileged("status", "--data-dir", str(data),
                             env=cli_env(dataset.manifest_path))
    finally:
        folder.chmod(0o755)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("isic2020: error: cannot read ")
    assert str(folder) in r.stderr and "permission denied" in r.stderr


def test_clean_removes_partials_staging_caches_and_says_what_it_freed(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    _interrupted_test_fetch(data, dataset, mirror)
    _stage(data)
    r = run_cli("inspect", "--data-dir", str(data), "--split", "train", "--mirror", mirror.url,
                "-q", env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    state = data / ".isic2020"
    assert any((state / "remote").iterdir())
    parts = {p: sum(_blocks(c) for c in (state / p).iterdir())
             for p in ("partial", "staging", "remote")}
    assert all(parts.values()), parts
    images = sorted((data / "jpeg" / "train").iterdir())
    kept = {p: p.read_bytes() for p in [*images, *(data / "metadata").iterdir(),
                                        data / "archives" / TRAIN_ZIP, state / "records.json"]}

    dry = _cli(dataset, "clean", "--data-dir", str(data), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert dry.json["command"] == "clean" and dry.json["dry_run"] is True
    assert dry.json["freed_bytes"] == sum(parts.values())
    assert all(any((state / p).iterdir()) for p in parts)  # nothing removed

    r = _cli(dataset, "clean", "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stderr
    doc = r.json
    assert doc["freed_bytes"] == sum(parts.values())
    assert doc["freed_by_part"] == {"partial": parts["partial"], "staging": parts["staging"],
                                    "caches": parts["remote"]}
    assert not any((state / p).exists() and any((state / p).iterdir()) for p in parts)
    assert {p: p.read_bytes() for p in kept} == kept  # images, CSVs, archive, records stay
    human = _cli(dataset, "clean", "--data-dir", str(data))
    assert human.returncode == 0 and "freed 0 B" in human.stdout

    # The next fetch starts the test zip over and finishes.
    again = fetch_into(data, mirror.url, dataset.manifest_path, "--split", "all")
    assert again.json["verification"]["ok"] is True


def test_clean_archives_removes_only_archives_whose_images_are_all_on_disk(
    dataset, mirror, tmp_path
):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    archive = data / "archives" / TRAIN_ZIP
    victim = data / "jpeg" / "train" / f"{dataset.train_names[0]}.jpg"
    victim.unlink()

    r = _cli(dataset, "clean", "--data-dir", str(data), "--archives", "--json")
    assert r.returncode == 0, r.stderr
    assert archive.exists()  # the only copy of the deleted image
    (kept,) = r.json["kept_archives"]
    assert kept["path"] == f"archives/{TRAIN_ZIP}" and "1 image of it not on disk" in kept["reason"]

    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")  # restores it
    blocks = archive.stat().st_blocks * 512
    r = _cli(dataset, "clean", "--data-dir", str(data), "--archives", "--json")
    assert r.returncode == 0, r.stderr
    assert not archive.exists()
    assert r.json["freed_by_part"] == {"archives": blocks}
    assert len(list((data / "jpeg" / "train").iterdir())) == len(dataset.train_names)
    # A later fetch knows the images are the data now: nothing downloaded, verified.
    sent = mirror.bytes_sent()
    again = fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    statuses = {f["name"]: f["status"] for f in again.json["files"]}
    assert statuses[TRAIN_ZIP] == "extracted (archive not kept)"
    assert again.json["verification"]["ok"] is True and mirror.bytes_sent() == sent


@pytest.mark.parametrize("where", ["staging", "partial"])
def test_clean_never_follows_a_link_planted_in_the_state_folder(
    dataset, mirror, tmp_path, where
):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("not isic2020's")
    folder = data / ".isic2020" / where
    folder.mkdir(exist_ok=True)
    link = folder / (TEST_ZIP if where == "staging" else f"{TEST_ZIP}.part")
    link.symlink_to(outside if where == "staging" else precious)

    for extra in ((), ("--dry-run",), ("--archives",)):
        r = _cli(dataset, "clean", "--data-dir", str(data), *extra)
        assert r.returncode == 3, r.stdout + r.stderr
        assert len(r.error_lines) == 1 and str(link) in r.error_lines[0], r.stderr
        assert "symbolic link" in r.error_lines[0]
        assert precious.read_text() == "not isic2020's"
        assert link.is_symlink()
    assert (data / "archives" / TRAIN_ZIP).exists()


def test_clean_takes_the_data_directory_lock(dataset, mirror, tmp_path):
    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    staged = data / ".isic2020" / "staging" / TEST_ZIP
    staged.mkdir(parents=True)
    (staged / "x").write_bytes(b"x" * 5000)
    with data_dir_lock(data / ".isic2020" / "lock"):  # a fetch is running
        r = _cli(dataset, "clean", "--data-dir", str(data), "--lock-timeout", "0")
    assert r.returncode == 3, r.stderr
    assert len(r.error_lines) == 1 and "another isic2020" in r.error_lines[0]
    assert (staged / "x").exists()
    r = _cli(dataset, "clean", "--data-dir", str(data), "--lock-timeout", "0")
    assert r.returncode == 0, r.stderr
    assert not staged.exists()


def test_the_python_api_names_them(dataset, mirror, tmp_path):
    import isic2020

    data = tmp_path / "d"
    fetch_into(data, mirror.url, dataset.manifest_path, "--split", "train")
    report = isic2020.status(data_dir=data, manifest=dataset.manifest_path)
    assert [d.images for d in report.folders] == [len(dataset.train_names)]
    sums = isic2020.checksums(data_dir=data, out=tmp_path / "S")
    assert len(sums.files) == len(dataset.train_names)
    assert isic2020.verify_against(tmp_path / "S", data_dir=data).exit_code == 0
    assert isic2020.clean(data_dir=data, manifest=dataset.manifest_path).freed_bytes == 0
    assert {"status", "clean", "checksums", "verify_against"} <= set(isic2020.__all__)
