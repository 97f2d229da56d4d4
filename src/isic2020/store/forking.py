"""Work in a forked child of this process: its own interpreter and GIL, nothing else shared.

Why: a fetch checks its CSVs and unpacks its archive while up to 64 threads download it. Python
work in the same interpreter holds the GIL the download's threads wait for, so it slows the
download even on an idle CPU. A forked child runs it beside them. No program is run (the package
never runs one, see ``tests/scenarios/test_fault_matrix.py``): the child is this process,
forked, and it leaves with ``os._exit``.

Forking beside running threads is safe for what is done here: the child runs only the work it
was forked for, which takes no lock another thread could have held at the fork (no logging, no
progress bar, no network); it first closes every descriptor but its own pipes
(:func:`close_other_descriptors`: the parent's sockets and lock stay the parent's), SIGTERM and
SIGINT are blocked across the fork, and ``PR_SET_PDEATHSIG`` ends it with its parent (Linux).
Only Linux forks here; elsewhere the caller does the work itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from isic2020.errors import DiskError, Isic2020Error, UsageError, VerificationError
from isic2020.store.libc import libc

# Python 3.12+ warns at every fork of a process with threads; the module docstring says why
# these forks are safe, so the warning would only alarm a user running with -W default.
warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                        category=DeprecationWarning)

T = TypeVar("T")
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
#: The exit status of a forked worker that SIGTERM or SIGINT stopped between two pieces of work.
STOPPED = 2
#: The errors a forked worker reports by kind; its parent raises them again as the same class.
_REPORTED: dict[str, type[Isic2020Error]] = {
    cls.__name__: cls for cls in (VerificationError, DiskError, UsageError)
}


class ForkFailed(Exception):
    """No forked child gave a result (no fork here, it failed, or died): do the work here."""


def error_report(kind: str, message: str, hint: str | None) -> bytes:
    """An error as a forked worker sends it to its parent: JSON on one line (no newline)."""
    return json.dumps({"kind": kind, "message": message, "hint": hint}).encode()


def reported_error(report: bytes, what: str) -> BaseException:
    """The error of an :func:`error_report`, as the parent raises it: the same class for the
    errors a user is told about (one line and a hint), else a RuntimeError saying ``what``
    failed (a bug)."""
    doc = json.loads(report)
    cls = _REPORTED.get(doc.get("kind"))
    if cls is not None:
        return cls(doc["message"], doc.get("hint"))
    return RuntimeError(f"{what} failed: {doc['message']}")


def can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def close_other_descriptors(keep: set[int]) -> None:
    """In a forked child: close every descriptor but ``keep`` (the parent's sockets, its lock,
    other children's pipes, whose end of input they would otherwise never see)."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:  # pragma: no cover - /proc is Linux's, the only place that forks here
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, gone
                os.close(fd)


def read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes of the pipe ``fd``; None at its end (the other side closed it, or died)."""
    chunks = []
    while n:
        block = os.read(fd, n)
        if not block:
            return None
        chunks.append(block)
        n -= len(block)
    return b"".join(chunks)


def fork_child(child: Callable[[], int], keep: set[int]) -> int:
    """Fork; the child closes all descriptors but ``keep``, dies with its parent (the *thread*
    that forked it: call this from one that outlives the child), and exits with ``child()``'s
    status, 70 if it raised. Returns the child's pid to the parent. SIGTERM and SIGINT are
    blocked across the fork: ``child`` installs its own handlers and unblocks them (or leaves
    them blocked). Raises OSError when the fork fails."""
    parent = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if pid:
        return pid
    code = 70
    try:
        close_other_descriptors(keep)
        lib = libc()
        if lib is not None:
            with contextlib.suppress(Exception):
                lib.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() == parent:  # else the parent died before the line above
            code = child()
    except BaseException:  # noqa: BLE001 - its status says it; the parent does the work
        code = 70
    finally:
        os._exit(code)


def call_in_fork(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a forked child, its result pickled back through a pipe (the arguments
    are inherited, never pickled). The child dies with SIGTERM, SIGINT or its parent.
    Raises :class:`ForkFailed` when it gives no result: the caller then runs ``fn`` itself."""
    if not can_fork():
        raise ForkFailed("no fork here")
    import pickle  # here, not at the top: most runs never fork, and its import is a start-up cost

    r, w = os.pipe()

    def child() -> int:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        view = memoryview(pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL))
        while view:
            view = view[os.write(w, view):]
        return 0

    try:
        pid = fork_child(child, {w})
    except OSError as exc:
        os.close(r)
        os.close(w)
        raise ForkFailed(str(exc)) from None
    os.close(w)
    chunks = []
    try:
        while block := os.read(r, 1 << 20):
            chunks.append(block)
    finally:
        os.close(r)
        status = os.waitpid(pid, 0)[1]
    if os.waitstatus_to_exitcode(status) != 0:
        raise ForkFailed(f"the child ended with status {os.waitstatus_to_exitcode(status)}")
    return pickle.loads(b"".join(chunks))  # noqa: S301 - our own child's bytes
