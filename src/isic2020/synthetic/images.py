"""Synthetic image files: tiny JPEGs and DICOMs, and photo-sized, photo-like JPEGs.

A handful of distinct images is encoded once and every file reuses those bytes with its name
embedded (a JPEG COM segment; the DICOM's UIDs and patient tags), so each file is distinct and
valid while full-size sets build in seconds. Photo-sized images (:data:`PHOTO_SIZES`, camera
sizes found in ISIC 2020) carry smooth shading, a blurred lesion, hair-like strokes and fine
grain: content on which a resizer's fidelity can be judged (a flat colour resizes perfectly
whatever the filter).
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Sequence

#: Camera sizes (width, height) found among the ISIC 2020 JPEGs, the last one portrait.
PHOTO_SIZES: tuple[tuple[int, int], ...] = (
    (6000, 4000), (4288, 2848), (3008, 2000), (1872, 1053), (1024, 768), (2848, 4288),
)


def base_jpegs(count: int, size: int, seed: int) -> list[bytes]:
    """A few distinct real JPEGs (gradients + a blob: they differ and decode)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        bg = tuple(rng.randrange(120, 256) for _ in range(3))
        fg = tuple(rng.randrange(0, 120) for _ in range(3))
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        r = rng.randrange(size // 4, size // 2 + 1)
        cx, cy = rng.randrange(r, size - r + 1), rng.randrange(r, size - r + 1)
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=fg)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def jpeg_bytes(base: bytes, name: str) -> bytes:
    """``base`` with a COM segment carrying ``name`` right after SOI: same picture, new bytes."""
    comment = name.encode("ascii")
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


def photo_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A photo-like JPEG of ``width`` x ``height``: skin-toned shading, a blurred dark lesion,
    a few hair strokes and Gaussian grain (detail at every scale, as in a dermoscopy photo).

    Drawn at 1/8 size and enlarged where only smooth content is needed, so a 6000 x 4000
    image takes well under two seconds, most of it the encoder.
    """
    from PIL import Image, ImageChops, ImageDraw, ImageFilter

    rng = random.Random(seed)
    small = Image.new("RGB", (6, 4))
    small.putdata([
        (rng.randrange(170, 235), rng.randrange(120, 180), rng.randrange(100, 160))
        for _ in range(24)
    ])
    img = small.resize((width, height), Image.Resampling.BICUBIC)
    sw, sh = max(8, width // 8), max(8, height // 8)
    mask = Image.new("L", (sw, sh), 0)
    r = rng.randrange(min(sw, sh) // 6, min(sw, sh) // 3 + 1)
    cx, cy = sw // 2 + rng.randrange(-r // 2, r // 2 + 1), sh // 2
    ImageDraw.Draw(mask).ellipse((cx - r, cy - int(r * 0.8), cx + r, cy + int(r * 0.8)), 255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1, r // 4)))
    lesion = Image.new("RGB", (width, height),
                       (rng.randrange(60, 110), rng.randrange(30, 60), rng.randrange(20, 45)))
    img = Image.composite(lesion, img, mask.resize((width, height), Image.Resampling.BILINEAR))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(-width // 4, width // 4), y0 + rng.randrange(-height // 4,
                                                                                 height // 4)
        draw.line((x0, y0, x1, y1), fill=(40, 28, 22), width=max(1, width // 1500))
    grain = Image.effect_noise((width, height), 6).convert("RGB")
    img = ImageChops.add(img, grain, 1.0, -128)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photo_jpegs(
    count: int, seed: int, sizes: Sequence[tuple[int, int]] = PHOTO_SIZES
) -> list[bytes]:
    """``count`` distinct photo-like JPEGs, cycling through ``sizes``."""
    return [
        photo_jpeg(*sizes[i % len(sizes)], seed=seed * 1000 + i)
        for i in range(count)
    ]


def pixels(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(size * size * 3))


def _el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element (value padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


_SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.77.1.4"  # VL Photographic Image Storage
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"
_UID_ROOT = "1.2.826.0.1.3680043.10.1020"  # a private-looking root for synthetic UIDs


def dicom_bytes(
    name: str,
    *,
    patient_id: str | None,
    sex: str | None,
    age: str | None,
    site: str | None,
    pixels: bytes,
    size: int,
    variant: str = "dicom",
) -> bytes:
    """A valid DICOM Part-10 file (VL Photographic Image, RGB, uncompressed).

    Hand-encoded rather than written through pydicom because it is ~50x faster, which the
    full-size benchmark sets need; tests read the result back with pydicom to prove it valid.
    ``variant`` ("dicom" or "dicom-original") only changes the implementation version name, so
    the two DICOM releases hold different bytes as they do in reality.
    """
    digits = name.split("_", 1)[1]
    sop_uid = f"{_UID_ROOT}.1.{int(digits)}".encode()
    study_uid = f"{_UID_ROOT}.2.{int(digits)}".encode()
    series_uid = f"{_UID_ROOT}.3.{int(digits)}".encode()
    version = b"ISIC2020_SYN_ORIG" if variant == "dicom-original" else b"ISIC2020_SYN_CORR"
    meta_body = b"".join(
        [
            _el(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _el(0x0002, 0x0002, b"UI", _SOP_CLASS),
            _el(0x0002, 0x0003, b"UI", sop_uid),
            _el(0x0002, 0x0010, b"UI", _EXPLICIT_LE),
            _el(0x0002, 0x0012, b"UI", f"{_UID_ROOT}.0".encode()),
            _el(0x0002, 0x0013, b"SH", version[:16]),
        ]
    )
    meta = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta_body)) + meta_body
    els = [
        _el(0x0008, 0x0016, b"UI", _SOP_CLASS),
        _el(0x0008, 0x0018, b"UI", sop_uid),
        _el(0x0008, 0x0060, b"CS", b"XC"),
        _el(0x0010, 0x0010, b"PN", name.encode()),
        _el(0x0010, 0x0020, b"LO", (patient_id or "").encode()),
    ]
    if sex:
        els.append(_el(0x0010, 0x0040, b"CS", {"male": b"M", "female": b"F"}.get(sex, b"O")))
    if age:
        els.append(_el(0x0010, 0x1010, b"AS", f"{int(float(age)):03d}Y".encode()))
    if site:
        els.append(_el(0x0018, 0x0015, b"CS", site.upper().encode()[:16]))
    els += [
        _el(0x0020, 0x000D, b"UI", study_uid),
        _el(0x0020, 0x000E, b"UI", series_uid),
        _el(0x0028, 0x0002, b"US", struct.pack("<H", 3)),
        _el(0x0028, 0x0004, b"CS", b"RGB"),
        _el(0x0028, 0x0006, b"US", struct.pack("<H", 0)),
        _el(0x0028, 0x0010, b"US", struct.pack("<H", size)),
        _el(0x0028, 0x0011, b"US", struct.pack("<H", size)),
        _el(0x0028, 0x0100, b"US", struct.pack("<H", 8)),
        _el(0x0028, 0x0101, b"US", struct.pack("<H", 8)),
        _el(0x0028, 0x0102, b"US", struct.pack("<H", 7)),
        _el(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        _el(0x7FE0, 0x0010, b"OB", pixels),
    ]
    return b"\x00" * 128 + b"DICM" + meta + b"".join(els)

