"""Signal a command while it provably still downloads: a hold, not a race.

A test that interrupts a command "mid-transfer" used to watch its progress (a state file, the
bytes served) and then send the signal. On a loaded machine the test may not run for seconds
after it saw that progress; the command meanwhile finishes, and the signal tests nothing (or
the test fails). The fix is by construction: *before the command starts*, the test installs a
:class:`support.servers.Hold` on the requests that come after the progress it wants (a later
range, a request that repeats one). The command cannot finish past the hold, however late the test
runs; :func:`signal_mid_transfer` waits until one of its requests is held, sends the signal,
and only then lets the held requests be answered.
"""

from __future__ import annotations

import signal
import subprocess
import time

from support.servers import Hold

#: The command's read timeout and retry window while it meets a hold (``cli_env(...,
#: **PATIENT)``): longer than a hold may last (the 60 s below), so that a test that runs
#: late finds the command still waiting at the hold, not given up on the server (the test
#: environment's 5 s would end it).
PATIENT = {"ISIC2020_READ_TIMEOUT": "120", "ISIC2020_RETRY_WINDOW": "120"}


def signal_mid_transfer(
    proc: subprocess.Popen[str], sig: signal.Signals, hold: Hold, *, timeout: float = 60.0
) -> None:
    """Wait until ``hold`` (installed before ``proc`` started) holds a request of ``proc``,
    send ``sig``, then release the hold (its requests are answered normally). AssertionError
    if ``proc`` ends first or no request is held within ``timeout``: a signal then would prove
    nothing."""
    try:
        deadline = time.monotonic() + timeout
        while not hold.wait_held(1, timeout=0.05):
            assert proc.poll() is None, f"ended (exit {proc.returncode}) before the hold"
            assert time.monotonic() < deadline, "no request came to the hold"
        proc.send_signal(sig)
    finally:
        hold.release()
