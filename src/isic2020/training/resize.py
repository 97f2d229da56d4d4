"""The image work of ``isic2020 resize``: decode small, filter to the exact size, encode.

Per image (:func:`resize_image`):

1. **Decode small**: Pillow's ``Image.draft`` makes libjpeg(-turbo) scale the IDCT by 1/2,
   1/4 or 1/8, the largest factor that still leaves the image at least 1.3 times the target
   (:data:`DRAFT_MARGIN`). A 6000 x 4000 photo is decoded straight to 1500 x 1000 for a 512
   crop: a sixteenth of the pixels are ever made, and scaling in the DCT domain drops the
   high frequencies (a low-pass), not a nearest-pixel shortcut.
2. **Orient**: EXIF orientation is applied (as vipsthumbnail and ImageMagick's ``-auto-orient``
   do), so outputs are upright and carry no EXIF.
3. **Filter**: Lanczos (``Image.resize`` with a ``box``: the centre square for ``crop``, the
   whole image for ``fit``/``squash``) to the exact size in one pass.
4. **Encode**: baseline JPEG at the recipe's quality, 4:2:0, the source's ICC profile kept.

The result is within 35 dB PSNR of a full-size decode + Lanczos (tests/test_resize.py) at a
fraction of its cost. Everything here is a pure function of the source bytes and the recipe,
so equal recipes give byte-identical files.

:func:`run_batch` is what a worker process runs: it never raises for one image's trouble but
returns a :class:`Result` per task (``damaged`` source, ``disk`` error), so the parent decides.
Outputs are written with :func:`isic2020.store.fsutil.atomic_write` (a temporary in the same
folder, renamed): nothing half-written is ever at a final name. ``durable=False`` per image;
the parent flushes the filesystem once before the recipe that lists them is written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import signal
from dataclasses import dataclass
from typing import Any

from isic2020.store.fsutil import atomic_write
from isic2020.store.recipe import Output, ResizedFormat
from isic2020.training.recipe import Recipe

#: errno values that mean "the disk", not "this image": the run stops (exit 3).
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.EIO}
_ORIENTATION = 0x0112
#: The DCT scaling stops where the filter still has at least 1.3x the output to work from:
#: scaled IDCTs alias a little, and a last Lanczos step of ratio >= 1.3 removes that, while a
#: ratio near 1 (a 1053 px short side decoded at 1/2 for a 512 crop) cannot; a margin of 2 (as
#: libvips' shrink-on-load) decodes 6000 x 4000 photos at 1/2 instead of 1/4 for no visible
#: gain (tests/test_resize.py holds every mode and size to >= 35 dB of the reference).
DRAFT_MARGIN = 1.3


class DamagedSource(Exception):
    """The source image does not decode (truncated, corrupt, not a JPEG)."""


@dataclass(frozen=True)
class Task:
    """Resize ``src`` to ``dst``; ``adopt``: ``dst`` exists but is not in the recipe (a killed
    run wrote it): keep it if it decodes at the expected size, else make it again."""

    key: str
    src: str
    dst: str
    adopt: bool = False


@dataclass(frozen=True)
class Result:
    """``status``: resized, adopted, damaged (the source), disk (writing failed)."""

    key: str
    status: str
    output: Output | None = None
    message: str = ""


def crop_box(width: int, height: int, fmt: ResizedFormat) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` image that becomes the output."""
    if fmt.mode != "crop":
        return 0.0, 0.0, float(width), float(height)
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def draft_request(width: int, height: int, fmt: ResizedFormat) -> tuple[int, int]:
    """The smallest decode size that leaves the filter at least :data:`DRAFT_MARGIN` times
    the output to work from (or the full size, if smaller).

    Symmetric in width and height, so it holds before or after an EXIF rotation."""
    m = DRAFT_MARGIN
    if fmt.mode == "crop":
        scale = m * fmt.size / min(width, height)
    elif fmt.mode == "squash":
        side = math.ceil(m * fmt.size)
        return min(width, side), min(height, side)
    else:
        scale = m * fmt.size / max(width, height)
    scale = min(scale, 1.0)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def resize_image(data: bytes, recipe: Recipe) -> bytes:
    """The resized JPEG made from the JPEG ``data`` (see the module doc for the steps)."""
    from PIL import Image, ImageOps

    fmt = recipe.fmt
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise DamagedSource(f"not a JPEG ({im.format})")
            icc = im.info.get("icc_profile")
            full = upright_size(im)
            im.draft("RGB", draft_request(*im.size, fmt))
            im.load()
            # exif_transpose copies even an upright image: only call it when there is work.
            turned = im.getexif().get(_ORIENTATION, 1) not in (0, 1)
            img = ImageOps.exif_transpose(im) if turned else im
        if img.mode != "RGB":
            img = img.convert("RGB")
        # The geometry comes from the full size (the decoded size is rounded up per axis).
        sx, sy = img.size[0] / full[0], img.size[1] / full[1]
        left, top, right, bottom = crop_box(*full, fmt)
        box = (left * sx, top * sy, right * sx, bottom * sy)
        out = img.resize(fmt.out_size(*full), Image.Resampling.LANCZOS, box=box)
    except DamagedSource:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DamagedSource(f"does not decode: {exc}") from None
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=recipe.quality, subsampling=recipe.subsampling,
             icc_profile=icc)
    return buf.getvalue()


