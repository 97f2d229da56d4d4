"""``isic2020 clean``: give back the disk that partial downloads, staging and caches hold.

What goes (all of it rebuilt or re-downloaded by the next ``fetch`` if it is needed again):

* ``partial``: ``DATA/.isic2020/partial/`` (downloads in progress and their progress records:
  a later fetch starts those files over);
* ``staging``: ``DATA/.isic2020/staging/`` (images unpacked while their archive downloaded, or
  members ``--direct`` fetched into an empty folder before all of them were in);
* ``caches``: ``DATA/.isic2020/remote/`` (remote zip directories read for subsets/``--direct``);
* ``temps``: temporaries a killed run left (``.NAME.<hex>.tmp`` beside a file written whole,
  ``.ISIC_xxxxxxx.jpg.part`` in an image folder);
* with ``archives``: each kept archive whose images are all on disk: its record still vouches
  for it (verified), its extraction is recorded complete, and every image member of it is
  present with its size. An archive that is the only copy of anything is kept, and said why.
  ``fetch`` then reports the split as "extracted (archive not kept)", as after
  ``--no-keep-archives``, and repairs its images by byte ranges from the remote zip (the
  archive's directory is kept in ``DATA/.isic2020/directories/``, which clean never empties).

Never touched: metadata, images, records, selections, saved directories, the lock. It holds
the data directory's exclusive lock (``--dry-run``: the shared one), which first refuses a
state folder holding a symbolic link (:func:`isic2020.store.fsutil.refuse_state_links`);
removals go through :func:`isic2020.store.fsutil.remove_tree`/``remove_file``, which follow no
link: nothing outside DATA is ever deleted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.archive.decode import present_files
from isic2020.archive.local import keep_directory, plan_archive
from isic2020.catalog.manifest import FORMATS, SPLITS, FileEntry, Manifest, load_manifest
from isic2020.catalog.plausible import content_problem
from isic2020.commands.status import disk_usage, parts, unreadable
from isic2020.errors import DiskError, Isic2020Error
from isic2020.report import human_size, plural, readable_repr
from isic2020.store.fsutil import is_temp_name, remove_file, remove_tree
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records

_ATOMIC_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # fsutil's temporaries
CLEANED = ("partial", "staging", "caches")


@dataclass
class Removal:
    path: str  # relative to DATA
    part: str  # partial, staging, caches, temps, archives
    bytes: int  # allocated blocks freed


@dataclass
class KeptArchive:
    path: str
    reason: str


@readable_repr
@dataclass
class CleanReport:
    data_dir: str
    dry_run: bool
    archives: bool
    removed: list[Removal] = field(default_factory=list)
    kept: list[KeptArchive] = field(default_factory=list)
    exit_code: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(r.bytes for r in self.removed)

    def to_dict(self) -> dict[str, Any]:
        by_part: dict[str, int] = {}
        for r in self.removed:
            by_part[r.part] = by_part.get(r.part, 0) + r.bytes
        return {
            "data_dir": self.data_dir,
            "dry_run": self.dry_run,
            "archives": self.archives,
            "freed_bytes": self.freed_bytes,
            "freed_by_part": by_part,
            "removed": [asdict(r) for r in self.removed],
            "kept_archives": [asdict(k) for k in self.kept],
        }

    def summary_lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        lines = [f"clean {self.data_dir}: {verb} {human_size(self.freed_bytes)} "
                 f"({plural(len(self.removed), 'item')})"]
        lines += [f"  {r.part:<9} {human_size(r.bytes):>9}  {r.path}" for r in self.removed]
        lines += [f"  kept      {k.path}: {k.reason}" for k in self.kept]
        if not self.archives:
            lines.append("  (archives are kept; `isic2020 clean --archives` removes those "
                         "whose images are all extracted)")
        return lines


def clean(
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | Manifest | None = None,
    *,
    archives: bool = False,
    dry_run: bool = False,
    lock_timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> CleanReport:
    """Remove partials, staging, caches and stale temporaries (with ``archives``: the kept
    archives whose images are all extracted); ``dry_run``: only say what would go."""
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    layout = Layout.at(data_dir)
    report = CleanReport(str(layout.root), dry_run, archives)
    if not layout.root.is_dir():
        return report  # nothing to clean, and no state folder made for nothing
    with data_dir_lock(layout.lock_path, shared=dry_run, timeout=lock_timeout, on_wait=log):
        targets = _targets(layout)
        if archives:
            records = Records(layout.records_path)
            for entry in man.files:
                if entry.is_archive and layout.final_path(entry).exists():
                    why = keep_reason(layout, records, entry)
                    rel = _rel(layout, layout.final_path(entry))
                    if why is None:
                        if not dry_run:  # what a later fetch repairs its images from
                            keep_directory(layout, records, entry)
                        targets.append((layout.final_path(entry), "archives"))
                    else:
                        report.kept.append(KeptArchive(rel, why))
        for path, part in targets:
            report.removed.append(Removal(_rel(layout, path), part, disk_usage(path).bytes))
            if not dry_run:
                _remove(path)
    return report


def _targets(layout: Layout) -> list[tuple[Path, str]]:
    """What goes without question: each entry of the cleaned state folders, and temporaries."""
    out: list[tuple[Path, str]] = []
    folders = parts(layout)
    for part in CLEANED:
        out += [(p, part) for p in _children(folders[part])]
    for folder in (layout.state_dir, layout.metadata_dir, layout.archives_dir):
        out += [(p, "temps") for p in _children(folder) if _ATOMIC_TEMP.match(p.name)]
    for fmt in FORMATS:
        for split in SPLITS:
            out += [(p, "temps") for p in _children(layout.images_dir(fmt, split))
                    if is_temp_name(p.name) or _ATOMIC_TEMP.match(p.name)]
    return out


def _children(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise unreadable(folder, exc) from None


def keep_reason(layout: Layout, records: Records, entry: FileEntry) -> str | None:
    """Why the kept archive ``entry`` must stay, or None when every image of it is on disk."""
    final = layout.final_path(entry)
    rec = records.file(entry.name)
    if rec is None or not rec.matches_stat(final) or content_problem(entry, final) is not None:
        return "not verified (run `isic2020 fetch` to verify it)"
    done = records.extracted.get(entry.name)
    if not done or (done.get("st_size"), done.get("st_mtime_ns")) != (rec.st_size,
                                                                       rec.st_mtime_ns):
        return "not extracted (run `isic2020 fetch` or `isic2020 extract`)"
    try:
        members = plan_archive(final, entry).members
    except Isic2020Error as exc:
        return f"its directory cannot be read ({exc.message})"
    present = present_files(layout.images_dir(entry.format, entry.split))
    absent = sum(1 for m in members if present.get(m.final) != m.entry.file_size)
    if absent:
        return (f"{plural(absent, 'image')} of it not on disk: it is their only copy "
                "(run `isic2020 fetch` to restore them)")
    return None


def _remove(path: Path) -> None:
    """One entry, following no link (a link is removed as the link)."""
    try:
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            remove_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DiskError(f"cannot remove {path}: {(exc.strerror or str(exc)).lower()}",
                        "make the data directory writable, then run again") from None


def _rel(layout: Layout, path: Path) -> str:
    return os.path.relpath(path, layout.root)
