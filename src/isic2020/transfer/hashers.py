"""The digests of a file computed while it downloads, so verifying needs no second pass.

A :class:`Follower` thread reads the contiguous written prefix of the partial file back from
the page cache as the download advances it (``advance(frontier)``) and feeds SHA-256 or the
MD5 of a single-part S3 ETag. :class:`Hashers` runs SHA-256 in one follower and
the MD5 of a single-part ETag in another: hashlib releases the GIL on big blocks, so the two
use two cores. SHA-256 and a single-part MD5 are sequential over the file (one core each).
The per-part MD5s of a multipart ETag are not: :class:`PartHashers` hashes whole parts on
several threads (each part once its bytes are below the frontier, from its own read-back
buffer), so that MD5, the costliest hash, scales with cores instead of capping one file at
one core's MD5 rate. The download's chunks need not align to the S3 parts either way.

Why from the file rather than the buffers as they arrive: the hash must cover exactly the
bytes on disk, in file order, once each; blocks arrive out of order over N connections (and a
resumed run never receives the bytes it already has), so hashing received buffers would need
a reorder window as wide as the chunks in flight (N x 8 MiB) or a second path anyway. What
``pwrite`` just put in the page cache is hashed where it lies, through a read-only map of the
file on a local filesystem (no copy), else read back into one buffer per thread
(:class:`~isic2020.store.filemap.FileBlocks`, which says when a map is safe). Either way
nothing is allocated per block and memory stays flat whatever the size. Invariant: a block
is hashed before the next one is handed out (one thread per reader; hashlib keeps no
reference to what it was fed).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from isic2020.store.filemap import FileBlocks, mappable
from isic2020.transfer.model import BLOCK

#: Bytes per hashing step (one ``update``; a read-back buffer where the file is not mapped).
HASH_BLOCK = BLOCK


class Follower(threading.Thread):
    """Hashes the contiguous finished prefix of the partial file (SHA-256 or MD5, in file
    order) while the rest downloads.

    Invariants: ``pos <= frontier <= size``; bytes are hashed once each, in file order, and
    only below the frontier the download announced; an error ends the thread and is kept in
    ``error`` for the transfer to raise; ``stop`` ends it without digests.
    """

    def __init__(self, fd: int, size: int, want_md5: bool, want_sha256: bool = True,
                 mapped: bool | None = None) -> None:
        """``mapped``: read the file through a map or not (None: the reader decides)."""
        super().__init__(name="isic2020-hash", daemon=True)
        self.fd = fd
        self.mapped = mapped
        self.size = size
        self.sha256 = hashlib.sha256() if want_sha256 else None
        self.md5 = hashlib.md5() if want_md5 else None
        self.pos = 0
        self._frontier = 0
        self._cond = threading.Condition()
        self._halt = False
        self.error: BaseException | None = None

    def advance(self, frontier: int) -> None:
        with self._cond:
            if frontier > self._frontier:
                self._frontier = frontier
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify()

    def run(self) -> None:
        blocks: FileBlocks | None = None
        try:
            blocks = FileBlocks(self.fd, HASH_BLOCK, self.mapped)  # (may fail: kept)
            while self.pos < self.size:
                with self._cond:
                    while self._frontier <= self.pos and not self._halt:
                        self._cond.wait()
                    if self._halt:
                        return
                    frontier = self._frontier
                self.pos += blocks.feed(self.pos, frontier, self._feed)
        except BaseException as exc:  # surfaced by the transfer
            self.error = exc
        finally:
            if blocks is not None:
                blocks.close()

    def _feed(self, block: memoryview) -> None:
        if self.sha256 is not None:
            self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)

    def digests(self) -> tuple[str | None, str | None]:
        """(SHA-256, MD5) in hex, each None when not asked for."""
        sha = self.sha256.hexdigest() if self.sha256 is not None else None
        return sha, (self.md5.hexdigest() if self.md5 else None)


def part_threads() -> int:
    """Threads for the per-part MD5s: every core but the one SHA-256 takes, at least 1, at
    most 8 (each holds one read-back buffer)."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


