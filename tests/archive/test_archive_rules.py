"""One set of rules for every zip path: an archive on disk (``extract``) and the same archive on
a server (``inspect``, subsets, ``--direct``) are refused for the same entry, in the same words.

Real archives built by ``build_dataset``, patched with ``support.dataset.add_entry`` and served
by a real ``FaultServer`` on 127.0.0.1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.dataset import add_entry, install
from support.servers import FaultServer

from isic2020.archive import members as rm
from isic2020.archive import remote as rz
from isic2020.archive.local import plan_archive
from isic2020.catalog.manifest import load_manifest
from isic2020.errors import VerificationError
from isic2020.synthetic import build_dataset
from isic2020.transfer.http import Timeouts
from isic2020.transfer.retry import RetryPolicy

TRAIN = "ISIC_2020_Training_JPEG.zip"
FAST = dict(
    timeouts=Timeouts(connect=2.0, read=2.0),
    retry=RetryPolicy(base=0.01, cap=0.2, window=20.0, probe_attempts=2),
)


def _refusals(tmp_path: Path, name: str, data: bytes, compress: int) -> tuple[str, str]:
    """The refusal of the landed archive and of the served one, without the archive's name."""
    ds = build_dataset(tmp_path / "m", n_train=12, n_test=2)
    root = tmp_path / "served"
    shutil.copytree(ds.root, root)
    add_entry(root / TRAIN, name, data, compress=compress)
    layout = install(ds, tmp_path / "data")
    shutil.copyfile(root / TRAIN, layout.archives_dir / TRAIN)
    entry = load_manifest(ds.manifest_path).archive("train", "jpeg")
    with pytest.raises(VerificationError) as local:
        plan_archive(layout.archives_dir / TRAIN, entry)
    with FaultServer(root, prefix="/challenges/2020/") as srv:
        remote = rz.read_central_directory(srv.url_for(TRAIN), **FAST)
        with pytest.raises(VerificationError) as served:
            rm.image_members(remote, "jpeg")
    prefix = f"{TRAIN}: "
    assert local.value.message.startswith(prefix), local.value.message
    assert served.value.message.startswith(prefix), served.value.message
    return local.value.message[len(prefix):], served.value.message[len(prefix):]


def test_a_zip_bomb_entry_is_refused_by_every_path_in_the_same_words(tmp_path: Path) -> None:
    """A 4 MiB run of zeros (~1000:1) next to the images: ``extract`` always refused it; the
    remote paths (``inspect``, subsets) used to list and choose images from such an archive."""
    import zipfile

    local, served = _refusals(tmp_path, "train/notes.txt", bytes(4 << 20), zipfile.ZIP_DEFLATED)
    assert "zip bomb" in local and "'train/notes.txt'" in local
    assert served == local


def test_an_unsafe_entry_is_refused_by_every_path_in_the_same_words(tmp_path: Path) -> None:
    """``../`` in a name: both paths refused it, each in its own words; now in one."""
    import zipfile

    local, served = _refusals(tmp_path, "../ISIC_0000001.jpg", b"\xff\xd8x\xff\xd9",
                              zipfile.ZIP_STORED)
    assert "unsafe" in local and "'../ISIC_0000001.jpg'" in local
    assert served == local
