"""Shards to an object store (``export --layout webdataset|parquet s3://bucket/prefix``).

:class:`BucketDestination` fills the :class:`isic2020.training.destination.Destination` seam
with :mod:`isic2020.transfer.objectstore` (boto3, the project's one S3 client: the same
credentials chain, ``AWS_ENDPOINT_URL``, error wording and 8 MiB multipart uploads as
``mirror``). Invariants:

* **No half shard at a final key.** Each shard is written to a local temporary in a private
  folder made under ``$TMPDIR`` (refused when that lies inside the data directory; never in
  the bucket), then uploaded; an object appears at its key only when its PUT or its multipart
  completion succeeds. The index is uploaded after every shard, so it names finished shards
  only. A full local disk is one line (exit 3) and nothing of the shard is in the bucket.
* **Checked skip.** Every object we upload carries two metadata entries computed from the
  local bytes before the upload: ``isic2020-sha256`` and ``isic2020-etag`` (the ETag the store
  must give those bytes: their MD5, or the MD5 of the 8 MiB parts' MD5s and ``-N``). After the
  upload the store's ETag must equal it (else the shard is uploaded again, once, without
  resuming). A re-run keeps a shard only when its size and plan match the index, its stored
  ETag equals its ``isic2020-etag`` (the bytes are the ones that were hashed) and its
  ``isic2020-sha256`` equals the index's sha256. An object replaced by anyone else loses or
  contradicts that metadata and is uploaded again. The bucket's bytes are a local export's
  bytes, index included (nothing about the store goes into the index).
* **Only our names.** A prefix holding any other object (or anything in a sub-folder) is
  refused before anything is written, as a local DEST holding other files is; stale shards of
  ours are deleted only as a local export deletes them.
* **Local temporaries** live in ``$TMPDIR/isic2020-export-<pid>-XXXX/`` (one shard at a time)
  and go when the export ends; a killed export's folder is removed by the next export (its
  process id is no longer running).
* **Nothing billed in the dark.** An upload cut off by a kill leaves an unfinished multipart
  upload (invisible parts); the next run resumes it, and once an export completes, the
  unfinished uploads of our names under the prefix are aborted.
* **Failures** are objectstore's one-line errors: a missing bucket, credentials the store does
  not know, no permission: exit 2; the endpoint unreachable, an expired session: exit 3.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from isic2020.errors import DiskError, UsageError
from isic2020.training.destination import INDEX_NAME, SHARD_RE
from isic2020.transfer.objectstore import (
    ObjectStat,
    ObjectStore,
    StoreUnavailable,
    is_s3_url,
    upload_etag,
)
from isic2020.transfer.objectstore_cleanup import abort_unfinished

TEMP_PREFIX = "isic2020-export-"
_TEMP_RE = re.compile(r"^isic2020-export-([0-9]+)-[A-Za-z0-9_]+$")
SHA_KEY = "isic2020-sha256"
ETAG_KEY = "isic2020-etag"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def dest_scheme(dest: str | os.PathLike[str]) -> str | None:
    """``"s3"`` for an ``s3://`` DEST, None for a folder; any other URL is refused."""
    text = os.fspath(dest)
    if is_s3_url(text):
        return "s3"
    m = _SCHEME_RE.match(text)
    if m:
        raise UsageError(
            f"DEST {text}: {m.group(1)}:// is not supported",
            "export to a folder or to s3://bucket/prefix (MinIO, Ceph or GCS through their S3 "
            "API: set AWS_ENDPOINT_URL)",
        )
    return None


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def is_our_object(name: str) -> bool:
    return name == INDEX_NAME or bool(SHARD_RE.match(name))


