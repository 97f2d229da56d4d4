"""Signal a command while it provably still downloads: a hold, not a race.

A test that interrupts a command "mid-transfer" used to watch its progress (a state file, the
bytes served) and then send the signal. On a loaded machine the test may not run for seconds
after it saw that progress; the command meanwhile finishes, and the signal tests nothing (or
the test fails). :func:`signal_mid_transfer` closes that gap by construction: it holds every
new request for ``name`` at the server (:class:`support.servers.Hold`), waits until one of the
command's requests is held (the command cannot have finished: it waits for bytes), sends the
signal, and only then lets the held requests be answered. However late the test runs, the
signal reaches a command that still has work in flight.
"""

from __future__ import annotations

import signal
import subprocess
import time

from support.servers import FaultServer, Hold


def signal_mid_transfer(
    srv: FaultServer,
    name: str,
    proc: subprocess.Popen[str],
    sig: signal.Signals,
    *,
    timeout: float = 60.0,
    hold: Hold | None = None,
) -> None:
    """Hold ``srv``'s requests for ``name`` until ``proc`` has one waiting, send ``sig``, then
    release them (answered normally). AssertionError if ``proc`` ends, or sends no request
    for ``name`` within ``timeout``: a signal then would prove nothing. ``hold``: one the
    test installed itself (e.g. ``Hold(after=N)`` before the command started)."""
    rule = None
    if hold is None:
        hold = Hold()
        rule = srv.add_fault(hold, name, times=None)
    try:
        deadline = time.monotonic() + timeout
        while not hold.wait_held(1, timeout=0.05):
            assert proc.poll() is None, f"ended (exit {proc.returncode}) before the signal"
            assert time.monotonic() < deadline, f"no request for {name} to hold"
        proc.send_signal(sig)
    finally:
        hold.release()
        if rule is not None:
            srv.remove_fault(rule)
