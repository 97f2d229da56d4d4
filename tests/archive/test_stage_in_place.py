"""Staged members written straight under their name (``decode.write_data``, ``in_place``).

What the staging depends on when it saves a temporary and a rename per member: the file at a
member's name is always made anew (a link or a hard link planted there is replaced, never
written through: its target keeps its bytes); a failed write (disk full, file too large)
leaves no file at all; a damaged member leaves nothing; and what a killed run left (a short
file) is replaced by the whole member.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from isic2020.archive.decode import Damaged, extract_member, write_data
from isic2020.archive.zipformat import read_directory
from isic2020.errors import DiskError

BODY = bytes(range(256)) * 40  # 10,240 bytes


def _dir(d: Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    return os.open(d, os.O_RDONLY | os.O_DIRECTORY)


def test_a_hard_link_planted_at_the_name_is_replaced_and_its_target_keeps_its_bytes(tmp_path):
    victim = tmp_path / "outside" / "victim.jpg"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    stage = tmp_path / "images"
    fd = _dir(stage)
    try:
        os.link(victim, stage / "ISIC_1.jpg")
        write_data(str(stage), "ISIC_1.jpg", 0o644, BODY, fd, in_place=True)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"precious"
    assert (stage / "ISIC_1.jpg").read_bytes() == BODY
    assert (stage / "ISIC_1.jpg").stat().st_ino != victim.stat().st_ino


def test_a_symbolic_link_or_a_short_file_at_the_name_is_replaced(tmp_path):
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"precious")
    stage = tmp_path / "images"
    fd = _dir(stage)
    try:
        (stage / "ISIC_1.jpg").symlink_to(victim)
        (stage / "ISIC_2.jpg").write_bytes(BODY[:100])  # a write killed midway
        write_data(str(stage), "ISIC_1.jpg", 0o644, BODY, fd, in_place=True)
        write_data(str(stage), "ISIC_2.jpg", 0o644, BODY, fd, in_place=True)
    finally:
        os.close(fd)
    assert victim.read_bytes() == b"precious"
    for n in ("ISIC_1.jpg", "ISIC_2.jpg"):
        assert not (stage / n).is_symlink() and (stage / n).read_bytes() == BODY


FULL_DISK = """
import os, resource, signal, sys
from isic2020.archive.decode import write_data
from isic2020.errors import DiskError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
try:
    write_data(sys.argv[1], "ISIC_1.jpg", 0o644, bytes(10240), fd, in_place=True)
except DiskError as exc:
    print(exc.message)
    sys.exit(3)
"""


def test_a_write_that_fails_midway_leaves_no_file(tmp_path):
    """RLIMIT_FSIZE lets the first 4 KiB land, then EFBIG: the short file must go."""
    stage = tmp_path / "images"
    stage.mkdir()
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(stage)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 3, r.stdout + r.stderr
    # disk_error's one line, naming the member's own name (there is no temporary)
    assert r.stdout.strip() == ("file too large (the file size limit or the filesystem's) "
                                f"while writing {stage}/ISIC_1.jpg"), r.stdout
    assert list(stage.iterdir()) == []


def test_what_cannot_be_replaced_is_one_disk_error_naming_the_file(tmp_path):
    """A folder at the name (unlink refuses it) is a DiskError naming ``images/ISIC_1.jpg``;
    the folder and what it holds are left alone, and no other file appears."""
    stage = tmp_path / "images"
    fd = _dir(stage)
    (stage / "ISIC_1.jpg").mkdir()
    (stage / "ISIC_1.jpg" / "keep").write_bytes(b"precious")
    try:
        with pytest.raises(DiskError) as exc:
            write_data(str(stage), "ISIC_1.jpg", 0o644, BODY, fd, in_place=True)
    finally:
        os.close(fd)
    assert exc.value.message.startswith(f"cannot write {stage}/ISIC_1.jpg: "), exc.value.message
    assert "\n" not in exc.value.message
    assert sorted(p.name for p in stage.iterdir()) == ["ISIC_1.jpg"]
    assert (stage / "ISIC_1.jpg" / "keep").read_bytes() == b"precious"


def test_a_damaged_member_written_in_place_leaves_nothing(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ISIC_1.jpg", BODY)
    raw = bytearray(z.read_bytes())
    with z.open("rb") as fh:
        _, (entry,) = read_directory(lambda at, n: os.pread(fh.fileno(), n, at), len(raw))
    raw[entry.header_offset + 30 + len("ISIC_1.jpg") + 5] ^= 0xFF  # inside the deflate data
    stage = tmp_path / "images"
    fd = _dir(stage)
    try:
        with pytest.raises((Damaged, DiskError)):
            extract_member(lambda at, n: bytes(raw[at:at + n]), entry, str(stage),
                           "ISIC_1.jpg", 0o644, dir_fd=fd, in_place=True)
        assert list(stage.iterdir()) == []
        good = bytes(z.read_bytes())
        extract_member(lambda at, n: good[at:at + n], entry, str(stage), "ISIC_1.jpg",
                       0o644, dir_fd=fd, in_place=True)
    finally:
        os.close(fd)
    assert (stage / "ISIC_1.jpg").read_bytes() == BODY
    assert zlib.crc32(BODY) == entry.crc
