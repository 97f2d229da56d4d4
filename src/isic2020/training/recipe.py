"""The recipe of a resize run: everything that decides the output bytes, and only that.

Two runs with equal recipes make byte-identical files from the same sources, so a re-run can
trust what is on disk. Anything that changes the bytes is in it: size, mode, quality, the
resampling filter, how the decoder shrinks (DCT scaling), chroma subsampling, and the versions
of Pillow and libjpeg (a new encoder writes other bytes, so a model's file-size features would
move). Worker count, order and timing are not in it: they change nothing in the files.

A folder whose recorded recipe differs is refused, not rebuilt: it may be the set a model was
trained on, and the folder name (size and mode) cannot tell two qualities apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isic2020.errors import UsageError
from isic2020.store.recipe import SOURCE_FORMAT, ResizedFormat, check_size_mode

DEFAULT_QUALITY = 90
FILTER = "lanczos"
#: The decoder shrinks in the DCT domain by the largest power of two (1/2, 1/4, 1/8) that
#: leaves the image at least 1.3 times the target; the filter does the rest.
DRAFT = "libjpeg-dct-scale>=1.3x"
SUBSAMPLING = "4:2:0"


@dataclass(frozen=True)
class Recipe:
    """How one resized folder is made (see the module doc for why these fields)."""

    fmt: ResizedFormat
    quality: int = DEFAULT_QUALITY
    filter: str = FILTER
    draft: str = DRAFT
    subsampling: str = SUBSAMPLING

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.fmt.size,
            "mode": self.fmt.mode,
            "quality": self.quality,
            "filter": self.filter,
            "draft": self.draft,
            "subsampling": self.subsampling,
            "format": "jpeg",
            "source": SOURCE_FORMAT,
            "libraries": library_versions(),
        }


def make_recipe(size: int, mode: str, quality: int) -> Recipe:
    """The recipe for these options, or a :class:`UsageError` (exit 2) for a bad one."""
    fmt = check_size_mode(size, mode)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise UsageError(f"unsupported JPEG quality {quality!r}", "use 1 to 100 (default 90)")
    return Recipe(fmt, quality)


def library_versions() -> dict[str, str]:
    """Pillow's version and its libjpeg's (libjpeg-turbo or IJG)."""
    import PIL
    from PIL import features

    jpeg = features.version("jpg") or "unknown"
    turbo = features.check_feature("libjpeg_turbo")
    return {"pillow": PIL.__version__, "libjpeg": f"{'libjpeg-turbo ' if turbo else ''}{jpeg}"}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two recipe dicts, as ``key: recorded -> current`` (libraries by
    name), in a stable order."""
    out: list[str] = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if key == "libraries" and isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{lib} {a.get(lib)} -> {b.get(lib)}"
                for lib in sorted(set(a) | set(b))
                if a.get(lib) != b.get(lib)
            ]
        elif a != b:
            out.append(f"{key} {a} -> {b}")
    return out