class BucketDestination:
    """``s3://bucket/prefix`` as a flat namespace of finished shards (see the module doc)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.url = store.location.url
        self._tmp: Path | None = None

    @classmethod
    def connect(cls, url: str) -> BucketDestination:
        return cls(ObjectStore.connect(url))

    def prepare(self, data_root: Path) -> None:
        """Credentials, the bucket, only our names under the prefix; the local temp folder."""
        if not self.store.signed:
            raise UsageError(
                f"{self.url}: no AWS credentials found (writing to a bucket needs them)",
                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an "
                "instance role",
            )
        foreign = sorted(n for n in self.store.listing() if not is_our_object(n))
        if foreign:
            raise UsageError(
                f"DEST {self.url} holds objects that are not isic2020 shards "
                f"(first: {foreign[0]})",
                "choose a new or empty prefix (an earlier shard export is updated in place)",
            )
        _drop_stale_temporaries(Path(tempfile.gettempdir()))
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
        except OSError as exc:
            raise DiskError(f"cannot create a temporary folder in {tempfile.gettempdir()}: "
                            f"{exc.strerror or exc}", "set TMPDIR to a folder with room") from None
        if _is_within(Path(os.path.realpath(tmp)), Path(os.path.realpath(data_root))):
            shutil.rmtree(tmp, ignore_errors=True)
            raise UsageError(
                f"the temporary folder {tmp} is inside the data directory {data_root}",
                "set TMPDIR to a folder outside it",
            )
        self._tmp = tmp

    def finish(self) -> list[str]:
        """After a complete export: abort unfinished uploads of our names (see the doc)."""
        return abort_unfinished(self.store, is_our_object)

    def close(self) -> None:
        """Remove the local temporaries (the bucket keeps every finished shard)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def sizes(self) -> dict[str, int]:
        return {n: s.size for n, s in self.store.listing().items() if is_our_object(n)}

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        assert self._tmp is not None, "prepare() first"
        path = self._tmp / name
        try:
            try:
                with open(path, "wb") as fh:
                    yield fh
            except OSError as exc:
                raise DiskError(
                    f"cannot write the temporary {path}: {exc.strerror or exc}",
                    "free some space there (or set TMPDIR to a folder with room), then run "
                    "the same command again: finished shards are kept",
                ) from None
            self._upload(name, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _upload(self, name: str, path: Path) -> None:
        sha, etag = upload_etag(path)
        meta = {SHA_KEY: sha, ETAG_KEY: etag}
        stat = self.store.upload(name, path, metadata=meta)
        if not _agrees(stat, meta):  # a resumed upload from other bytes, or bytes cut in transit
            stat = self.store.upload(name, path, metadata=meta, resume=False)
        if not _agrees(stat, meta):
            self.store.delete(name)
            raise StoreUnavailable(
                f"{self.url}/{name}: the store's ETag {stat.etag} is not the ETag of the "
                f"uploaded bytes ({etag})",
                "run the same command again: finished shards are kept",
            )

    def read(self, name: str) -> bytes | None:
        return self.store.get(name)

    def sha256(self, name: str) -> str | None:
        """The sha256 our upload recorded, when the store's ETag still proves those bytes
        ("" otherwise, which no index entry matches, so the shard is uploaded again)."""
        stat = self.store.stat(name)
        if stat is None or not stat.etag or stat.etag != stat.metadata.get(ETAG_KEY):
            return ""
        return stat.metadata.get(SHA_KEY, "")

    def remove(self, name: str) -> None:
        self.store.delete(name)


def _drop_stale_temporaries(tmpdir: Path) -> None:
    """Remove the temp folders of exports that were killed (named by a process id that is no
    longer running; a running export's folder, or any other name, is left alone)."""
    with contextlib.suppress(OSError), os.scandir(tmpdir) as it:
        for e in it:
            m = _TEMP_RE.match(e.name)
            if m is None or not e.is_dir(follow_symlinks=False) or _alive(int(m.group(1))):
                continue
            shutil.rmtree(e.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _agrees(stat: ObjectStat, meta: dict[str, str]) -> bool:
    return stat.etag == meta[ETAG_KEY] and stat.metadata.get(SHA_KEY) == meta[SHA_KEY]
