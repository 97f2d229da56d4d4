"""One ranged download of one object from one URL: partial file, pool, hashing, checkpoints.

The object is cut into chunks (``plan_chunk``: sized for the connections, not aligned to S3
parts, since the per-part MD5s come from the hashing followers' sequential pass) and run over
the :class:`~isic2020.transfer.pool.RangePool` (adaptive when ``max_connections`` allows).
What an observer wants first (a zip's central directory, at its end) is fetched first, cut
finer so that every connection helps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from isic2020.errors import DiskError
from isic2020.store.fsutil import disk_error
from isic2020.transfer.checkpoint import Checkpointer
from isic2020.transfer.digests import etag_kind
from isic2020.transfer.hashers import Hashers
from isic2020.transfer.intervals import add_interval, cut, missing_ranges, plan_chunk
from isic2020.transfer.model import READ_BLOCK, DownloadOptions, RemoteObject
from isic2020.transfer.observer import TransferObserver
from isic2020.transfer.partial import PartialFile
from isic2020.transfer.pool import Piece, RangePool, Span, SpanSink
from isic2020.transfer.ranges import RangeClient
from isic2020.transfer.throttle import Throttle

_LOG = logging.getLogger(__name__)

Digests = tuple[str, "str | None", "str | None"]

#: An adaptive pool cuts the queued chunks as they are taken once few are left (about what is
#: queued over the connections, never below this: two seconds at the per-stream rate of the
#: benchmarks, so that a server's burst allowance per request, nginx's one second of
#: ``limit_rate``, does not turn the tail into unthrottled requests), so the last ones end
#: nearly together instead of one connection finishing alone. Each piece is one request and
#: is never cut in flight, so the server sends no byte the client does not take.
SPLIT_MIN = 4 * 1024 * 1024


class RangedTransfer(SpanSink):
    """One ranged transfer of ``remote`` into ``partial`` (resumed from its state file).

    Invariants:
    - ``done`` holds the finished byte intervals (sorted, merged); ``_inflight`` maps each
      piece in flight to ``[start, end of what is written]``; the checkpoint claims both
      (``_written``), so an interrupt loses no written byte, and never more than is written;
    - the followers hash only the written prefix (``_frontier``: the finished intervals from
      byte 0, plus what is written of the piece in flight that starts where they end; a
      piece's bytes arrive once each and in order, so that prefix only grows and is never
      rewritten), so :meth:`run` returns digests of exactly the bytes written, once every
      byte is, and hashing follows the download instead of waiting for whole chunks;
    - the observer's ``begin`` precedes any ``arrived``; a ``prioritize`` it asks for before
      the queue is planned is applied once it is (``_early``);
    - after any exception from :meth:`run` the partial file and its state stay for a resume
      (the caller decides whether to discard them); the fd is closed by :meth:`finish` or
      :meth:`close`.
    """

    def __init__(
        self,
        opts: DownloadOptions,
        remote: RemoteObject,
        partial: Path,
        state_path: Path,
        bar: Any,
        observer: TransferObserver | None = None,
        name: str = "",
    ) -> None:
        """``name``: the file's, for ``opts.log``'s lines."""
        assert remote.size is not None
        self.observer = observer
        self.opts = opts
        self.remote = remote
        self.size = remote.size
        self.file = PartialFile(remote, partial, state_path, opts.log)
        self.bar = bar
        # Sized for the most connections it may run, so that an adaptive pool has queued work
        # for the connections it adds.
        self.chunk = plan_chunk(self.size, max(opts.connections, opts.max_connections or 0),
                                opts.chunk_size)
        self.done: list[list[int]] = []
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.client = RangeClient(
            remote.url, self.size, remote.etag, remote.last_modified,
            timeouts=opts.timeouts, retry=opts.retry, throttle=Throttle(opts.connections),
            abort=self.abort, on_bytes=bar.update if bar is not None else None,
            block=READ_BLOCK, validator=remote.validator,
        )
        adaptive = (opts.max_connections or 0) > opts.connections
        self.pool = RangePool(self.client, opts.connections,
                              max_connections=opts.max_connections,
                              take_min=SPLIT_MIN if adaptive else None,
                              log=opts.log, label=name)
        self.resumed_bytes = 0
        self.hashers: Hashers | None = None
        self.checkpoint: Checkpointer | None = None
        self._early: list[tuple[int, int]] | None = []
        self._inflight: dict[int, list[int]] = {}
        self._head = 0  # the last frontier handed to the followers

    @property
    def transferred(self) -> int:
        return self.client.transferred

    @property
    def retries(self) -> int:
        return self.client.retries

    # -- run ------------------------------------------------------------------------------
    def run(self) -> Digests:
        """Fetch every missing byte; the digests of the whole file."""
        self.done = self.file.open()
        self.resumed_bytes = sum(b - a for a, b in self.done)
        if self.resumed_bytes:
            _LOG.debug("%s: resumed at byte %d (%d of %d bytes already on disk)",
                       self.file.path.name, self._frontier(), self.resumed_bytes, self.size)
        if self.bar is not None:
            self.bar.update(self.resumed_bytes)
        self.hashers = Hashers(self.file.fd, self.size, self.remote.part_size,
                               etag_kind(self.remote.etag) == "md5")
        self.hashers.start()
        self.hashers.advance(self._frontier())
        first = None
        if self.observer is not None:
            self.observer.begin(self.remote, self.file.fd, [list(iv) for iv in self.done],
                                self.prioritize)
            first = self.observer.first_offset(self.size)
        self.pool.put_all(Span(a, b) for a, b in self._plan(first))
        self.pool.close()
        with self.lock:
            early, self._early = self._early or [], None
        for a, b in early:
            self.prioritize(a, b)
        self.checkpoint = Checkpointer(self.file.fd, self._written, self.file.save,
                                       self._checkpoint_failed)
        self.checkpoint.start()
        try:
            self.pool.start(self)
            self.pool.wait()
            self.file.start_flush()  # the disk writes while the hash catches up
            error = self.hashers.join()
            if error is not None:
                raise disk_error(error, self.file.path) if isinstance(error, OSError) else error
            self.checkpoint.stop(flush=False)  # the file is synced and renamed by finish()
            return self.hashers.digests()
        except BaseException:
            self.abort.set()
            self.hashers.stop()
            with contextlib.suppress(OSError, DiskError):
                self.checkpoint.stop(flush=True)  # claim every byte written, in chunks too
            raise

    def _plan(self, first: int | None) -> list[tuple[int, int]]:
        """The chunks still missing, in the order they are fetched: ``[first, size)`` (cut
        finer, so that every connection helps with it) before the rest, each part in order."""
        missing = missing_ranges(self.done, self.size)
        if first is None or not 0 <= first < self.size:
            return cut(missing, self.chunk)
        head = [(max(a, first), b) for a, b in missing if b > first]
        rest = [(a, min(b, first)) for a, b in missing if a < first]
        return cut(head, self._fine_step(self.size - first)) + cut(rest, self.chunk)

    def _fine_step(self, length: int) -> int:
        """Chunk size for a region wanted first: shared by all connections, >= 256 KiB."""
        return max(256 * 1024, min(self.chunk, -(-length // self.opts.connections)))

    def prioritize(self, start: int, end: int) -> None:
        """Fetch what is queued of ``[start, end)`` next, cut so that every connection helps."""
        with self.lock:
            if self._early is not None:  # asked before the queue was planned: applied then
                self._early.append((start, end))
                return
        self.pool.prioritize(start, end, self._fine_step(end - start))

    def finish(self) -> None:
        """Flush the data to disk before the rename makes it final."""
        self.file.finish()

    def keep(self) -> None:
        """After :meth:`run`: one last checkpoint, so the state claims every byte, then
        :meth:`finish`. For a file that stays partial a while (a failed hash: a second copy is
        fetched first): a run interrupted then resumes it whole, not from the last periodic
        checkpoint (which lags most on a loaded machine) re-fetching its tail."""
        assert self.checkpoint is not None
        try:
            self.checkpoint.flush()
        except OSError as exc:
            self.close()
            raise disk_error(exc, self.file.state_path) from None
        self.finish()

    def close(self) -> None:
        self.file.close()

    # -- the pool's sink ------------------------------------------------------------------
    def data(self, piece: Piece, offset: int, block: memoryview) -> None:
        """Write in place (before returning: the block is lent); record how far the piece is
        written (a checkpoint may claim it)."""
        end = self.file.write(offset, block)
        with self.lock:
            self._inflight[piece.start] = [piece.start, end]
            frontier = self._frontier() if offset <= self._head <= end else -1
        assert self.checkpoint is not None and self.hashers is not None
        if frontier >= 0:
            self.hashers.advance(frontier)
        self.checkpoint.poke()
        if self.observer is not None:
            self.observer.arrived(offset, end)

    def end(self, piece: Piece, complete: bool) -> None:
        if not complete:
            return  # what it wrote stays claimed by _inflight
        with self.lock:
            self.done = add_interval(self.done, piece.start, piece.end)
            self._inflight.pop(piece.start, None)
            frontier = self._frontier()
        assert self.hashers is not None and self.checkpoint is not None
        self.hashers.advance(frontier)
        self.checkpoint.poke()
        self.file.written(piece.start, piece.end)

    # -- the checkpoint's side ------------------------------------------------------------
    def _written(self) -> list[list[int]]:
        """Every byte interval written so far: finished chunks and the written part of the
        chunks in flight (the checkpoint's snapshot)."""
        with self.lock:
            out = [list(iv) for iv in self.done]
            for a, b in self._inflight.values():
                if b > a:
                    out = add_interval(out, a, b)
        return out

    def _checkpoint_failed(self, exc: BaseException) -> None:
        self.pool.fail(disk_error(exc, self.file.state_path) if isinstance(exc, OSError)
                       else exc)

    def _frontier(self) -> int:
        """End of the written prefix: what the followers may hash (called under the lock;
        ``_head`` keeps it, so a block elsewhere in the file costs no interval lookup)."""
        head = self.done[0][1] if self.done and self.done[0][0] == 0 else 0
        inflight = self._inflight.get(head)
        self._head = inflight[1] if inflight is not None else head
        return self._head
