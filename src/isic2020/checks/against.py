"""``isic2020 verify --against SHA256SUMS``: a copy of the data checked against a checksum list.

Nobody publishes per-image checksums for ISIC 2020; ``isic2020 checksums`` writes them once
(coreutils ``sha256sum`` format, paths relative to DATA) and every other machine checks its copy
against that list. The list is the whole truth here: the manifest and the metadata are not read.

Invariants:

* every listed file must be present with the listed hash (else *missing* / *differing*);
* an image (``ISIC_xxxxxxx.jpg``/``.dcm``) in a folder the list names but not in the list is
  *unlisted*: a copy holds exactly what the list describes. Other files there (notes, temps of
  a running unpack) are the ordinary ``verify``'s business and are not judged here;
* a listed path is relative, below DATA, without ``..``: a hostile list cannot make us read
  outside the copy (refused in one line, exit 2);
* files are hashed streaming (fixed buffer per thread), in threads: hashlib releases the GIL
  on large updates, so one core reads while another hashes.

The hashing and the list format live here (the lower layer) so ``commands.checksums`` writes
exactly what this module reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from isic2020.catalog.manifest import EXTENSIONS
from isic2020.errors import DiskError, NothingThere, UsageError
from isic2020.report import human_size, plural, progress_bar, readable_repr
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock

CHUNK = 1 << 20  # bytes read per call: large enough that hashlib drops the GIL
SHOW = 10  # problems per kind in the human summary (all of them in --json)
IMAGE_RE = re.compile(
    r"^ISIC_[0-9]{7}\.(" + "|".join(sorted(set(EXTENSIONS.values()))) + r")$"
)
_LINE_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def default_workers() -> int:
    """Threads for hashing: reads overlap with hashing, a few per core."""
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def sha256_file(path: Path) -> tuple[str, int]:
    """The hex sha256 of ``path`` and its length, read ``CHUNK`` bytes at a time into one
    reused buffer (memory stays flat whatever the file's size)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


def hash_files(
    paths: Iterable[Path], workers: int | None = None
) -> Iterator[tuple[Path, str | None, int]]:
    """``(path, hex, bytes)`` for each path, in order; hex ``None`` for a file not there.

    A file that cannot be read (permission, I/O error) raises :class:`DiskError` (exit 3):
    that is a broken copy or a wrong user, not a verification result.
    """

    def one(path: Path) -> tuple[Path, str | None, int]:
        try:
            return (path, *sha256_file(path))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return path, None, 0
        except OSError as exc:
            raise DiskError(
                f"cannot read {path}: {(exc.strerror or str(exc)).lower()}",
                "fix the permissions (or run as the user who owns the data), then run again",
            ) from None

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        yield from pool.map(one, paths)


def escape_path(rel: str) -> str:
    """A name as ``sha256sum`` writes it: a backslash or newline in it is escaped and the line
    then starts with a backslash (see :func:`format_line`)."""
    return rel.replace("\\", "\\\\").replace("\n", "\\n")


def format_line(sha256: str, rel: str) -> str:
    escaped = escape_path(rel)
    mark = "\\" if escaped != rel else ""
    return f"{mark}{sha256}  {escaped}\n"


def parse_line(line: str, where: str) -> tuple[str, str]:
    """``(hex, relative path)`` of one ``sha256sum`` line; a malformed line is a usage error."""
    escaped = line.startswith("\\")
    m = _LINE_RE.match(line[1:] if escaped else line)
    if m is None:
        raise UsageError(
            f"{where} is not a sha256sum line (`<64 hex digits>  <path>`)",
            "give a list written by `isic2020 checksums` or `sha256sum`",
        )
    rel = m.group(2)
    if escaped:
        rel = re.sub(r"\\(\\|n)", lambda g: "\n" if g.group(1) == "n" else "\\", rel)
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or rel != p.as_posix() or rel.startswith("./"):
        raise UsageError(
            f"{where} names {rel!r}, not a plain path relative to the data directory",
            "the list's paths must be like jpeg/train/ISIC_0000000.jpg",
        )
    return m.group(1).lower(), rel


def read_list(path: Path) -> dict[str, str]:
    """Relative path -> hex of a SHA256SUMS file (one path listed twice: the last line wins,
    as ``sha256sum -c`` checks both and a differing pair would fail there anyway)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist",
                         "give the file `isic2020 checksums` wrote") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}",
                         "give a readable checksum list") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text",
                         "give the file `isic2020 checksums` wrote") from None
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            digest, rel = parse_line(line, f"{path} line {i}")
            out[rel] = digest
    if not out:
        raise UsageError(f"{path} lists no files", "give the file `isic2020 checksums` wrote")
    return out


@readable_repr
@dataclass
class AgainstReport:
    """What ``verify --against`` found: each problem by its path relative to DATA."""

    data_dir: str
    against: str
    listed: int = 0
    matched: int = 0
    bytes_hashed: int = 0
    missing: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed() else 0

    def failed(self) -> list[Problem]:
        kinds = (("missing", self.missing), ("differing", self.differing),
                 ("unlisted", self.unlisted))
        return [Problem(name, paths) for name, paths in kinds if paths]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "against": self.against,
            "listed": self.listed,
            "matched": self.matched,
            "bytes_hashed": self.bytes_hashed,
            "missing": self.missing,
            "differing": self.differing,
            "unlisted": self.unlisted,
            "failed": [p.name for p in self.failed()],
            "seconds": round(self.seconds, 3),
        }

    def summary_lines(self) -> list[str]:
        head = (f"verify {self.data_dir} against {self.against}: "
                + ("OK" if not self.failed() else "FAILED")
                + f", {self.matched:,} of {plural(self.listed, 'listed file')} match "
                f"({human_size(self.bytes_hashed)} hashed in {self.seconds:.1f} s)")
        lines = [head]
        for p in self.failed():
            lines.append(f"  failed  {p.name}: {plural(len(p.paths), 'file')}")
            lines += [f"            {path}" for path in p.paths[:SHOW]]
            if len(p.paths) > SHOW:
                lines.append(f"            ... and {len(p.paths) - SHOW} more (see --json)")
        return lines


@dataclass
class Problem:
    name: str
    paths: list[str]


def unlisted_images(root: Path, listed: dict[str, str]) -> list[str]:
    """Images in the folders the list names that the list does not name (sorted)."""
    folders = sorted({str(PurePosixPath(rel).parent) for rel in listed})
    extra: list[str] = []
    for folder in folders:
        try:
            with os.scandir(root / folder) as it:
                names = [e.name for e in it if IMAGE_RE.match(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise DiskError(f"cannot read {root / folder}: {(exc.strerror or '').lower()}",
                            "fix the permissions, then run again") from None
        prefix = "" if folder == "." else folder + "/"
        extra += [prefix + n for n in names if prefix + n not in listed]
    return sorted(extra)


def verify_against(
    against: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> AgainstReport:
    """Check the copy in ``data_dir`` against the SHA256SUMS file ``against`` (shared lock:
    a fetch on the same directory must not change files mid-check)."""
    start = time.monotonic()
    layout = Layout.at(data_dir)
    listed = read_list(Path(against))
    if not layout.root.is_dir():
        raise NothingThere(f"nothing to verify: {layout.root} does not exist",
                                "copy the data there, or give its folder with --data-dir")
    report = AgainstReport(str(layout.root), str(against), listed=len(listed))
    rels = sorted(listed)
    with data_dir_lock(layout.lock_path, shared=True):
        bar = progress_bar(sum(_size(layout.root / r) for r in rels), "hashing") \
            if progress else None
        try:
            for rel, (_, digest, n) in zip(rels, hash_files((layout.root / r for r in rels),
                                                            workers)):
                report.bytes_hashed += n
                if bar is not None:
                    bar.update(n)
                if digest is None:
                    report.missing.append(rel)
                elif digest != listed[rel]:
                    report.differing.append(rel)
                else:
                    report.matched += 1
        finally:
            if bar is not None:
                bar.close()
        report.unlisted = unlisted_images(layout.root, listed)
    report.seconds = time.monotonic() - start
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
