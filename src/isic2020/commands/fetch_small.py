"""The small files of a fetch (the metadata CSVs), fetched side by side in background threads.

Why: each CSV is a few MB, so one at a time it is mostly the latency of a probe and a handful of
ranged requests, with the archives waiting behind it. Here up to :data:`IN_FLIGHT` of them
download at once, each over :data:`CONNECTIONS` connections (fixed, no adaptation), while the
caller's thread starts the first archive: a fetch opens at most ``IN_FLIGHT * CONNECTIONS``
connections more than the archive's own.

Invariants: every small file goes through the same ``fetch_step.fetch_file`` as before (trust,
adopt, download, record), with its own :class:`~isic2020.transfer.engine.Downloader` (a probe
session is not shared between threads); the outcomes are handed back by name, so the report's
order is the manifest's whatever finishes first; the first error is raised by :meth:`wait`
once every thread ended (a file that failed is retried by the next run, like any other).
Callbacks queued with :meth:`after` run once every small file is in (the metadata prechecks
read them).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Sequence

from isic2020.catalog.manifest import FileEntry
from isic2020.commands.fetch_options import FetchRun
from isic2020.commands.fetch_report import FileOutcome
from isic2020.commands.fetch_step import fetch_file
from isic2020.transfer.engine import Downloader
from isic2020.transfer.model import DownloadOptions

#: Small files downloading at once.
IN_FLIGHT = 4
#: Connections per small file.
CONNECTIONS = 2


class SmallFiles:
    """``entries`` fetched by up to :data:`IN_FLIGHT` threads (see the module)."""

    def __init__(self, run: FetchRun, entries: Sequence[FileEntry]) -> None:
        self.run = run
        self.outcomes: dict[str, FileOutcome] = {}
        self._todo = deque(entries)
        self._errors: list[BaseException] = []
        self._after: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        n = min(IN_FLIGHT, len(entries))
        self._live = n
        opts = dataclasses.replace(run.options,
                                   connections=min(CONNECTIONS, run.options.connections),
                                   max_connections=None)
        self._threads = [threading.Thread(target=self._worker, args=(opts,), daemon=True,
                                          name=f"isic2020-small-{k}") for k in range(n)]
        if not n:
            self._done.set()

    def start(self) -> SmallFiles:
        for t in self._threads:
            t.start()
        return self

    def after(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every small file is in (now, if they are)."""
        with self._lock:
            if not self._done.is_set():
                self._after.append(fn)
                return
        fn()

    def wait(self) -> None:
        """Until every thread ended (Ctrl-C interrupts the wait); the first error raised."""
        while not self._done.wait(0.1):
            pass
        for t in self._threads:
            t.join()
        if self._errors:
            raise self._errors[0]

    def _worker(self, opts: DownloadOptions) -> None:
        downloader = Downloader(opts)
        try:
            while True:
                with self._lock:
                    if not self._todo or self._errors:
                        break
                    entry = self._todo.popleft()
                outcome = fetch_file(self.run, downloader, entry)
                with self._lock:
                    self.outcomes[entry.name] = outcome
        except BaseException as exc:  # noqa: BLE001 - raised by wait() in the caller's thread
            with self._lock:
                self._errors.append(exc)
        finally:
            downloader.close()
            self._ended()

    def _ended(self) -> None:
        with self._lock:
            self._live -= 1
            if self._live:
                return
            self._done.set()
            todo, self._after = self._after, []
            failed = bool(self._errors)
        if not failed:
            for fn in todo:
                fn()
