"""WebDataset tar shards, byte for byte the same for the same input.

Each sample is three members, in name order (as ``tar --sort=name`` would write them):
``KEY.cls`` (the target as ASCII ``0``/``1``, train only), ``KEY.jpg`` (the image bytes as
verified, never re-encoded) and ``KEY.json`` (the metadata row, compact JSON, Kaggle's column
order). Headers are POSIX ustar with everything that could vary fixed: mtime 0, uid/gid 0,
empty user and group names, mode 0644. The archive ends with the two zero blocks the format
asks for and no further padding, so a shard's size is known before it is written (a header,
the data rounded up to 512 bytes, per member); the plan uses that to cut shards.

The tar is written by hand (headers from :class:`tarfile.TarInfo`), so the image bytes go from
one read straight to the file and the digest, with no extra copy.
"""

from __future__ import annotations

import json
import tarfile

from isic2020.training.samples import Sample, read_image
from isic2020.training.shards import HashingWriter

BLOCK = 512
_ZEROS = bytes(BLOCK * 2)


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def meta_json(sample: Sample) -> bytes:
    return json.dumps(sample.meta, separators=(",", ":"), ensure_ascii=True).encode()


def _members(sample: Sample, image_size: int) -> list[tuple[str, int]]:
    out = []
    if sample.target is not None:
        out.append((f"{sample.key}.cls", len(str(sample.target))))
    out.append((f"{sample.key}.jpg", image_size))
    out.append((f"{sample.key}.json", len(meta_json(sample))))
    return out


class WebDatasetFormat:
    """Tar shards for ``webdataset.WebDataset`` (and plain ``tar``)."""

    ext = "tar"
    recipe = "webdataset/ustar-1"

    def cost(self, sample: Sample) -> int:
        return sum(BLOCK + _padded(n) for _, n in _members(sample, sample.size))

    def write(self, out: HashingWriter, samples: list[Sample]) -> None:
        for s in samples:
            data = {
                ".cls": str(s.target).encode() if s.target is not None else b"",
                ".jpg": read_image(s),
                ".json": meta_json(s),
            }
            for name, size in _members(s, len(data[".jpg"])):
                body = data[name[len(s.key):]]
                out.write(header(name, size))
                out.write(body)
                pad = _padded(size) - size
                if pad:
                    out.write(_ZEROS[:pad])
        out.write(_ZEROS)
