"""Benchmark data, cached under WORK/data; a stamp records the parameters it was built
with."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import load_manifest, manifest_to_toml
from isic2020.synthetic import ARCHIVE_FOLDERS, build_dataset, jpeg_bytes

from .common import TEST_ZIP, TRAIN_ZIP, MiB
from .harness import Params, rmtree


def _stamp_ok(folder: Path, key: dict[str, Any]) -> bool:
    stamp = folder / "stamp.json"
    try:
        return json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _write_stamp(folder: Path, key: dict[str, Any]) -> None:
    (folder / "stamp.json").write_text(json.dumps(key))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def human(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} B"


def _repoint(manifest_path: Path, out: Path, mirror: Path, changes: dict[str, int]) -> None:
    """Write ``out``: the manifest with the archives in ``changes`` (name -> images) pinned to
    the exact size and sha256 of the files now in ``mirror``."""
    man = load_manifest(manifest_path)
    files = []
    for f in man.files:
        if f.name in changes:
            path = mirror / f.name
            size = path.stat().st_size
            f = dataclasses.replace(
                f, size=size, sha256=sha256_file(path), etag=None, published_size=human(size),
                images=changes[f.name] if changes[f.name] >= 0 else f.images,
            )
        files.append(f)
    text = "# benchmarks/run.py: synthetic mirror, exact sizes and sha256\n"
    out.write_text(text + manifest_to_toml(dataclasses.replace(man, files=tuple(files))))


def build_download_mirror(work: Path, size: int) -> tuple[Path, Path]:
    """A mirror with the train CSVs and a ``size``-byte train 'archive' of random bytes
    (download rows use --no-extract: the bytes only need to be incompressible and exact)."""
    folder = work / "data" / f"download-{size}"
    key = {"kind": "download", "size": size, "v": 1}
    manifest = folder / "manifest.toml"
    if _stamp_ok(folder, key):
        return folder / "mirror", manifest
    rmtree(folder)
    mirror = folder / "mirror"
    ds = build_dataset(mirror, n_train=24, n_test=12, formats=("jpeg",), seed=5)
    rng = random.Random(size)
    with open(mirror / TRAIN_ZIP, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(rng.randbytes(n))
            left -= n
    _repoint(ds.manifest_path, manifest, mirror, {TRAIN_ZIP: -1})
    _write_stamp(folder, key)
    return mirror, manifest


def _jpeg_pool(lo: int, hi: int, seed: int, count: int = 48) -> list[bytes]:
    """``count`` real JPEGs (noise over a gradient: entropy like a photo's) of lo..hi bytes."""
    from PIL import Image

    rng = random.Random(seed)
    pool: list[bytes] = []
    targets = [lo + (hi - lo) * (i + 0.5) / count for i in range(count)]
    side = 128
    for target in targets:
        for _ in range(12):  # adjust the side until the size is in range
            raw = bytearray(rng.randbytes(side * side * 3))
            for i in range(0, len(raw), 3):  # a colour cast, so it is no pure noise
                raw[i] = (raw[i] >> 1) + 100
            im = Image.frombytes("RGB", (side, side), bytes(raw))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
            data = buf.getvalue()
            if lo <= len(data) <= hi and abs(len(data) - target) < (hi - lo) / count * 2:
                break
            side = max(16, int(side * (target / len(data)) ** 0.5))
        pool.append(data)
    return pool


jpeg_pool = _jpeg_pool  # public: rows_shards.py builds its images from it too


def _write_image_zip(path: Path, folder: str, names: list[str], pool: list[bytes], level: int,
                     extras: list[tuple[str, bytes]]) -> int:
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for i, name in enumerate(names):
            data = jpeg_bytes(pool[(i * 7919) % len(pool)], name)
            info = zipfile.ZipInfo(f"{folder}/{name}.jpg", date_time=(2020, 5, 26, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
            total += len(data)
        for n, data in extras:
            zf.writestr(n, data)
    tmp.replace(path)
    return total


@dataclass
class Dataset:
    mirror: Path
    manifest: Path
    n_train: int
    n_test: int
    train_bytes: int  # uncompressed bytes of the train zip's images
    train_zip: Path


def build_image_mirror(work: Path, p: Params) -> Dataset:
    """The synthetic dataset (official CSVs for n_train + n_test images), with both JPEG zips
    rebuilt from 10-30 KB real JPEGs under the official member folders."""
    folder = work / "data" / f"images-{p.n_train}-{p.n_test}"
    key = {"kind": "images", "n_train": p.n_train, "n_test": p.n_test, "lo": p.member_min,
           "hi": p.member_max, "level": p.zip_level, "v": 1}
    manifest = folder / "manifest.toml"
    mirror = folder / "mirror"
    if not _stamp_ok(folder, key):
        rmtree(folder)
        ds = build_dataset(mirror, n_train=p.n_train, n_test=p.n_test, formats=("jpeg",), seed=7)
        pool = _jpeg_pool(p.member_min, p.member_max, seed=11)
        train_bytes = _write_image_zip(
            mirror / TRAIN_ZIP, ARCHIVE_FOLDERS[("train", "jpeg")], ds.train_names, pool,
            p.zip_level, [(f"__MACOSX/train/._{ds.train_names[0]}.jpg", b"\x00\x05\x16\x07")],
        )
        _write_image_zip(
            mirror / TEST_ZIP, ARCHIVE_FOLDERS[("test", "jpeg")], ds.test_names, pool,
            p.zip_level, [("ISIC_2020_Test_Input/readme.txt", b"synthetic\r\n")],
        )
        _repoint(ds.manifest_path, manifest, mirror, {TRAIN_ZIP: -1, TEST_ZIP: -1})
        key_out = dict(key, train_bytes=train_bytes)
        (folder / "info.json").write_text(json.dumps(key_out))
        _write_stamp(folder, key)
    info = json.loads((folder / "info.json").read_text())
    return Dataset(mirror, manifest, p.n_train, p.n_test, info["train_bytes"],
                   mirror / TRAIN_ZIP)
