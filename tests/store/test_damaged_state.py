"""State files of the wrong shape are damaged state, not internal errors (issue 11 F).

What a user depends on: whatever is in ``records.json`` or a partial download's progress
record (``partial/*.state.json``), the same ``isic2020 fetch`` ends with the right files and
exit 0; what the damaged file said is verified or fetched again, never trusted; one warning
line says so, and the run after it is quiet (the file was healed).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.cli import cli_cmd, cli_env, run_cli
from support.servers import FaultServer

from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("damaged"), n_train=N_TRAIN, n_test=2,
                         image_size=64)


def _args(data: Path, url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
            "--format", "jpeg", "--connections", "2", "--json", *extra]


def _env(dataset) -> dict[str, str]:
    return cli_env(dataset.manifest_path, ISIC2020_CHUNK_SIZE=str(64 * 1024))


def _csv(dataset) -> str:
    return dataset.manifest.metadata("train")[0].name


def _wrong_shapes(dataset) -> dict[str, object]:
    csv = _csv(dataset)
    return {
        "list": [1, 2, 3],
        "files-null": {"files": None},
        "files-list": {"files": [csv]},
        "record-string": {"files": {csv: "verified"}},
        "record-types": {"files": {csv: {"name": csv, "size": "big", "etag": 5, "sha256": None,
                                         "md5": None, "url": [], "etag_check": "md5",
                                         "st_size": "x", "st_mtime_ns": None,
                                         "verified_at": "now"}}},
        "extracted-types": {"extracted": {TRAIN: {"images": "many", "st_size": None}}},
        "verified-types": {"verified": {"train:jpeg": {"fingerprint": 7, "at": "then"}}},
        "not-json": "{\"files\": {",
    }


@pytest.mark.parametrize(
    "shape",
    ["list", "files-null", "files-list", "record-string", "record-types", "extracted-types",
     "verified-types", "not-json"],
)
def test_a_records_file_of_the_wrong_shape_heals_with_one_warning(dataset, tmp_path, shape):
    data = tmp_path / "d"
    records = data / ".isic2020" / "records.json"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = run_cli(*_args(data, srv.url), env=_env(dataset))
        assert r.returncode == 0, r.stderr
        bad = _wrong_shapes(dataset)[shape]
        records.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        r = run_cli(*_args(data, srv.url), env=_env(dataset))
        again = run_cli(*_args(data, srv.url), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "records.json" in ln and "damaged" in ln]
    assert len(warnings) == 1, r.stderr
    assert r.json["verification"]["ok"] is True
    assert len(list((data / "jpeg" / "train").iterdir())) == N_TRAIN
    assert again.returncode == 0, again.stderr
    assert "damaged" not in again.stderr
    assert isinstance(json.loads(records.read_text())["files"], dict)


def _kill_with_progress(args: list[str], env: dict[str, str], state: Path) -> dict:
    proc = subprocess.Popen(cli_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    doc: dict = {}
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            doc = json.loads(state.read_bytes())
        except (OSError, ValueError):
            doc = {}
        if doc.get("done"):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the fetch ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return doc


@pytest.mark.parametrize(
    "done",
    [[[0, 1e400]], [[-5, 10 ** 30]], [[0, 2 ** 70]]],
    ids=["infinite", "beyond", "past-the-end"],
)
def test_a_partial_progress_record_of_the_wrong_shape_is_ignored(dataset, tmp_path, done):
    """The progress record of a killed download, its ``done`` list replaced: the resumed
    download ends with the server's exact bytes (what the record claimed is not trusted
    beyond what it can mean)."""
    data = tmp_path / "d"
    state = data / ".isic2020" / "partial" / f"{TRAIN}.state.json"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        srv.throttle(40_000, TRAIN)
        doc = _kill_with_progress(_args(data, srv.url, "--no-extract"), _env(dataset), state)
        assert doc, "no progress record was written"
        doc["done"] = done
        text = json.dumps(doc).replace("Infinity", "1e400")
        state.write_text(text)
        srv.clear_faults()
        r = run_cli(*_args(data, srv.url, "--no-extract"), env=_env(dataset))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert (data / "archives" / TRAIN).read_bytes() == (dataset.root / TRAIN).read_bytes()
