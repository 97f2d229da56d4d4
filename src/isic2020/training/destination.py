"""Where shards go: a small seam; a folder here, a bucket in :mod:`isic2020.training.bucket`.

A :class:`Destination` is a flat namespace of finished files under DEST. The shard writer
needs only four things of it, all by name relative to DEST:

* ``sizes()``: every finished file there and its size (a listing; for a bucket, one paged
  LIST), which is how a re-run finds the shards it can skip;
* ``writer(name)``: a binary file to write one shard into; the shard appears under ``name``
  only when the block ends without error (locally: :func:`isic2020.store.fsutil.atomic_file`,
  a temporary beside it, then a rename; for a bucket: a local temporary, then one upload);
* ``read(name)``: a small file's bytes (the index), ``None`` if absent;
* ``sha256(name)``: the file's digest where it is cheap enough to check (locally: read it
  back; a bucket: the sha256 recorded at upload while the store's ETag still proves those
  bytes, "" otherwise); ``None`` means "cannot tell", and then the size and the plan decide;
* ``remove(name)``: drop a stale shard of ours.

Local shards are renamed into place without an fsync (a tar's worth of dirty pages would
otherwise be flushed per shard, doubling the export's time on a slow disk): a power cut can
leave a shard at its final name with lost content, and that is safe because a re-run checks
every shard it keeps against the index's sha256 and writes a mismatch again.

Rules for a local DEST (the same as ``export --layout kaggle``'s): not inside the data
directory, not containing it, a folder; and it holds nothing but our own files (the index,
shards named ``isic2020-<split>-NNNNNN.<ext>``, temporaries of ours), so a typo'd DEST never
mixes shards into a user's folder. Nothing outside DEST is written or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from isic2020.errors import DiskError, UsageError
from isic2020.store.fsutil import atomic_file

INDEX_NAME = "isic2020-index.json"
SHARD_RE = re.compile(r"^isic2020-(train|test)-[0-9]{6}\.(tar|parquet)$")
#: atomic_file's temporaries (``.NAME.<hex>.tmp``) of our own names.
OUR_TEMP_RE = re.compile(r"^\.(isic2020-[a-z]+-[0-9]{6}\.(tar|parquet)|isic2020-index\.json)"
                         r"\.[0-9a-f]+\.tmp$")


def is_ours(name: str) -> bool:
    return name == INDEX_NAME or bool(SHARD_RE.match(name)) or bool(OUR_TEMP_RE.match(name))


class Destination(Protocol):
    """See the module docstring: the five operations the shard writer uses."""

    url: str

    def sizes(self) -> dict[str, int]: ...

    def writer(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def read(self, name: str) -> bytes | None: ...

    def sha256(self, name: str) -> str | None: ...

    def remove(self, name: str) -> None: ...


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_outside_data(dest: Path, data_root: Path) -> None:
    """Refuse a DEST that is, lies inside, or contains the data directory, or is a file."""
    d, r = _resolved(dest), _resolved(data_root)
    if _is_within(d, r):
        raise UsageError(
            f"DEST {dest} is inside the data directory {data_root}",
            "choose a folder outside it (an export must never mix with the data it is made of)",
        )
    if _is_within(r, d):
        raise UsageError(
            f"DEST {dest} contains the data directory {data_root}",
            "choose a new or empty folder for the export",
        )
    if (dest.exists() or dest.is_symlink()) and not dest.is_dir():
        raise UsageError(f"DEST {dest} exists and is not a folder", "choose a new folder")


class LocalDestination:
    """A folder on this machine (see the module docstring for its rules)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def prepare(self, data_root: Path) -> None:
        """Check the rules, create the folder, drop temporaries a killed run left."""
        check_outside_data(self.root, data_root)
        if self.root.is_dir():
            names = sorted(os.listdir(self.root))
            foreign = [n for n in names if not is_ours(n)]
            if foreign:
                raise UsageError(
                    f"DEST {self.root} holds files that are not isic2020 shards "
                    f"(first: {foreign[0]})",
                    "choose a new or empty folder (an earlier shard export is updated in place)",
                )
            for n in names:
                if OUR_TEMP_RE.match(n):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.root / n)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskError(f"cannot create {self.root}: {exc.strerror or exc}") from None

    def sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with os.scandir(self.root) as it:
            for e in it:
                if e.is_file(follow_symlinks=False) and is_ours(e.name):
                    out[e.name] = e.stat(follow_symlinks=False).st_size
        return out

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        try:
            with atomic_file(self.root / name, durable=False) as fh:
                yield fh
        except OSError as exc:
            raise DiskError(
                f"cannot write {self.root / name}: {exc.strerror or exc}",
                "free some space (or fix the folder), then run the same command again: "
                "finished shards are kept",
            ) from None

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def sha256(self, name: str) -> str | None:
        h = hashlib.sha256()
        try:
            with open(self.root / name, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return None
        return h.hexdigest()

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / name)
