"""Work in a forked child (``isic2020.store.forking``): what the CSV checks of a fetch and its
unpackers rely on to stay off the download's GIL.

What a caller depends on: the result is the one the function gives here, computed in another
process; a child that fails or dies is ``ForkFailed`` (the caller then does the work itself),
never a hang or a half result; the child holds none of the parent's descriptors (its sockets,
its data-directory lock) while it runs.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from isic2020.store.forking import ForkFailed, call_in_fork


def _pid_and_square(n: int) -> tuple[int, int]:
    return os.getpid(), n * n


def test_the_result_comes_from_another_process():
    pid, square = call_in_fork(_pid_and_square, 12)
    assert square == 144 and pid != os.getpid()


def test_a_large_result_comes_back_whole():
    big = list(range(300_000))  # several MB of pickle: more than one pipe buffer
    assert call_in_fork(lambda: big) == big


def test_a_child_that_raises_or_dies_is_fork_failed():
    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(ForkFailed):
        call_in_fork(boom)
    with pytest.raises(ForkFailed):
        call_in_fork(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_the_child_holds_none_of_the_parents_descriptors(tmp_path):
    with open(tmp_path / "lock", "w") as held:
        theirs = {held.fileno()}
        mine = call_in_fork(lambda: {int(n) for n in os.listdir("/proc/self/fd")})
    assert not mine & theirs
    assert len(mine) <= 2  # its pipe, and the listing's own descriptor


def test_forking_beside_busy_threads_works():
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=spin) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert [call_in_fork(_pid_and_square, i)[1] for i in range(20)] == [
            i * i for i in range(20)]
    finally:
        stop.set()
        for t in threads:
            t.join()
