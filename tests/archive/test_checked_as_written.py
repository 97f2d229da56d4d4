"""The closing verify of a fetch takes an image's integrity from the check its writer made on
the bytes it wrote (``decode.Vouched``), and reads every other image.

What a user depends on: a fetch that exits 0 has shown every image intact, either read back
or checked in memory by the very rule the verify applies to files (the JPEG markers), right
before those bytes were written; an image whose bytes fail that rule is never vouched for, so
the verify reads it and names it; and ``isic2020 verify`` always reads every file.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import zipfile
from pathlib import Path

import pytest
from support.cli import cli_env, run_cli
from support.servers import FaultServer

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import build_dataset

PREFIX = "/challenges/2020/"
TRAIN = "ISIC_2020_Training_JPEG.zip"
N_TRAIN = 120
INTEGRITY = "images/jpeg/train/integrity"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return build_dataset(tmp_path_factory.mktemp("vouch"), n_train=N_TRAIN, n_test=4,
                         image_size=64)


@pytest.fixture(params=["threads", "processes"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def _env(manifest: Path, mode: str) -> dict[str, str]:
    return cli_env(manifest, ISIC2020_CHUNK_SIZE=str(64 * 1024),
                   ISIC2020_STREAM_PROCESS_MIN="0" if mode == "processes" else "1024G")


def _fetch(data: Path, url: str, manifest: Path, mode: str, *extra: str):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", url, "--split", "train",
                   "--format", "jpeg", "--connections", "2", "--json", *extra,
                   env=_env(manifest, mode))


def _check(report: dict, name: str) -> dict:
    (c,) = [c for c in report["checks"] if c["name"] == name]
    return c


def _with_truncated_member(dataset, tmp_path: Path, big: bool = False
                           ) -> tuple[Path, Path, str]:
    """A copy of the mirror whose training zip holds one JPEG cut short (its CRC-32 is right
    for the bytes it holds: the archive is whole, the image is not), and a manifest that pins
    no size or sha256 for that zip (the server's ETag and the CRCs check it). ``big``: that
    JPEG is 600 kB of noise after its SOI marker, larger than any block a connection
    receives, so no writer ever holds it whole in memory."""
    root = tmp_path / "mirror"
    shutil.copytree(dataset.root, root)
    src = dataset.root / TRAIN
    victim = ""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(root / TRAIN, "w",
                                                      zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if not victim and info.filename.endswith(".jpg") and "__MACOSX" not in \
                    info.filename:
                victim = info.filename.rpartition("/")[2]
                data = data[: len(data) // 2]  # no EOI marker at the end
                if big:
                    data = data[:4] + random.Random(7).randbytes(600_000) + b"\0"
            zout.writestr(info, data)
    man = load_manifest(dataset.manifest_path)
    files = tuple(dataclasses.replace(f, size=None, sha256=None) if f.name == TRAIN else f
                  for f in man.files)
    manifest = tmp_path / "loose.toml"
    manifest.write_text(manifest_to_toml(dataclasses.replace(man, files=files)))
    return root, manifest, victim


def test_a_streamed_fetch_shows_every_image_intact_from_its_check_as_written(
        dataset, tmp_path, mode):
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = _fetch(tmp_path / "d", srv.url, dataset.manifest_path, mode)
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["extraction"]["while_downloading"]["checked"] == N_TRAIN
    assert train["extraction"]["checked_when_written"] == N_TRAIN
    c = _check(r.json["verification"], INTEGRITY)
    assert c["status"] == "ok"
    assert c["figures"]["checked"] == N_TRAIN
    assert c["figures"]["checked_when_written"] == N_TRAIN
    assert f"{N_TRAIN} checked as this fetch wrote them" in c["message"]


def test_an_image_failing_the_check_as_written_is_read_and_named_by_the_closing_verify(
        dataset, tmp_path, mode):
    root, manifest, victim = _with_truncated_member(dataset, tmp_path)
    with FaultServer(root, prefix=PREFIX) as srv:
        r = _fetch(tmp_path / "d", srv.url, manifest, mode)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert train["status"] == "downloaded"  # the archive itself is whole
    assert train["extraction"]["while_downloading"]["checked"] == N_TRAIN - 1
    c = _check(r.json["verification"], INTEGRITY)
    assert c["status"] == "failed"
    assert c["figures"]["checked_when_written"] == N_TRAIN - 1
    assert c["figures"]["damaged"] == 1
    assert c["problems"] == [f"{victim}: truncated JPEG (no EOI marker FFD9 at the end)"]


def test_isic2020_verify_reads_every_file_whatever_the_fetch_checked(dataset, tmp_path):
    data = tmp_path / "d"
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = _fetch(data, srv.url, dataset.manifest_path, "threads")
    assert r.returncode == 0, r.stderr
    images = sorted((data / "jpeg" / "train").glob("ISIC_*.jpg"))
    damaged = images[len(images) // 2]
    content = damaged.read_bytes()
    damaged.write_bytes(b"\x00" * 2 + content[2:])  # the same size, no SOI marker
    v = run_cli("verify", "--data-dir", str(data), "--split", "train", "--format", "jpeg",
                "--json", env=cli_env(dataset.manifest_path))
    assert v.returncode == 1, v.stderr
    c = _check(v.json, INTEGRITY)
    assert c["figures"]["checked_when_written"] == 0
    assert c["problems"] == [f"{damaged.name}: not a JPEG (no SOI marker FFD8 at the start)"]


def test_a_direct_fetch_vouches_for_the_members_it_checked_whole(dataset, tmp_path, mode):
    """``--direct``: every member is checked before it is written (decoded whole in memory,
    or streamed across blocks to its file, whose ends the rule needs are kept) and is not
    read again."""
    with FaultServer(dataset.root, prefix=PREFIX) as srv:
        r = _fetch(tmp_path / "d", srv.url, dataset.manifest_path, mode, "--direct")
    assert r.returncode == 0, r.stderr
    (train,) = [f for f in r.json["files"] if f["name"] == TRAIN]
    assert (train["extraction"]["processes"] > 0) == (mode == "processes")
    c = _check(r.json["verification"], INTEGRITY)
    assert c["status"] == "ok"
    assert c["figures"]["checked"] == N_TRAIN
    assert c["figures"]["checked_when_written"] == N_TRAIN


@pytest.mark.parametrize("big", [False, True], ids=["whole-in-a-block", "streamed"])
def test_with_direct_an_image_failing_the_check_is_read_and_named(dataset, tmp_path, mode,
                                                                   big):
    root, manifest, victim = _with_truncated_member(dataset, tmp_path, big)
    with FaultServer(root, prefix=PREFIX) as srv:
        r = _fetch(tmp_path / "d", srv.url, manifest, mode, "--direct")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    c = _check(r.json["verification"], INTEGRITY)
    assert c["status"] == "failed"
    assert c["figures"]["damaged"] == 1
    assert c["figures"]["checked_when_written"] == N_TRAIN - 1
    assert c["problems"] == [f"{victim}: truncated JPEG (no EOI marker FFD9 at the end)"]
