"""The event thread's boost: this thread only, never what it starts, undone after."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from livemig.sched import boosted


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(os.geteuid() != 0, reason="a lower nice value needs CAP_SYS_NICE")
def test_only_this_thread_is_boosted_and_only_while_it_runs() -> None:
    before = _nice()
    with boosted(-5) as ok:
        assert ok and _nice() == -5
        child = subprocess.run(
            ["cut", "-d", " ", "-f", "19", "/proc/self/stat"], capture_output=True, text=True, check=True
        )
        assert child.stdout.strip() == "0"  # a QEMU it starts runs at the normal priority
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(_nice()))
        t.start()
        t.join()
        assert seen == [0]  # and so does a thread it starts
    assert _nice() == before
