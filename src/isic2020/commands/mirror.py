"""``mirror DEST``: publish the verified official files, and the pinned manifest, to a folder or
an object store (``s3://bucket/prefix``), under their official names, flat, as in the official
bucket (``<prefix>/ISIC_2020_Training_JPEG.zip``), so ``fetch --mirror DEST`` finds them.

Invariants:

* **Never damaged bytes.** Each file is read once, before it is published, and its sha256
  compared with its record (``pin.verified_record``); a file that differs fails the command
  (exit 1) and nothing of it is published. The same pass computes the ETag the store will give
  the upload (``objectstore.upload_etag``), and the store's ETag is compared with it after the
  upload: the bytes in the bucket are the bytes that were hashed.
* **Resumable.** An object already there with the right size and ETag (a folder: the right
  size and sha256) is skipped; a cut-off multipart upload continues (``objectstore``); a folder
  copy goes through a temporary and a rename, so DEST never holds half a file.
* **Flat memory.** Files are streamed from disk, one part (8 MiB) or block at a time.
* Only DEST is written (and the data directory's lock is taken shared, so a fetch cannot
  replace a file while it is read).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isic2020.catalog.manifest import Manifest, expand_split, load_manifest
from isic2020.commands.pin import PINNED_NAME, pin, verified_record
from isic2020.errors import DiskError, UsageError, VerificationError
from isic2020.report import human_size, readable_repr
from isic2020.store.fsutil import atomic_file, atomic_write
from isic2020.store.layout import Layout
from isic2020.store.lock import data_dir_lock
from isic2020.store.records import Records
from isic2020.transfer.objectstore import ObjectStore, is_s3_url, upload_etag
from isic2020.version import __version__

MiB = 1 << 20


@dataclass
class Published:
    name: str
    status: str  # "uploaded", "copied", "already there", "not verified here"
    size: int = 0
    etag: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@readable_repr
@dataclass
class MirrorReport:
    dest: str
    data_dir: str
    files: list[Published] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0

    @property
    def bytes_published(self) -> int:
        return sum(f.size for f in self.files if f.status in ("uploaded", "copied"))

    def to_dict(self) -> dict[str, Any]:
        return {"isic2020": __version__, "dest": self.dest, "data_dir": self.data_dir,
                "seconds": round(self.seconds, 3), "bytes_published": self.bytes_published,
                "files": [f.to_dict() for f in self.files]}

    def summary_lines(self) -> list[str]:
        lines = [f"{f.name}: {f.status}" for f in self.files]
        lines.append(f"ok: {self.dest} ({human_size(self.bytes_published)} published in "
                     f"{self.seconds:.1f}s); nodes: isic2020 fetch --mirror {self.dest} "
                     f"--manifest pinned.toml (get it from {self.dest}/{PINNED_NAME})")
        return lines


class FolderTarget:
    """A local folder as a mirror: files copied through a temporary and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def present(self, name: str, size: int, sha256: str, _etag: str) -> bool:
        path = self.root / name
        try:
            if path.stat().st_size != size:
                return False
        except OSError:
            return False
        return _sha256(path) == sha256

    def put(self, name: str, path: Path, size: int, sha256: str, _etag: str) -> str:
        h = hashlib.sha256()
        try:
            with atomic_file(self.root / name) as out, open(path, "rb") as src:
                while block := src.read(MiB):
                    h.update(block)
                    out.write(block)
                if h.hexdigest() != sha256:  # changed while copied: the temporary goes
                    raise VerificationError(
                        f"{path} changed while it was copied to {self.root}",
                        "run `isic2020 fetch` and then mirror again")
        except OSError as exc:
            raise DiskError(f"cannot write {self.root / name}: {exc.strerror or exc}",
                            "free space or fix permissions in DEST, then run again") from None
        return "copied"

    def put_text(self, name: str, text: str) -> None:
        try:
            atomic_write(self.root / name, text.encode())
        except OSError as exc:
            raise DiskError(f"cannot write {self.root / name}: {exc.strerror or exc}",
                            "free space or fix permissions in DEST, then run again") from None


class StoreTarget:
    """``s3://bucket/prefix`` as a mirror (``objectstore``)."""

    def __init__(self, url: str) -> None:
        self.store = ObjectStore.connect(url)
        self.store.check_bucket()
        self.url = self.store.location.url

    def present(self, name: str, size: int, _sha256: str, etag: str) -> bool:
        stat = self.store.stat(name)
        return stat is not None and stat.size == size and stat.etag == etag

    def put(self, name: str, path: Path, size: int, _sha256: str, etag: str) -> str:
        stat = self.store.upload(name, path)
        if stat.size != size or stat.etag != etag:
            raise VerificationError(
                f"{self.url}/{name}: the store holds {stat.size} bytes with ETag {stat.etag} "
                f"after the upload, expected {size} bytes with ETag {etag}",
                "run the same command again (the object is uploaded anew)")
        return "uploaded"

    def put_text(self, name: str, text: str) -> None:
        from isic2020.transfer.objectstore import store_errors

        with store_errors(f"{self.url}/{name}"):
            self.store.client.put_object(Bucket=self.store.location.bucket,
                                         Key=self.store.location.key(name), Body=text.encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def mirror(
    dest: str | os.PathLike[str],
    split: str = "all",
    data_dir: str | os.PathLike[str] | None = None,
    manifest: str | os.PathLike[str] | Manifest | None = None,
    lock_timeout: float | None = None,
    log: Any = None,
) -> MirrorReport:
    """Publish every verified file of ``split`` and the pinned manifest to ``dest``."""
    t0 = time.monotonic()
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    splits = expand_split(split)
    layout = Layout.at(data_dir)
    pinned = pin(data_dir=layout.root, manifest=man, lock_timeout=lock_timeout)
    target = StoreTarget(str(dest)) if is_s3_url(str(dest)) else FolderTarget(Path(dest))
    report = MirrorReport(target.url, str(layout.root))
    with data_dir_lock(layout.lock_path, shared=True, timeout=lock_timeout):
        records = Records(layout.records_path)
        for entry in (e for e in man.files if e.split in splits):
            rec = verified_record(layout, records, entry)
            final = layout.final_path(entry)
            if rec is None or not final.exists():
                report.files.append(Published(entry.name, "not verified here"))
                continue
            sha, etag = upload_etag(final)
            if sha != rec.sha256 or final.stat().st_size != rec.size:
                raise VerificationError(
                    f"{final} no longer has the sha256 it was verified with ({rec.sha256})",
                    "delete it and run `isic2020 fetch`; nothing of it was published")
            if target.present(entry.name, rec.size, sha, etag):
                status = "already there"
            else:
                if log is not None:
                    log(f"{entry.name}: publishing {human_size(rec.size)} to {target.url}")
                status = target.put(entry.name, final, rec.size, sha, etag)
            report.files.append(Published(entry.name, status, rec.size, etag, sha))
    if not any(f.sha256 for f in report.files):
        raise UsageError(f"no verified file of split {split!r} in {layout.root}",
                         "run `isic2020 fetch` first (or give the right --data-dir/--split)")
    target.put_text(PINNED_NAME, pinned.toml)
    report.seconds = time.monotonic() - t0
    return report
