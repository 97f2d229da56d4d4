"""``isic2020 status``: what is where under DATA, and the disk each part uses.

Read-only, so it takes no lock and writes nothing (it works on a read-only shared dataset and
beside a running fetch; what it shows is then a snapshot). Invariants:

* a manifest file's state is a list of words, not prose: ``missing``, ``partial``,
  ``present`` (not verified), ``verified``, ``changed`` (changed since verified: its stat is not
  the one its record holds), ``not the manifest's file`` (the record no longer vouches for it),
  ``extracted`` (its archive was unpacked completely), ``not kept`` (extracted, archive deleted);
* disk used is counted in allocated blocks (``st_blocks * 512``, what ``du`` says), not in file
  sizes: 33,126 small images cost a block each;
* nothing is followed below DATA's own folders: a link counts as the link;
* a folder that cannot be read is an error (one line, "permission denied", exit 3), never
  "nothing there".
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import (
    EXTENSIONS,
    FORMATS,
    SPLITS,
    FileEntry,
    Manifest,
    load_manifest,
)
from isic2020.catalog.plausible import content_problem
from isic2020.checks.against import IMAGE_RE
from isic2020.errors import DiskError
from isic2020.report import human_size, plural, readable_repr
from isic2020.store.fsutil import free_bytes
from isic2020.store.layout import Layout
from isic2020.store.records import Records, done_intervals, read_json

BLOCK = 512  # st_blocks unit, whatever the filesystem's block size


def unreadable(path: Path, exc: OSError) -> DiskError:
    return DiskError(
        f"cannot read {path}: {(exc.strerror or str(exc)).lower()}",
        "fix its permissions (or run as the user who owns the data), then run again",
    )


@dataclass
class Usage:
    """Allocated bytes and regular files below one path (links not followed)."""

    bytes: int = 0
    files: int = 0


def disk_usage(path: Path) -> Usage:
    """``du`` of ``path`` (0 when missing): blocks of it and everything below it, nothing below
    it followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Usage()
    except OSError as exc:
        raise unreadable(path, exc) from None
    total = Usage(st.st_blocks * BLOCK, int(stat.S_ISREG(st.st_mode)))
    if not stat.S_ISDIR(st.st_mode):
        return total
    stack = [os.fspath(path)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for e in it:
                    try:
                        est = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total.bytes += est.st_blocks * BLOCK
                    if stat.S_ISDIR(est.st_mode):
                        stack.append(e.path)
                    elif stat.S_ISREG(est.st_mode):
                        total.files += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise unreadable(Path(folder), exc) from None
    return total


@dataclass
class FileState:
    name: str
    kind: str
    split: str
    format: str
    states: list[str]
    size: int | None  # the manifest's exact size, when it has one
    disk_bytes: int  # allocated by the final file
    partial_bytes: int  # bytes a partial download already holds


@dataclass
class FolderState:
    path: str  # relative to DATA
    format: str
    split: str
    images: int
    other_files: int
    disk_bytes: int


@readable_repr
@dataclass
class StatusReport:
    data_dir: str
    exists: bool
    files: list[FileState] = field(default_factory=list)
    folders: list[FolderState] = field(default_factory=list)
    disk: dict[str, int] = field(default_factory=dict)
    free_bytes: int | None = None
    records_problem: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "exists": self.exists,
            "files": [asdict(f) for f in self.files],
            "image_folders": [asdict(f) for f in self.folders],
            "disk_bytes": self.disk,
            "free_bytes": self.free_bytes,
            "records_problem": self.records_problem,
        }

    def summary_lines(self) -> list[str]:
        free = "unknown" if self.free_bytes is None else human_size(self.free_bytes)
        lines = [f"data directory: {self.data_dir}"
                 + ("" if self.exists else " (does not exist yet)") + f"; {free} free"]
        lines.append("files:")
        for f in self.files:
            extra = f" ({human_size(f.partial_bytes)} so far)" if f.partial_bytes else ""
            lines.append(f"  {f.name:<44} {', '.join(f.states)}{extra}")
        lines.append("images:")
        for d in self.folders:
            lines.append(f"  {d.path:<22} {plural(d.images, 'image'):>15}  "
                         f"{human_size(d.disk_bytes):>9}"
                         + (f"  (+{plural(d.other_files, 'other file')})" if d.other_files
                            else ""))
        if not self.folders:
            lines.append("  none")
        lines.append("disk used:")
        for part, n in self.disk.items():
            lines.append(f"  {part:<10} {human_size(n):>9}")
        if self.records_problem:
            lines.append(f"warning: the records are damaged ({self.records_problem}); the next "
                         "fetch verifies again what they no longer name")
        return lines


