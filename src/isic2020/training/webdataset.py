"""WebDataset tar shards, byte for byte the same for the same input.

Each sample is three members, in name order (as ``tar --sort=name`` would write them):
``KEY.cls`` (the target as ASCII ``0``/``1``, train only), ``KEY.jpg`` (the image bytes as
verified, never re-encoded) and ``KEY.json`` (the metadata row, compact JSON, Kaggle's column
order). Headers are POSIX ustar with everything that could vary fixed: mtime 0, uid/gid 0,
empty user and group names, mode 0644. The archive ends with the two zero blocks the format
asks for and no further padding, so a shard's size is known before it is written (a header,
the data rounded up to 512 bytes, per member); the plan uses that to cut shards.

The tar is written by hand (headers equal to :class:`tarfile.TarInfo`'s), and each image goes
through reused buffers to the file and the digest (:class:`~isic2020.training.shards.
HashingWriter`): no new memory per image, and the bytes stay in the CPU's cache.
"""

from __future__ import annotations

import json
import tarfile

from isic2020.training.samples import Sample, stream_image
from isic2020.training.shards import HashingWriter

BLOCK = 512
_ZEROS = bytes(BLOCK * 2)


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def reference_header(name: str, size: int) -> bytes:
    """The header as :mod:`tarfile` writes it (what :func:`header` must equal; slow)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _template() -> bytearray:
    h = bytearray(reference_header("x", 0))
    h[0:100] = bytes(100)
    h[124:136] = bytes(12)
    h[148:156] = b" " * 8
    return h


_TEMPLATE = _template()
_TEMPLATE_SUM = sum(_TEMPLATE)


def header(name: str, size: int) -> bytes:
    """A ustar header with the fixed fields (tarfile's bytes, ten times faster: only the
    name, the size and the checksum change)."""
    raw = name.encode("ascii")
    if len(raw) > 100 or size >= 8**11:
        return reference_header(name, size)
    h = _TEMPLATE.copy()
    h[0 : len(raw)] = raw
    octal = b"%011o\0" % size
    h[124:136] = octal
    h[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(octal))
    return bytes(h)


def meta_json(sample: Sample) -> bytes:
    return json.dumps(sample.meta, separators=(",", ":"), ensure_ascii=True).encode()


def _members(sample: Sample, image: bytes | int, meta: bytes) -> list[tuple[str, bytes | int]]:
    """``(name, bytes or size)`` of one sample's members, in name order."""
    out: list[tuple[str, bytes | int]] = []
    if sample.target is not None:
        out.append((f"{sample.key}.cls", str(sample.target).encode()))
    out.append((f"{sample.key}.jpg", image))
    out.append((f"{sample.key}.json", meta))
    return out


class WebDatasetFormat:
    """Tar shards for ``webdataset.WebDataset`` (and plain ``tar``)."""

    ext = "tar"
    recipe = "webdataset/ustar-1"

    def __init__(self) -> None:
        self._json: dict[str, bytes] = {}  # key -> metadata JSON, made once per sample

    def _meta(self, sample: Sample) -> bytes:
        data = self._json.get(sample.key)
        if data is None:
            data = self._json[sample.key] = meta_json(sample)
        return data

    def cost(self, sample: Sample) -> int:
        members = _members(sample, sample.size, self._meta(sample))
        return sum(BLOCK + _padded(b if isinstance(b, int) else len(b)) for _, b in members)

    def write(self, out: HashingWriter, samples: list[Sample]) -> None:
        for s in samples:
            for name, body in _members(s, s.size, self._json.pop(s.key, None) or meta_json(s)):
                if isinstance(body, bytes):  # .cls, .json: header, body, padding at once
                    out.write(header(name, len(body)) + body + _ZEROS[: _padded(len(body))
                                                                      - len(body)])
                    continue
                out.write(header(name, body))
                stream_image(s, out)
                if _padded(body) - body:
                    out.write(_ZEROS[: _padded(body) - body])
        out.write(_ZEROS)
