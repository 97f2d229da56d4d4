"""A resized image folder: its name and its recorded recipe (``DATA/jpeg-N[-MODE]/recipe.json``).

Layout::

    DATA/jpeg-512/{train,test}/ISIC_xxxxxxx.jpg       the default mode (crop)
    DATA/jpeg-512-fit/{train,test}/...                any other mode names itself
    DATA/jpeg-512/recipe.json                         how they were made, and what they are

The recipe file says how every image in the folder was made (size, mode, quality, filter,
the decoder/encoder library versions) and what each output is (size, sha256, and the size and
mtime of the source it was made from). It is what makes the folder reproducible (a model's
file-size features depend on the encoder) and checkable (``isic2020 verify --format
jpeg-512``). It is written atomically (:func:`isic2020.store.fsutil.atomic_write`, durable),
so a reader sees a whole recipe or the previous one.

This module only names and stores; the image work and the current recipe live in
``isic2020.training``. It sits in ``store`` because both ``training`` (which writes) and
``checks`` (which verifies) read it, and those two may not import each other.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.errors import DiskError, UsageError
from isic2020.store.fsutil import atomic_write

RESIZE_MODES = ("crop", "fit", "squash")
#: Crop keeps the lesion's shape (asymmetry and border are diagnostic: squash distorts them)
#: and gives the square input CNNs train on (fit needs padding or ragged batches).
DEFAULT_MODE = "crop"
MIN_SIZE = 16
MAX_SIZE = 4096
RECIPE_NAME = "recipe.json"
RECIPE_SCHEMA = 1
SOURCE_FORMAT = "jpeg"

_NAME = re.compile(r"^jpeg-([0-9]{1,5})(?:-(crop|fit|squash))?$")


@dataclass(frozen=True)
class ResizedFormat:
    """``jpeg-512`` (default mode) or ``jpeg-512-fit``: size and mode of a resized folder."""

    size: int
    mode: str = DEFAULT_MODE

    @property
    def name(self) -> str:
        return f"jpeg-{self.size}" + ("" if self.mode == DEFAULT_MODE else f"-{self.mode}")

    @classmethod
    def parse(cls, name: str) -> ResizedFormat | None:
        """The resized format ``name`` denotes, or None if it is no such name.

        The default mode is never spelled out (``jpeg-512-crop`` is not a folder name), so
        each recipe has one folder.
        """
        m = _NAME.match(name)
        if m is None or m.group(2) == DEFAULT_MODE:
            return None
        size = int(m.group(1))
        if not MIN_SIZE <= size <= MAX_SIZE:
            return None
        return cls(size, m.group(2) or DEFAULT_MODE)

    def out_size(self, width: int, height: int) -> tuple[int, int]:
        """Width and height of the output made from a ``width`` x ``height`` image."""
        if self.mode != "fit":
            return self.size, self.size
        if width >= height:
            return self.size, max(1, round(height * self.size / width))
        return max(1, round(width * self.size / height)), self.size


def check_size_mode(size: int, mode: str) -> ResizedFormat:
    """The format for ``size`` and ``mode``, or a :class:`UsageError` (exit 2) saying why not."""
    if mode not in RESIZE_MODES:
        raise UsageError(f"unknown resize mode {mode!r}", f"use one of {', '.join(RESIZE_MODES)}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(
            f"unsupported size {size!r}", f"use a whole number of pixels from {MIN_SIZE} to "
            f"{MAX_SIZE}"
        )
    return ResizedFormat(size, mode)


@dataclass(frozen=True)
class Output:
    """One resized image as written: its bytes (size, sha256) and its source's stat."""

    size: int
    sha256: str
    source_size: int
    source_mtime_ns: int


@dataclass
class RecipeFile:
    """The content of ``recipe.json``: the recipe and every output, by ``split/name.jpg``."""

    recipe: dict[str, Any]
    outputs: dict[str, Output] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "tool": "isic2020",
            "schema": RECIPE_SCHEMA,
            "recipe": self.recipe,
            "outputs": {k: asdict(v) for k, v in sorted(self.outputs.items())},
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def recipe_path(folder: Path) -> Path:
    return folder / RECIPE_NAME


def load_recipe(folder: Path) -> RecipeFile | None:
    """The recipe recorded in ``folder``, None when there is none; a damaged one is refused
    (:class:`UsageError`): guessing what made the images would defeat the record."""
    path = recipe_path(folder)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DiskError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
        if doc.get("schema") != RECIPE_SCHEMA:
            raise ValueError(f"schema {doc.get('schema')!r}")
        outputs = {k: Output(**v) for k, v in doc["outputs"].items()}
        return RecipeFile(dict(doc["recipe"]), outputs)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{path} is not a recipe isic2020 can read ({exc})",
            f"delete {folder} and run `isic2020 resize` again to rebuild it",
        ) from None


def save_recipe(folder: Path, rf: RecipeFile) -> None:
    """Write ``recipe.json`` atomically and durably (a disk error is :class:`DiskError`)."""
    path = recipe_path(folder)
    try:
        atomic_write(path, rf.to_json())
    except OSError as exc:
        raise DiskError(
            f"cannot write {path}: {exc.strerror or exc}",
            "free some space (or fix the permissions) and run the same command again",
        ) from None
