"""``plan_entries`` judges the usual entry (``train/ISIC_0000000.jpg``) with one match instead
of the rules one by one. What a user depends on: that shortcut never lets through, renames or
drops what the rules say entry by entry (:func:`unsafe_reason`, the bomb limits,
:func:`image_file_name`): the verdicts are compared here over names built around the usual one,
with every way of being almost it (case, digits, folders named like devices, ``..``, links,
devices, sizes).
"""

from __future__ import annotations

import itertools
import stat

import pytest

from isic2020.archive.rules import (
    MAX_MEMBER_BYTES,
    MAX_RATIO,
    RATIO_FLOOR,
    Refused,
    image_file_name,
    plan_entries,
)
from isic2020.archive.zipformat import Entry
from isic2020.catalog.manifest import EXTENSIONS

FOLDERS = ["", "train/", "a/b.c/", "a-b/_x/", "CON/", "x/com1.txt/", "Nul/", "../", "/abs/",
           "C:/", ".hidden/", "a/./", "tr ain/", "tr\u0430in/", "a\\", "a//", "-a/", "lpt9.d/"]
BASES = ["ISIC_0000001.jpg", "ISIC_0000001.dcm", "isic_0000001.jpg", "iSIC_0000001.jpg",
         "IsIC_0000001.jpg", "ISIC_0000001.JPG", "ISIC_0000001.jPg",
         "ISIC_0000001.Dcm", "ISIC_000001.jpg", "ISIC_00000011.jpg", "ISIC_000000\u0661.jpg",
         "ISIC_0000001.jpg/", "ISIC_0000001.jpg\x00", "ISIC_0000001.jpeg", "ISIC_0000001.jpgx",
         "xISIC_0000001.jpg", "ISIC-0000001.jpg", "ISIC_0000001.jpg.txt", "NUL.jpg", "x.txt"]
ATTRS = [(0, 0), (stat.S_IFREG | 0o644, 3), (stat.S_IFLNK | 0o777, 3),
         (stat.S_IFCHR | 0o644, 3), (stat.S_IFDIR | 0o755, 3), (stat.S_IFLNK | 0o777, 0)]
SIZES = [(100, 90), (MAX_MEMBER_BYTES + 1, MAX_MEMBER_BYTES), (RATIO_FLOOR + 1, 10)]


def _expected(e: Entry, fmt: str | None) -> tuple[str, object]:
    """The verdict of the rules applied one by one, in their documented order."""
    if e.is_dir:
        return ("refused", None) if e.unsafe_reason() else ("directory", None)
    if e.unsafe_reason():
        return "refused", None
    if e.file_size > MAX_MEMBER_BYTES or (
        e.file_size > RATIO_FLOOR and e.file_size > MAX_RATIO * max(e.compressed_size, 1)
    ):
        return "refused", None
    final = image_file_name(e.name, EXTENSIONS[fmt] if fmt else None)
    return ("image", final) if final else ("other", e.name)


def _planned(e: Entry, fmt: str | None) -> tuple[str, object]:
    try:
        plan = plan_entries([e], fmt, 1 << 40)
    except Refused:
        return "refused", None
    if plan.directories:
        return "directory", None
    if plan.members:
        (m,) = plan.members
        assert m.entry is e
        return "image", m.final
    (other,) = plan.non_images
    return "other", other


@pytest.mark.parametrize("fmt", ["jpeg", "dicom", None])
def test_the_usual_entry_gets_exactly_the_verdict_of_the_rules(fmt):
    checked = {"refused": 0, "image": 0, "other": 0, "directory": 0}
    for folder, base, (mode, system), (usize, csize) in itertools.product(
            FOLDERS, BASES, ATTRS, SIZES):
        e = Entry(folder + base, csize, usize, 0x1234, 0, 8, 0, mode << 16, system)
        want = _expected(e, fmt)
        assert _planned(e, fmt) == want, e
        checked[want[0]] += 1
    # The sample reaches every verdict, the usual image among them.
    assert all(checked.values()), checked


def test_duplicates_and_the_archive_total_hold_for_usual_names():
    a = Entry("train/ISIC_0000001.jpg", 90, 100, 1, 0, 8, 0, 0, 0)
    same = Entry("other/ISIC_0000001.jpg", 90, 100, 1, 200, 8, 0, 0, 0)
    changed = Entry("x/ISIC_0000001.jpg", 90, 100, 2, 400, 8, 0, 0, 0)
    plan = plan_entries([a, same], "jpeg", 1 << 20)
    assert [m.entry for m in plan.members] == [a] and plan.duplicates == [same.name]
    with pytest.raises(Refused, match="different contents"):
        plan_entries([a, changed], "jpeg", 1 << 20)
    big = [Entry(f"t/ISIC_{i:07d}.jpg", RATIO_FLOOR, RATIO_FLOOR, i, i, 0, 0, 0, 0)
           for i in range(MAX_RATIO + 1)]
    with pytest.raises(Refused, match="zip bomb"):
        plan_entries(big, "jpeg", RATIO_FLOOR)
