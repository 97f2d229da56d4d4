"""Small durable state: atomic JSON writes and the record of verified files.

``DATA/.isic2020/records.json`` holds, per official file, what was verified about it (size,
ETag, SHA-256, MD5, the URL it came from) plus the file's ``st_size``/``st_mtime_ns`` at that
moment. A re-run that finds the same stat trusts the file without re-hashing a byte: that is what
makes an idempotent re-run cost well under a second. Extraction records its completed archives
in the same file so ``extract`` and ``fetch`` can skip them too.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from isic2020.errors import DiskError
from isic2020.store.fsutil import atomic_write, file_mode

__all__ = ["FileRecord", "Records", "atomic_write_bytes", "atomic_write_json", "done_intervals",
           "file_mode", "read_json"]


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half
    (:func:`isic2020.store.fsutil.atomic_write`)."""
    atomic_write(path, data, durable=durable)


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files :func:`atomic_write_bytes` left beside ``path`` when the
    process was killed between creating one and renaming it. Only safe while no other writer
    of ``path`` runs (callers hold the data directory's lock)."""
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob("." + glob_escape(path.name) + ".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable=durable)


def done_intervals(raw: Any, size: int) -> list[list[int]]:
    """The finished byte ranges a partial download's record claims, merged and sorted, or
    ``[]`` when the record is of the wrong shape in any way (not a list of ``[start, end]``
    integer pairs with ``0 <= start < end <= size``): a damaged record is not trusted at all,
    because a range it invents would be taken as downloaded bytes."""
    if not isinstance(raw, list):
        return []
    pairs: list[tuple[int, int]] = []
    for iv in raw:
        if not (isinstance(iv, list) and len(iv) == 2 and all(_typed(x, (int,)) for x in iv)):
            return []
        a, b = iv
        if not 0 <= a < b <= size:
            return []
        pairs.append((a, b))
    merged: list[list[int]] = []
    for a, b in sorted(pairs):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable (treated as no state)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


@dataclass
class FileRecord:
    """What was proven about a downloaded file."""

    name: str
    size: int
    etag: str | None
    sha256: str
    md5: str | None
    url: str
    etag_check: str  # "md5", "multipart", "unverifiable: <why>", "none"
    st_size: int
    st_mtime_ns: int
    verified_at: float = field(default_factory=time.time)

    def matches_stat(self, path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == self.st_size and st.st_mtime_ns == self.st_mtime_ns


class Records:
    """records.json: ``files`` (downloaded, verified), ``extracted`` (completed archives) and
    ``verified`` (the fingerprint of each selection at its last passing verification).

    Thread-safe: a fetch records its small files from background threads (each change and its
    save are one step under ``_lock``, so no save sees a section being changed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self.problem: str | None = None  # why the file was (partly) ignored, if it was
        try:
            raw: Any = json.loads(path.read_bytes())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            raw = {}
            self.problem = f"not readable JSON ({getattr(exc, 'strerror', None) or exc})"
        if not isinstance(raw, dict):
            self.problem = self.problem or f"a JSON {type(raw).__name__}, not an object"
            raw = {}
        self.files = self._section(raw, "files", _valid_file)
        self.extracted = self._section(raw, "extracted", _valid_extracted)
        self.verified = self._section(raw, "verified", _valid_verified)

    def _section(
        self, raw: dict[str, Any], key: str, valid: Callable[[str, Any], bool]
    ) -> dict[str, dict[str, Any]]:
        """``raw[key]`` without the entries of the wrong shape (each is forgotten, so the file
        it named is verified, fetched or unpacked again instead of trusted)."""
        section = raw.get(key, {})
        if not isinstance(section, dict):
            self.problem = self.problem or f"{key!r} is not an object"
            return {}
        good = {k: v for k, v in section.items() if valid(k, v)}
        if len(good) != len(section):
            bad = next(k for k in section if k not in good)
            self.problem = self.problem or f"{key}[{bad!r}] has the wrong shape"
        return good

    def heal(self, log: Callable[[str], None] | None) -> None:
        """Under the lock, before a writer trusts the records: say once that a damaged file was
        partly ignored and rewrite it without what was ignored."""
        if self.problem is None:
            return
        if log is not None:
            log(f"warning: {self.path} is damaged ({self.problem}); what it no longer names is "
                "verified again")
        self.save()
        self.problem = None

    def file(self, name: str) -> FileRecord | None:
        raw = self.files.get(name)
        if not raw:
            return None
        try:
            return FileRecord(**raw)
        except TypeError:
            return None

    def put_file(self, rec: FileRecord) -> None:
        """Record ``rec``; a record already there as it is is not written again (a run with
        nothing to do writes nothing, so it works on a read-only data directory)."""
        with self._lock:
            if self.files.get(rec.name) == asdict(rec):
                return
            self.files[rec.name] = asdict(rec)
            self.save()

    def drop_file(self, name: str) -> None:
        with self._lock:
            if self.files.pop(name, None) is not None:
                self.save()

    def put_extracted(self, archive: str, info: dict[str, Any]) -> None:
        with self._lock:
            if self.extracted.get(archive) == info:
                return
            self.extracted[archive] = info
            self.save()

    def drop_extracted(self, archive: str) -> None:
        with self._lock:
            if self.extracted.pop(archive, None) is not None:
                self.save()

    def put_verified(self, selection: str, info: dict[str, Any]) -> None:
        with self._lock:
            if self.verified.get(selection) == info:
                return
            self.verified[selection] = info
            self.save()

    def save(self) -> None:
        try:
            with self._lock:
                atomic_write_json(
                    self.path,
                    {"files": self.files, "extracted": self.extracted, "verified": self.verified},
                )
        except OSError as exc:
            raise DiskError(
                f"cannot write {self.path}: {exc.strerror or exc}",
                "free disk space or fix permissions, then run again",
            ) from None


_FILE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "size": (int,), "etag": (str, type(None)), "sha256": (str,),
    "md5": (str, type(None)), "url": (str,), "etag_check": (str,), "st_size": (int,),
    "st_mtime_ns": (int,), "verified_at": (int, float),
}


def _typed(v: Any, types: tuple[type, ...]) -> bool:
    return isinstance(v, types) and not isinstance(v, bool)


def _valid_file(name: str, v: Any) -> bool:
    return (
        isinstance(v, dict) and set(v) == set(_FILE_TYPES) and v["name"] == name
        and all(_typed(v[k], t) for k, t in _FILE_TYPES.items())
    )


def _valid_extracted(_name: str, v: Any) -> bool:
    return (
        isinstance(v, dict)
        and all(_typed(v.get(k), (int,)) for k in ("images", "st_size", "st_mtime_ns"))
        and isinstance(v.get("non_images", []), list)
        and isinstance(v.get("dest", ""), str)
    )


def _valid_verified(_name: str, v: Any) -> bool:
    return (
        isinstance(v, dict) and isinstance(v.get("fingerprint"), str)
        and _typed(v.get("at", 0), (int, float))
    )
