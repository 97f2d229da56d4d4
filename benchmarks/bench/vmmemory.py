"""A virtual machine's free page reporting, held off while the tools are timed.

Why: where the guest kernel reports free memory to the hypervisor (virtio-balloon free page
reporting, as Firecracker's guests do), a page that stayed free long enough is handed back to
the host, and the next write to it faults on the host first. On the machine this was found on,
writing 400 MB into the page cache cost 1.0 s of system time when the memory had been free for
5 s, and 0.08 s right after another file was deleted. A timed run that starts right after the
previous tool's output was deleted (curl after isic2020, in the alternating order) writes into
warm memory, the next one into cold: the order of the tools, not their code, decided up to a
second of a 400 MB download's CPU. Holding reporting off for the run gives every tool the
same memory; the setting is put back when the run ends.

Only as root, only where the kernel has the knob (``page_reporting``'s ``min_free_ms``: how long
a page must stay free before it is reported); elsewhere nothing changes and the report says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

PARAMS = Path("/sys/module/page_reporting/parameters")
#: How long a free page must wait before it is reported, while the benchmark runs: the
#: largest the kernel this was found on accepts (5 min; more is EINVAL). A page free for
#: longer belongs to no tool's run.
HOLD_MS = 300_000

_saved: list[tuple[Path, str]] = []


def hold_page_reporting(params: Path = PARAMS) -> str:
    """Hold free page reporting off (see the module); a sentence for the report."""
    knob = params / "min_free_ms"
    try:
        before = knob.read_text().strip()
    except OSError:
        return "no free page reporting to hold (not a VM that reports free memory)"
    try:
        knob.write_text(str(HOLD_MS))
    except OSError as exc:
        return (f"free page reporting left on (min_free_ms {before}; {exc.strerror}): "
                "a tool that runs after another's output was deleted writes into warm memory")
    _saved.append((knob, before))
    return (f"free page reporting held off during the run (min_free_ms {before} -> {HOLD_MS}, "
            "put back after), so every tool writes into the same warm memory")


def release_page_reporting() -> None:
    """Put back what :func:`hold_page_reporting` changed."""
    while _saved:
        knob, before = _saved.pop()
        with contextlib.suppress(OSError):
            knob.write_text(before)