def parts(layout: Layout) -> dict[str, Path]:
    """The parts of DATA whose disk use ``status`` shows (``clean`` removes the first three)."""
    state = layout.state_dir
    return {
        "partial": layout.partial_dir,
        "staging": state / "staging",
        "caches": state / "remote",
        "archives": layout.archives_dir,
        "metadata": layout.metadata_dir,
    }


def partial_bytes(layout: Layout, entry: FileEntry) -> int:
    """Bytes a partial download of ``entry`` holds, by its progress record (0 without one)."""
    doc = read_json(layout.partial_state_path(entry))
    size = doc.get("size") if isinstance(doc, dict) else None
    if not isinstance(size, int) or isinstance(size, bool):
        return 0
    return sum(b - a for a, b in done_intervals(doc.get("done", []), size))


def file_states(layout: Layout, records: Records, entry: FileEntry) -> list[str]:
    final = layout.final_path(entry)
    rec = records.file(entry.name)
    extracted = entry.is_archive and entry.name in records.extracted
    if rec is not None and rec.matches_stat(final):
        states = ["verified" if content_problem(entry, final) is None
                  else "not the manifest's file"]
    elif final.exists():
        states = ["present", "changed"] if rec is not None else ["present"]
    elif rec is not None and extracted:
        states = ["not kept"]
    elif partial_bytes(layout, entry) or layout.partial_path(entry).exists():
        states = ["partial"]
    else:
        states = ["missing"]
    return [*states, "extracted"] if extracted else states


def image_folder(layout: Layout, fmt: str, split: str) -> FolderState | None:
    folder = layout.images_dir(fmt, split)
    if not folder.is_dir():
        return None
    ext = "." + EXTENSIONS[fmt]
    images = other = 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(ext) and IMAGE_RE.match(e.name):
                    images += 1
                else:
                    other += 1
    except OSError as exc:
        raise unreadable(folder, exc) from None
    # The folder may be the user's link to another disk: count what it holds.
    used = disk_usage(folder.resolve())
    return FolderState(f"{fmt}/{split}", fmt, split, images, other, used.bytes)


def status(
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | Manifest | None = None,
) -> StatusReport:
    """What is where under DATA: each manifest file's state, each image folder's count and
    disk use, the disk used by partials, staging, caches, archives, and the free space."""
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    layout = Layout.at(data_dir)
    report = StatusReport(str(layout.root), layout.root.is_dir())
    if report.exists:
        try:
            os.listdir(layout.root)
        except OSError as exc:
            raise unreadable(layout.root, exc) from None
    records = Records(layout.records_path)
    if records.problem and layout.records_path.exists():
        try:
            layout.records_path.open("rb").close()
        except OSError as exc:
            raise unreadable(layout.records_path, exc) from None
    report.records_problem = records.problem
    report.files = [
        FileState(e.name, e.kind, e.split, e.format, file_states(layout, records, e), e.size,
                  disk_usage(layout.final_path(e)).bytes, partial_bytes(layout, e))
        for e in man.files
    ]
    images = 0
    for fmt in FORMATS:
        for split in SPLITS:
            row = image_folder(layout, fmt, split)
            if row is not None:
                report.folders.append(row)
                images += row.disk_bytes
    report.disk = {"images": images}
    report.disk.update({name: disk_usage(path).bytes for name, path in parts(layout).items()})
    inside = sum(report.disk[k] for k in ("partial", "staging", "caches"))
    report.disk["other_state"] = max(0, disk_usage(layout.state_dir).bytes - inside)
    report.free_bytes = free_bytes(layout.root)
    return report