def check_output(data: bytes, expected: tuple[int, int]) -> bool:
    """``data`` is a whole JPEG of ``expected`` size (full decode: a file a killed run or a
    power cut left behind is only kept if every byte of it is good)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.size != expected:
                return False
            im.load()
    except Exception:  # noqa: BLE001 - any failure means "make it again"
        return False
    return True


def upright_size(im: Any) -> tuple[int, int]:
    """An opened image's size once its EXIF orientation is applied."""
    w, h = im.size
    return (h, w) if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def source_out_size(data: bytes, fmt: ResizedFormat) -> tuple[int, int]:
    """The output size for the source ``data`` (its header only)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return fmt.out_size(*upright_size(im))
    except Exception as exc:  # noqa: BLE001
        raise DamagedSource(f"does not decode: {exc}") from None


def run_task(task: Task, recipe: Recipe) -> Result:
    """One image: adopt what a killed run left, or resize and write atomically."""
    try:
        st = os.stat(task.src)
        with open(task.src, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return Result(task.key, "damaged", message=f"cannot read the source: {exc.strerror}")
    if task.adopt:
        try:
            with open(task.dst, "rb") as fh:
                have = fh.read()
            if check_output(have, source_out_size(data, recipe.fmt)):
                return Result(task.key, "adopted", _output(have, st))
        except (OSError, DamagedSource):
            pass  # resized again below, which reports a damaged source properly
    try:
        out = resize_image(data, recipe)
    except DamagedSource as exc:
        return Result(task.key, "damaged", message=str(exc))
    try:
        atomic_write(task.dst, out, durable=False)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            return Result(task.key, "disk", message=f"cannot write {task.dst}: {exc.strerror}")
        raise
    return Result(task.key, "resized", _output(out, st))


def _output(data: bytes, src: os.stat_result) -> Output:
    return Output(len(data), hashlib.sha256(data).hexdigest(), src.st_size, src.st_mtime_ns)


def run_batch(tasks: list[Task], recipe: Recipe) -> list[Result]:
    """A worker's unit of work; stops at the first disk error (the rest would fail alike)."""
    out: list[Result] = []
    for t in tasks:
        r = run_task(t, recipe)
        out.append(r)
        if r.status == "disk":
            break
    return out


def worker_init() -> None:
    """In each worker: Ctrl-C and SIGTERM are the parent's to handle (it stops the pool and
    records what finished); a worker only finishes its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
