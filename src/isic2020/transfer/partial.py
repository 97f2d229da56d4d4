"""The partial file of a ranged download and the state file that says which bytes it holds.

Invariants:
- the partial file is preallocated to the object's size and receives every chunk in place;
- the state file (JSON, replaced atomically) lists the byte intervals written; only the
  :class:`~isic2020.transfer.checkpoint.Checkpointer` claims new bytes, after an
  ``fdatasync`` of them, so a claim is never ahead of the disk;
- the state is tied to the object's size and ETag (or Last-Modified and URL without an
  ETag): a run that finds another version starts over instead of splicing two versions;
- every ``OSError`` leaves as a :class:`~isic2020.errors.DiskError` naming the file and what to
  do (:func:`disk_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import Any

from isic2020.store.fsutil import disk_error, open_nofollow, remove_file
from isic2020.store.libc import start_writeback
from isic2020.store.records import atomic_write_json, done_intervals, read_json, remove_stale_temps
from isic2020.transfer.model import Log, RemoteObject

STATE_VERSION = 2


class PartialFile:
    """The partial file of ``remote`` at ``path`` and its state file at ``state_path``.

    Invariants: ``fd`` is open (read-write) between :meth:`open` and :meth:`close`, else -1;
    ``done`` is what a previous run proved written (empty for a new or changed object).
    """

    def __init__(self, remote: RemoteObject, path: Path, state_path: Path, log: Log | None):
        assert remote.size is not None
        self.remote = remote
        self.size = remote.size
        self.path = path
        self.state_path = state_path
        self.log = log
        self.fd = -1
        self.done: list[list[int]] = []
        self._writing = threading.Lock()
        self._flushing: threading.Thread | None = None
        self._flush_error: OSError | None = None

    def open(self) -> list[list[int]]:
        """Resume what the state proves, else start over; the intervals already there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.state_path)  # a kill during a checkpoint's write
        self._load_state()
        if not self.done and self.path.exists():
            remove_file(self.path)
        try:
            fresh = not self.path.exists()
            self.fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
            if fresh or os.fstat(self.fd).st_size != self.size:
                os.ftruncate(self.fd, self.size)
                if fresh and hasattr(os, "posix_fallocate") and self.size:
                    self._preallocate()
        except OSError as exc:
            self.close()
            raise disk_error(exc, self.path) from None
        self.save(self.done)
        return [list(iv) for iv in self.done]

    def _preallocate(self) -> None:
        try:
            os.posix_fallocate(self.fd, 0, self.size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate; that is fine.

    def _load_state(self) -> None:
        doc = read_json(self.state_path)
        if not isinstance(doc, dict) or not self.path.exists():
            return
        remote = self.remote
        same = (
            doc.get("version") == STATE_VERSION
            and doc.get("size") == self.size
            and (
                (remote.etag and doc.get("etag") == remote.etag)
                or (
                    not remote.etag
                    and remote.last_modified
                    and doc.get("last_modified") == remote.last_modified
                    and doc.get("url") == remote.url
                )
            )
        )
        if not same:
            if self.log:
                self.log(f"{self.path.name}: the remote object changed since the partial "
                         "download; starting over")
            return
        self.done = done_intervals(doc.get("done", []), self.size)

    def state_doc(self, done: list[list[int]]) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "url": self.remote.url,
            "size": self.size,
            "etag": self.remote.etag,
            "last_modified": self.remote.last_modified,
            "done": done,
        }

    def save(self, done: list[list[int]]) -> None:
        """Replace the state file (not fsynced: see checkpoint.py for why that is safe).
        Only the Checkpointer may claim new bytes; other callers save what was loaded."""
        try:
            atomic_write_json(self.state_path, self.state_doc(done), durable=False)
        except OSError as exc:
            raise disk_error(exc, self.state_path) from None

    def write(self, offset: int, block: bytes | memoryview) -> int:
        """Write ``block`` at ``offset``; the offset after it.

        One writer at a time (``_writing``): the kernel serializes buffered writes to one
        file on its inode lock anyway, and a thread that waits there spins (optimistic
        spinning burns the core the owner is not using); waiting on a Python lock sleeps."""
        view = memoryview(block)
        try:
            with self._writing:
                while view:
                    n = os.pwrite(self.fd, view, offset)
                    view = view[n:]
                    offset += n
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        return offset

    def written(self, start: int, end: int) -> None:
        """``[start, end)`` is complete: have the kernel start writing it to disk now, so the
        fsync of :meth:`finish` waits for the last pieces only (no promise of durability)."""
        start_writeback(self.fd, start, end - start)

    def start_flush(self) -> None:
        """Every byte is written: start the fsync in the background, while the hash catches
        up with the last bytes (on a loaded machine it trails the download), so that
        :meth:`finish` finds little or nothing left to write. Only an early start: it proves
        nothing and the file may still change (a repair); :meth:`finish` syncs again.

        Its error is kept for :meth:`finish` to raise: Linux reports a writeback error to
        one fsync per open file only, so the second fsync would otherwise return 0 for data
        the disk lost."""
        if self._flushing is None and self.fd >= 0:
            self._flushing = threading.Thread(target=self._flush, args=(self.fd,),
                                              name="isic2020-fsync", daemon=True)
            self._flushing.start()

    def _flush(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self._flush_error = exc

    def _join_flush(self) -> None:
        if self._flushing is not None:
            self._flushing.join()
            self._flushing = None

    def finish(self) -> None:
        """Flush the data to disk before the rename makes it final (an early flush's error
        included: see :meth:`start_flush`)."""
        try:
            self._join_flush()
            if self._flush_error is not None:
                raise self._flush_error
            os.fsync(self.fd)
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        finally:
            self.close()

    def close(self) -> None:
        self._join_flush()  # the descriptor is closed after the fsync that uses it ends
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
