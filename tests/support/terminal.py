"""Run a command with its stderr on a real pseudo-terminal, as a person at a terminal sees it
(progress bars are drawn only there)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def run_on_pty(cmd: list[str], env: dict[str, str], *, columns: int = 120,
               timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` with stderr on a pty ``columns`` wide; (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    block = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not block:
                    break
                chunks.append(block)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")
