"""``isic2020 resize``: the verified JPEGs as a pre-resized training set, reproducibly.

    DATA/jpeg/{train,test}/ISIC_xxxxxxx.jpg  ->  DATA/jpeg-512/{train,test}/ISIC_xxxxxxx.jpg
                                                 DATA/jpeg-512/recipe.json

What a run does, under the data directory's lock (one writer at a time):

1. **Recipe first**: the folder's recorded recipe (``recipe.json``) must equal this run's
   (:mod:`isic2020.training.recipe`) or the run is refused with one line (exit 2). A new
   folder gets its recipe written *before* any image, so even a run killed at once has
   said how its images were made, and a later run with other options is refused, never mixed.
2. **Which images**: every ``ISIC_xxxxxxx.jpg`` in ``DATA/jpeg/<split>`` (a subset fetch
   resizes its subset). Leftover temporaries of a killed run are removed.
3. **What is done already**: an output listed in the recipe whose size matches, made from a
   source of the recorded size and mtime, is skipped without being opened; an output that is
   there but not listed (a killed run wrote it after the last recipe) is adopted if it decodes
   completely at the expected size, else made again. A re-run of a finished folder therefore
   stats the files and writes nothing.
4. **Work**: batches of images go to ``--workers`` processes (default: every core; Pillow
   decodes and encodes with the GIL released only in parts, so processes, not threads), at
   most two batches per worker in flight (memory stays flat: one decoded image per worker),
   the largest sources first (the run ends on quick ones, so no core idles at the end).
5. **Record**: the filesystem is flushed (``syncfs``), then the recipe with every output's
   size and sha256 is written atomically. On Ctrl-C, a full disk or a damaged source the
   same happens for what finished before the error is raised or reported.

Exit codes: 0; 1 some sources do not decode (the rest is done; they are listed); 2 bad
options, no images, or a folder made with another recipe; 3 disk full or unwritable.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import SPLIT_CHOICES, expand_split
from isic2020.errors import EXIT_OK, EXIT_VERIFY, DiskError, UsageError
from isic2020.report import plural, progress_bar, readable_repr
from isic2020.store.fsutil import remove_file
from isic2020.store.layout import Layout
from isic2020.store.libc import sync_folder
from isic2020.store.lock import data_dir_lock
from isic2020.store.recipe import RecipeFile, load_recipe, save_recipe
from isic2020.training.recipe import DEFAULT_QUALITY, Recipe, differences, make_recipe
from isic2020.training.resize import Result, Task, run_batch, worker_init

SOURCE_RE = re.compile(r"^ISIC_[0-9]{7}\.jpg$")
TEMP_RE = re.compile(r"^\.ISIC_[0-9]{7}\.jpg\.[0-9a-f]+\.tmp$")  # fsutil.atomic_file's temps
BATCH = 4  # images per worker task: hides the round trip (< 1 ms), keeps the tail and Ctrl-C short


@dataclass
class Damaged:
    """A source that does not decode (``name`` is what the CLI's failure line lists)."""

    name: str
    message: str


@readable_repr
@dataclass
class ResizeReport:
    data_dir: str
    folder: str
    recipe: dict[str, Any]
    images: int = 0
    resized: int = 0
    unchanged: int = 0
    adopted: int = 0
    damaged: list[Damaged] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    workers: int = 1
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_VERIFY if self.damaged else EXIT_OK

    def failed(self) -> list[Damaged]:
        return self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "folder": self.folder,
            "recipe": self.recipe,
            "images": self.images,
            "resized": self.resized,
            "unchanged": self.unchanged,
            "adopted": self.adopted,
            "damaged": [{"name": d.name, "message": d.message} for d in self.damaged],
            "splits": self.splits,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }

    def summary_lines(self) -> list[str]:
        r = self.recipe
        lines = [
            f"resize to {self.folder} ({r['size']} px, {r['mode']}, quality {r['quality']}): "
            f"{plural(self.images, 'image')} in {self.seconds:.1f} s with "
            f"{plural(self.workers, 'worker')}",
            f"  {self.resized:,} resized, {self.unchanged:,} already done"
            + (f", {self.adopted:,} kept from an interrupted run" if self.adopted else ""),
        ]
        lines += [f"  DAMAGED {d.name}: {d.message}" for d in self.damaged[:5]]
        if len(self.damaged) > 5:
            lines.append(f"  ... and {len(self.damaged) - 5} more damaged (see --json)")
        return lines


