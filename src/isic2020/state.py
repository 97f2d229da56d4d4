"""Small durable state: atomic JSON writes and the record of verified files.

``DATA/.isic2020/records.json`` holds, per official file, what was verified about it (size,
ETag, SHA-256, MD5, the URL it came from) plus the file's ``st_size``/``st_mtime_ns`` at that
moment. A re-run that finds the same stat trusts the file without re-hashing a byte: that is what
makes an idempotent re-run cost well under a second. Extraction records its completed archives
in the same file so ``extract`` and ``fetch`` can skip them too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from .errors import DiskError


@functools.cache
def file_mode() -> int:
    """``0o666`` minus the umask, never world-writable.

    Read once per process: ``os.umask`` can only be read by setting it, which would race with
    threads creating files.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask & ~0o002


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; our files follow the umask like others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: Path) -> None:
    """Delete what a killed :func:`atomic_write_bytes` of ``path`` left behind (its temp files;
    only call it while holding the data directory's lock, so no writer is live)."""
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob("." + glob_escape(path.name) + ".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable=durable)


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
    ``verified`` (the fingerprint of each selection at its last passing verification)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = read_json(path) or {}
        self.files: dict[str, dict[str, Any]] = dict(raw.get("files", {}))
        self.extracted: dict[str, dict[str, Any]] = dict(raw.get("extracted", {}))
        self.verified: dict[str, dict[str, Any]] = dict(raw.get("verified", {}))

    def file(self, name: str) -> FileRecord | None:
        raw = self.files.get(name)
        if not raw:
            return None
        try:
            return FileRecord(**raw)
        except TypeError:
            return None

    def put_file(self, rec: FileRecord) -> None:
        self.files[rec.name] = asdict(rec)
        self.save()

    def drop_file(self, name: str) -> None:
        if self.files.pop(name, None) is not None:
            self.save()

    def put_extracted(self, archive: str, info: dict[str, Any]) -> None:
        self.extracted[archive] = info
        self.save()

    def drop_extracted(self, archive: str) -> None:
        if self.extracted.pop(archive, None) is not None:
            self.save()

    def put_verified(self, selection: str, info: dict[str, Any]) -> None:
        self.verified[selection] = info
        self.save()

    def save(self) -> None:
        try:
            atomic_write_json(
                self.path,
                {"files": self.files, "extracted": self.extracted, "verified": self.verified},
            )
        except OSError as exc:
            raise DiskError(
                f"cannot write {self.path}: {exc.strerror or exc}",
                "free disk space or fix permissions, then run again",
            ) from None
