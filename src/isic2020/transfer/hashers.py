"""The digests of a file computed while it downloads, so verifying needs no second pass.

A :class:`Follower` thread reads the contiguous finished prefix of the partial file back from
the page cache as the download advances it (``advance(frontier)``) and feeds SHA-256, MD5 and
the per-part MD5s of a multipart S3 ETag. Per-part MD5s come from this sequential pass, so the
download's chunks need not align to the S3 parts. :class:`Hashers` runs SHA-256 and the MD5s
in two followers: hashlib releases the GIL on big blocks, so the two use two cores.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

from isic2020.transfer.model import BLOCK


class Follower(threading.Thread):
    """Hashes the contiguous finished prefix of the partial file while the rest downloads.

    Invariants: ``pos <= frontier <= size``; bytes are hashed once each, in file order, and
    only below the frontier the download announced; an error ends the thread and is kept in
    ``error`` for the transfer to raise; ``stop`` ends it without digests.
    """

    def __init__(
        self, fd: int, size: int, part_size: int | None, want_md5: bool, want_sha256: bool = True
    ) -> None:
        super().__init__(name="isic2020-hash", daemon=True)
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self.sha256 = hashlib.sha256() if want_sha256 else None
        self.md5 = hashlib.md5() if want_md5 else None
        self.part_md5s: list[bytes] = []
        self._part = hashlib.md5() if part_size else None
        self._part_left = part_size or 0
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
        try:
            while self.pos < self.size:
                with self._cond:
                    while self._frontier <= self.pos and not self._halt:
                        self._cond.wait()
                    if self._halt:
                        return
                    frontier = self._frontier
                while self.pos < frontier:
                    block = os.pread(self.fd, min(4 * BLOCK, frontier - self.pos), self.pos)
                    if not block:
                        raise OSError(errno.EIO, "short read from partial file")
                    self._feed(block)
                    self.pos += len(block)
        except BaseException as exc:  # surfaced by the transfer
            self.error = exc

    def _feed(self, block: bytes) -> None:
        if self.sha256 is not None:
            self.sha256.update(block)
        if self.md5 is not None:
            self.md5.update(block)
        if self._part is None:
            return
        view = memoryview(block)
        while view:
            take = min(self._part_left, len(view))
            self._part.update(view[:take])
            self._part_left -= take
            view = view[take:]
            if self._part_left == 0:
                self.part_md5s.append(self._part.digest())
                self._part = hashlib.md5()
                self._part_left = self.part_size or 0
        if self.pos + len(block) >= self.size and self._part_left != self.part_size:
            self.part_md5s.append(self._part.digest())

    def digests(self) -> tuple[str | None, str | None, str | None]:
        mp = None
        if self.part_size:
            mp = f"{hashlib.md5(b''.join(self.part_md5s)).hexdigest()}-{len(self.part_md5s)}"
        sha = self.sha256.hexdigest() if self.sha256 is not None else None
        return sha, (self.md5.hexdigest() if self.md5 else None), mp


class Hashers:
    """SHA-256 in one follower, the MD5s an S3 ETag needs in another (two cores: in one
    thread the two hashes would cap the download at the speed of both in sequence).

    Invariant: ``followers[0]`` computes SHA-256; ``followers[1]``, present when an MD5 or a
    multipart ETag can be checked, the MD5s. Every call fans out to all of them.
    """

    def __init__(self, fd: int, size: int, part_size: int | None, want_md5: bool) -> None:
        self.followers = [Follower(fd, size, None, False, want_sha256=True)]
        if want_md5 or part_size:
            self.followers.append(Follower(fd, size, part_size, want_md5, want_sha256=False))

    def start(self) -> None:
        for f in self.followers:
            f.start()

    def advance(self, frontier: int) -> None:
        for f in self.followers:
            f.advance(frontier)

    def stop(self) -> None:
        for f in self.followers:
            f.stop()

    def join(self) -> BaseException | None:
        """Wait for every follower; the first error, if any."""
        for f in self.followers:
            f.join()
        return next((f.error for f in self.followers if f.error is not None), None)

    def digests(self) -> tuple[str, str | None, str | None]:
        sha = self.followers[0].digests()[0] or ""
        md5 = mp = None
        if len(self.followers) > 1:
            _, md5, mp = self.followers[1].digests()
        return sha, md5, mp


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
