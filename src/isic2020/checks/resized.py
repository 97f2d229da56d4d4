"""``isic2020 verify --format jpeg-512``: a resized folder against the metadata and its recipe.

Checks, per split (each a :class:`Finding`, which ``checks.verify`` turns into its ``Check``):

* **recipe**: ``recipe.json`` exists, parses, and names the folder's size and mode (a folder
  renamed by hand, or a recipe copied from another, would otherwise pass);
* **names**: the images are exactly the expected ones: the metadata's, or the recorded
  selection's for a subset fetch; missing and extra names are listed. A subset of sources
  gives a subset here, and that is what is expected;
* **recipe outputs**: every image is listed in the recipe with its size and sha256, and has
  them (hashed every time, also without ``--deep``: the recipe is the only proof of the
  bytes, and resized images are small enough that hashing them all is cheap);
* **decode**: every image decodes at the size the recipe implies (crop and squash N x N, fit
  N on the long side): a reduced-size decode (``draft``: every entropy-coded byte is still
  read, so truncation and corruption are found) in threads; ``--deep`` decodes in full.

This module imports nothing of ``checks.verify`` (which calls it): the two stay acyclic.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.errors import Isic2020Error
from isic2020.report import plural
from isic2020.store.recipe import RecipeFile, ResizedFormat, load_recipe

WORKERS = 2
NAME_RE = re.compile(r"^(ISIC_[0-9]{7})\.jpg$")


@dataclass
class Finding:
    """One checked property: the fields of ``checks.verify.Check``."""

    name: str
    status: str
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def is_resized_format(fmt: str) -> bool:
    return ResizedFormat.parse(fmt) is not None


def check_resized(
    root: Path, fmt: str, split: str, expected: set[str] | None, deep: bool
) -> list[Finding]:
    """The findings for ``root/fmt/split`` (``expected``: image names, None if unknown)."""
    rfmt = ResizedFormat.parse(fmt)
    if rfmt is None:
        raise ValueError(fmt)
    folder = root / fmt
    prefix = f"images/{fmt}/{split}"
    out: list[Finding] = []
    try:
        rf = load_recipe(folder)
    except Isic2020Error as exc:
        return [Finding(f"{prefix}/recipe", "failed", exc.one_line())]
    rec_problem = _recipe_problem(rf, rfmt, folder)
    out.append(Finding(f"{prefix}/recipe", "failed" if rec_problem else "ok",
                       rec_problem or _describe(rf)))
    present, other = _scan(folder / split)
    if expected is not None:
        out.append(_names(prefix, folder / split, present, other, expected, fmt, split))
    if not present or rf is None:
        return out
    files = [folder / split / f"{n}.jpg" for n in sorted(present)]
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="isic2020-verify-resized") as pool:
        results = list(pool.map(lambda p: _check_file(p, split, rf, rfmt, deep), files,
                                chunksize=64))
    recorded = [m for r in results for m in r[0]]
    undecodable = [m for r in results for m in r[1]]
    n = len(files)
    out.append(Finding(
        f"{prefix}/recipe outputs", "failed" if recorded else "ok",
        f"{len(recorded)} of {n:,} differ from the recipe" if recorded
        else f"{plural(n, 'image')} {'has' if n == 1 else 'have'} the size and SHA-256 the "
        "recipe records",
        {"checked": n, "differ": len(recorded)}, recorded,
    ))
    out.append(Finding(
        f"{prefix}/decode", "failed" if undecodable else "ok",
        f"{len(undecodable)} of {n:,} do not decode at the recipe's size" if undecodable
        else f"{n:,} JPEGs decode at the recipe's size",
        {"checked": n, "failed": len(undecodable), "full_decode": deep}, undecodable,
    ))
    return out


def _recipe_problem(rf: RecipeFile | None, rfmt: ResizedFormat, folder: Path) -> str | None:
    if rf is None:
        return (f"{folder / 'recipe.json'} is missing: how these images were made is unknown; "
                f"run `isic2020 resize --size {rfmt.size} --mode {rfmt.mode}`")
    size, mode = rf.recipe.get("size"), rf.recipe.get("mode")
    if (size, mode) != (rfmt.size, rfmt.mode):
        return (f"the recipe says size {size}, mode {mode}: not what the folder name "
                f"{rfmt.name} says")
    return None


def _describe(rf: RecipeFile | None) -> str:
    r = rf.recipe if rf else {}
    libs = ", ".join(f"{k} {v}" for k, v in (r.get("libraries") or {}).items())
    return (f"{r.get('size')} px {r.get('mode')}, quality {r.get('quality')}, "
            f"{r.get('filter')} ({libs}); {len(rf.outputs) if rf else 0:,} outputs recorded")


def _scan(folder: Path) -> tuple[set[str], list[str]]:
    present: set[str] = set()
    other: list[str] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                m = NAME_RE.match(e.name)
                if m and e.is_file():
                    present.add(m.group(1))
                else:
                    other.append(e.name)
    except FileNotFoundError:
        pass
    return present, sorted(other)


def _names(prefix: str, folder: Path, present: set[str], other: list[str],
           expected: set[str], fmt: str, split: str) -> Finding:
    missing = sorted(expected - present)
    extra = [f"{n}.jpg" for n in sorted(present - expected)] + other
    problems = [f"missing {n}.jpg" for n in missing] + [f"extra {n}" for n in extra]
    figures = {"expected": len(expected), "present": len(present), "missing": len(missing),
               "extra": len(extra), "missing_names": missing, "extra_names": extra}
    if not folder.is_dir():
        msg = (f"{folder} does not exist ({plural(len(expected), 'image')} expected); run "
               f"`isic2020 resize` for {fmt} --split {split}")
    elif problems:
        msg = (f"{len(present):,} of {plural(len(expected), 'image')}; {len(missing)} missing, "
               f"{len(extra)} extra (`isic2020 resize` makes the missing ones)")
    else:
        msg = (f"all {plural(len(expected), 'image')} present, nothing extra" if len(expected) != 1
               else "the 1 image present, nothing extra")
    return Finding(f"{prefix}/names", "failed" if problems else "ok", msg, figures, problems)


def _check_file(path: Path, split: str, rf: RecipeFile, rfmt: ResizedFormat,
                deep: bool) -> tuple[list[str], list[str]]:
    """(recipe problems, decode problems) of one image."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [f"{path.name}: cannot read: {exc.strerror}"], []
    rec = rf.outputs.get(f"{split}/{path.name}")
    recorded: list[str] = []
    if rec is None:
        recorded.append(f"{path.name}: not in the recipe (not made by `isic2020 resize`)")
    elif rec.size != len(data):
        recorded.append(f"{path.name}: {len(data)} bytes, the recipe says {rec.size}")
    elif hashlib.sha256(data).hexdigest() != rec.sha256:
        recorded.append(f"{path.name}: SHA-256 differs from the recipe: the file is damaged")
    problem = _decode_problem(data, rfmt, deep)
    return recorded, [f"{path.name}: {problem}"] if problem else []


def _decode_problem(data: bytes, rfmt: ResizedFormat, deep: bool) -> str | None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            square = rfmt.mode != "fit"
            ok = (w, h) == (rfmt.size, rfmt.size) if square else max(w, h) == rfmt.size
            if not ok:
                return f"{w} x {h}, not the recipe's {rfmt.mode} {rfmt.size}"
            if not deep:
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
        return f"does not decode: {exc}"
    return None
