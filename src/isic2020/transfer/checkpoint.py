"""Durable progress of one partial file: the state file only ever claims bytes that are on disk.

The download engine writes chunks in place (``pwrite``) into a preallocated partial file and
records which byte intervals hold real data in a small JSON state file, so that a killed run
resumes where it stopped. Two failure modes shape this module:

* **Kill (Ctrl-C, SIGTERM, SIGKILL, OOM)**: whatever was written survives in the page cache, so
  progress recorded often, *inside* chunks too, means a resumed run re-fetches little (a chunk
  is 1/16 of a small file: recording only whole chunks lost almost everything at 50%).
* **Power loss**: the page cache is gone, and the kernel may have persisted the state file but
  not the data it describes; a resumed run would then trust zeros.

Invariant (what makes both safe): **every interval in a state file was fully written before an
``fdatasync`` of the partial file that returned before that state file was written**. Hence
:meth:`Checkpointer.flush` takes the snapshot first, then syncs the data, then writes the
state: a byte that lands after the snapshot is simply not claimed yet. The state file itself
needs no fsync: a lost or older state claims less, never more (it is replaced atomically).

Cost: one ``fdatasync`` per checkpoint, so checkpoints are rate-limited: at most one per
``min_interval`` (0.1 s), and never more than ``duty`` (10 %) of the time spent syncing (a
slow disk spaces them out), plus one on demand at an interrupt. Never one per block.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

Snapshot = Callable[[], list[list[int]]]
WriteState = Callable[[list[list[int]]], None]


class Checkpointer(threading.Thread):
    """Writes the state of one partial file (``fd``) in the background, when told of progress.

    ``snapshot()`` returns the intervals written so far (taken under the caller's lock);
    ``write_state(intervals)`` replaces the state file. ``on_error(exc)`` is called from this
    thread when a checkpoint fails (the transfer aborts); :meth:`flush` raises instead.
    """

    def __init__(
        self,
        fd: int,
        snapshot: Snapshot,
        write_state: WriteState,
        on_error: Callable[[BaseException], None],
        *,
        min_interval: float = 0.1,
        duty: float = 0.1,
    ) -> None:
        super().__init__(name="isic2020-checkpoint", daemon=True)
        self.fd = fd
        self.snapshot = snapshot
        self.write_state = write_state
        self.on_error = on_error
        self.min_interval = min_interval
        self.duty = duty
        self.flushes = 0
        self._gap = min_interval
        self._last = float("-inf")
        self._dirty = False
        self._halt = False
        self._cond = threading.Condition()
        self._io = threading.Lock()  # one checkpoint at a time: the last one wins on disk

    def poke(self) -> None:
        """New bytes were written (cheap: called after every block)."""
        with self._cond:
            if not self._dirty:
                self._dirty = True
                self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._halt:
                    self._cond.wait()
                if self._halt:
                    return
                wait = self._last + self._gap - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)  # a halt wakes it; progress meanwhile is batched
                    if self._halt:
                        return
                    continue
                self._dirty = False
            try:
                self.flush()
            except BaseException as exc:  # surfaced by the transfer
                self.on_error(exc)
                return

    def flush(self) -> None:
        """Snapshot, ``fdatasync`` the data, then write the state (the invariant's order)."""
        with self._io:
            intervals = self.snapshot()
            t0 = time.monotonic()
            os.fdatasync(self.fd)
            took = time.monotonic() - t0
            self.write_state(intervals)
            self.flushes += 1
            self._last = time.monotonic()
            self._gap = max(self.min_interval, took / self.duty)

    def stop(self, flush: bool) -> None:
        """End the thread; with ``flush``, write one last checkpoint (at an interrupt)."""
        with self._cond:
            self._halt = True
            self._cond.notify()
        if self.is_alive():
            self.join()
        if flush:
            self.flush()
