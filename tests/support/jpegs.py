"""Real (tiny) JPEGs for the training-output tests: the synthetic builder's images are stand-in
bytes, and the shard writers refuse anything that is not a whole JPEG."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    rnd = random.Random(seed)
    im = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    for _ in range(20):
        im.putpixel((rnd.randrange(size[0]), rnd.randrange(size[1])), (255, 0, rnd.randrange(256)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def write_jpegs(root: Path, names_by_split: dict[str, list[str]], fmt: str = "jpeg",
                size: tuple[int, int] = (24, 16)) -> dict[str, bytes]:
    """``DATA/<fmt>/<split>/<name>.jpg`` for every name; returns name -> bytes."""
    out: dict[str, bytes] = {}
    for split, names in names_by_split.items():
        d = root / fmt / split
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            data = jpeg_bytes(int(name[5:]), size)
            (d / f"{name}.jpg").write_bytes(data)
            out[name] = data
    return out