def resize(
    size: int,
    mode: str = "crop",
    quality: int = DEFAULT_QUALITY,
    split: str = "all",
    fmt: str = "jpeg",
    workers: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ResizeReport:
    """Resize the JPEGs on disk into ``DATA/jpeg-<size>[-<mode>]`` (see the module doc)."""
    start = time.monotonic()
    recipe = make_recipe(size, mode, quality)
    if fmt != "jpeg":
        raise UsageError(f"cannot resize format {fmt!r}", "use --format jpeg (the JPEGs)")
    if split not in SPLIT_CHOICES:
        raise UsageError(f"unknown split {split!r}", f"use one of {', '.join(SPLIT_CHOICES)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}", "use 1 or more")
    layout = Layout.at(data_dir)
    if not layout.root.is_dir():
        raise UsageError(f"no data directory at {layout.root}", "run `isic2020 fetch` first")
    folder = layout.root / recipe.fmt.name
    with data_dir_lock(layout.lock_path, on_wait=log):
        rf = _recorded(folder, recipe)
        tasks, report = _plan(layout, folder, recipe, rf or RecipeFile({}), expand_split(split))
        if rf is None:  # a new folder: its recipe is written before any image
            rf = RecipeFile(recipe.to_dict())
            save_recipe(folder, rf)
        report.workers = min(workers or os.cpu_count() or 1, max(1, len(tasks)))
        try:
            _execute(tasks, recipe, rf, report, progress)
        finally:
            if report.resized or report.adopted:
                _flush(folder)
                save_recipe(folder, rf)
    report.seconds = time.monotonic() - start
    return report


def _recorded(folder: Path, recipe: Recipe) -> RecipeFile | None:
    """The folder's recipe file (None for a new folder); refused if it is another recipe."""
    rf = load_recipe(folder)
    if rf is None:
        return None
    diff = differences(rf.recipe, recipe.to_dict())
    if diff:
        raise UsageError(
            f"{folder} was made with another recipe ({'; '.join(diff)})",
            f"keep it and resize with its recipe, or delete {folder} to rebuild it",
        )
    return rf


def _plan(
    layout: Layout, folder: Path, recipe: Recipe, rf: RecipeFile, splits: tuple[str, ...]
) -> tuple[list[Task], ResizeReport]:
    report = ResizeReport(str(layout.root), str(folder), recipe.to_dict())
    tasks: list[Task] = []
    for s in splits:
        src_dir, dst_dir = layout.images_dir("jpeg", s), folder / s
        names = _scan(src_dir, SOURCE_RE)
        report.splits[s] = len(names)
        if not names:
            continue
        try:
            dst_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskError(f"cannot create {dst_dir}: {exc.strerror or exc}") from None
        for tmp in _scan(dst_dir, TEMP_RE):
            remove_file(dst_dir / tmp)
        present = set(_scan(dst_dir, SOURCE_RE))
        for name in names:
            key, src, dst = f"{s}/{name}", src_dir / name, dst_dir / name
            rec = rf.outputs.get(key)
            if rec is not None and name in present and _unchanged(rec, src, dst):
                report.unchanged += 1
                continue
            tasks.append(Task(key, str(src), str(dst), adopt=rec is None and name in present))
    tasks.sort(key=_cost, reverse=True)
    report.images = sum(report.splits.values())
    if not report.images:
        where = ", ".join(str(layout.images_dir("jpeg", s)) for s in splits)
        raise UsageError(
            f"no JPEG images to resize in {where}",
            f"run `isic2020 fetch --split {'all' if len(splits) > 1 else splits[0]}` first",
        )
    return tasks, report


def _cost(task: Task) -> int:
    """Largest sources first (decoding is most of the work and grows with the file), so the
    run ends on small images and no worker idles long while the last batch finishes."""
    try:
        return os.stat(task.src).st_size
    except OSError:
        return 0


def _unchanged(rec: Any, src: Path, dst: Path) -> bool:
    try:
        s, d = os.stat(src), os.stat(dst)
    except OSError:
        return False
    return (rec.size == d.st_size and rec.source_size == s.st_size
            and rec.source_mtime_ns == s.st_mtime_ns)


def _scan(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if pattern.match(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _execute(
    tasks: list[Task], recipe: Recipe, rf: RecipeFile, report: ResizeReport, progress: bool
) -> None:
    """Run ``tasks``; every result lands in ``rf``/``report`` as it arrives, so what finished
    is recorded whatever ends the run."""
    bar = progress_bar(len(tasks), "resize", unit="img") if progress and tasks else None
    disk: Result | None = None
    try:
        for results in _batches(tasks, recipe, report.workers):
            for r in results:
                if r.status in ("resized", "adopted") and r.output is not None:
                    rf.outputs[r.key] = r.output
                    if r.status == "resized":
                        report.resized += 1
                    else:
                        report.adopted += 1
                elif r.status == "damaged":
                    report.damaged.append(Damaged(f"jpeg/{r.key}", r.message))
                elif disk is None:
                    disk = r
            if bar is not None:
                bar.update(len(results))
            if disk is not None:
                break
    finally:
        if bar is not None:
            bar.close()
    report.damaged.sort(key=lambda d: d.name)  # the order of work is not the report's
    if disk is not None:
        raise DiskError(
            disk.message,
            "free some space (or fix the permissions) and run the same command again: "
            "finished images are kept",
        )


def _batches(tasks: list[Task], recipe: Recipe, workers: int) -> Iterator[list[Result]]:
    """Results batch by batch, in order; in this process when one worker is enough."""
    chunks = [tasks[i : i + BATCH] for i in range(0, len(tasks), BATCH)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield run_batch(c, recipe)
        return
    pool = ProcessPoolExecutor(workers, initializer=worker_init)
    window: deque[Future[list[Result]]] = deque()
    todo = iter(chunks)
    try:
        for c in todo:
            window.append(pool.submit(run_batch, c, recipe))
            if len(window) >= 2 * workers:
                break
        while window:
            results = window.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(run_batch, nxt, recipe))
            yield results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _flush(folder: Path) -> None:
    """Make the written images durable before the recipe lists them: ``syncfs`` of the
    folder's filesystem (``os.sync`` where there is none)."""
    sync_folder(folder)

