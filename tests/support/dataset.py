"""Test helpers: place a synthetic dataset in a data directory, and damage zips and images.

Every helper works on real files (no mocks): the point of the tests is that the code meets
the bytes it will meet in reality, including hostile ones.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path

from isic2020.store.layout import Layout
from isic2020.synthetic import SyntheticDataset


def install(ds: SyntheticDataset, data_dir: Path, *, archives: bool = True,
            metadata: bool = True) -> Layout:
    """Copy the mirror's files where ``fetch`` puts them: DATA/archives and DATA/metadata."""
    layout = Layout(Path(data_dir).absolute())
    man = ds.manifest
    for f in man.files:
        if (f.is_archive and not archives) or (not f.is_archive and not metadata):
            continue
        dest = layout.final_path(f)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ds.root / f.name, dest)
    return layout


def member_data_offset(zip_path: Path, member: str) -> tuple[int, int]:
    """(offset of the member's compressed bytes in the file, their length)."""
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    with open(zip_path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    sig, *_rest = struct.unpack("<4s26s", header)
    assert sig == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def flip_byte(zip_path: Path, member: str, *, where: float = 0.5) -> None:
    """Flip one byte inside ``member``'s compressed data: a bad CRC (or inflate error)."""
    start, length = member_data_offset(zip_path, member)
    pos = start + min(length - 1, int(length * where))
    with open(zip_path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0xFF]))


def add_entry(
    zip_path: Path,
    name: str,
    data: bytes = b"x",
    *,
    mode: int | None = None,
    compress: int = zipfile.ZIP_STORED,
) -> None:
    """Append an entry with any name (``../evil.jpg``, ``/etc/x``) and Unix mode bits."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = compress
    info.create_system = 3
    info.external_attr = ((mode if mode is not None else 0o100644) & 0xFFFF) << 16
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr(info, data)


def add_symlink(zip_path: Path, name: str, target: str) -> None:
    add_entry(zip_path, name, target.encode(), mode=stat.S_IFLNK | 0o777)


def add_zip_bomb(zip_path: Path, name: str, size: int = 64 * 1024 * 1024) -> None:
    """A highly compressible member (zeros: ~1000:1 with deflate)."""
    add_entry(zip_path, name, b"\x00" * size, compress=zipfile.ZIP_DEFLATED)


def truncate(path: Path, keep: int | None = None, *, drop: int | None = None) -> None:
    size = path.stat().st_size
    new = keep if keep is not None else size - (drop or size // 2)
    os.truncate(path, new)


def files_under(root: Path) -> dict[str, bytes]:
    """Relative path -> content for every regular file (to compare extraction results)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out