class PartHashers:
    """The per-part MD5s of a multipart ETag, whole parts on ``threads`` threads.

    Invariants: part ``i`` is ``[i * part_size, min(size, (i + 1) * part_size))``; it is
    handed to a thread only once the frontier reached its end, and hashed by that thread
    alone, in order, from its own buffer, so each byte is hashed once and only below the
    frontier; ``part_md5s`` hold the parts in part order whichever thread finished first; the
    first error ends every thread and is kept in ``error``; ``stop`` ends them without digests.
    """

    def __init__(self, fd: int, size: int, part_size: int, threads: int,
                 mapped: bool | None = None) -> None:
        self.fd = fd
        self.mapped = mapped
        self.size = size
        self.part_size = part_size
        self.count = -(-size // part_size)
        self.part_md5s: list[bytes | None] = [None] * self.count
        self._ready = 0  # parts whose bytes are all below the frontier
        self._next = 0  # the next part to hand out
        self._halt = False
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._work, name=f"isic2020-md5-{k}",
                                         daemon=True) for k in range(max(1, threads))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def advance(self, frontier: int) -> None:
        ready = self.count if frontier >= self.size else frontier // self.part_size
        with self._cond:
            if ready > self._ready:
                self._ready = ready
                self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify_all()

    def join(self) -> None:
        for t in self.threads:
            t.join()

    def _take(self) -> int | None:
        with self._cond:
            while self._next >= self._ready and not self._halt and self._next < self.count:
                self._cond.wait()
            if self._halt or self._next >= self.count:
                return None
            i, self._next = self._next, self._next + 1
            return i

    def _work(self) -> None:
        blocks: FileBlocks | None = None
        try:
            blocks = FileBlocks(self.fd, HASH_BLOCK, self.mapped)
            while (i := self._take()) is not None:
                pos, end = i * self.part_size, min(self.size, (i + 1) * self.part_size)
                h = hashlib.md5()
                blocks.feed(pos, end, h.update)
                self.part_md5s[i] = h.digest()
        except BaseException as exc:  # surfaced by the transfer
            with self._cond:
                self.error = self.error or exc
            self.stop()
        finally:
            if blocks is not None:
                blocks.close()

    def etag(self) -> str | None:
        if any(d is None for d in self.part_md5s):
            return None
        digests: Sequence[bytes] = [d for d in self.part_md5s if d is not None]
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


class Hashers:
    """SHA-256 in one follower; the MD5 of a single-part ETag in another; the per-part MD5s
    of a multipart ETag on :class:`PartHashers` (in one thread the hashes would cap the
    download at the speed of all of them in sequence).

    Invariant: ``followers[0]`` computes SHA-256; ``followers[1]``, present when a single-part
    MD5 is wanted, that MD5; ``parts`` is present when a multipart ETag can be checked. Every
    call fans out to all of them.
    """

    def __init__(self, fd: int, size: int, part_size: int | None, want_md5: bool,
                 threads: int | None = None) -> None:
        mapped = _mapped(fd)  # decided once for every thread (it reads the mount table)
        self.followers = [Follower(fd, size, False, want_sha256=True, mapped=mapped)]
        if want_md5:
            self.followers.append(Follower(fd, size, True, want_sha256=False, mapped=mapped))
        self.parts = (PartHashers(fd, size, part_size, threads or part_threads(), mapped)
                      if part_size else None)

    def _all(self) -> list[Follower | PartHashers]:
        return [*self.followers, *([self.parts] if self.parts is not None else [])]

    def start(self) -> None:
        for f in self._all():
            f.start()

    def advance(self, frontier: int) -> None:
        for f in self._all():
            f.advance(frontier)

    def stop(self) -> None:
        for f in self._all():
            f.stop()

    def join(self) -> BaseException | None:
        """Wait for every thread; the first error, if any."""
        for f in self._all():
            f.join()
        return next((f.error for f in self._all() if f.error is not None), None)

    def digests(self) -> tuple[str, str | None, str | None]:
        sha = self.followers[0].digests()[0] or ""
        md5 = self.followers[1].digests()[1] if len(self.followers) > 1 else None
        mp = self.parts.etag() if self.parts is not None else None
        return sha, md5, mp


def _mapped(fd: int) -> bool | None:
    """Whether the file is read through a map; None where that cannot be told here (the
    descriptor cannot be looked at): each thread's reader then fails, and reports it."""
    try:
        return mappable(fd)
    except OSError:
        return None


def hash_file(
    path: Path, part_size: int | None, want_md5: bool
) -> tuple[str, str | None, str | None]:
    """The same digests the followers compute during a download, from a file on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        hashers = Hashers(fd, size, part_size, want_md5)
        hashers.advance(size)
        hashers.start()
        error = hashers.join()
        if error is not None:
            raise error
        return hashers.digests()
    finally:
        os.close(fd)
