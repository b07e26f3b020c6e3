"""The event thread's CPU priority. On a host whose cores are busy (TCG vCPUs, or any
guest load), a thread woken by QEMU's event waits for the scheduler to let it run; that
wait is most of the tail of livemig's event delivery latency. livemig's own CPU use is
small (``manager_cpu_share``: about 2% of one core), so it can ask to run first when it
wakes without costing the guests anything they would notice.

:func:`boosted` lowers the calling thread's nice value for the duration of a block, with
``SCHED_RESET_ON_FORK`` so that no process or thread it starts (QEMU, ``tc``, ``ss``)
inherits the boost. It needs CAP_SYS_NICE (root); without it, it changes nothing and
says so at debug level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Final

__all__ = ["DEFAULT_NICE", "boosted"]

log = logging.getLogger(__name__)

DEFAULT_NICE: Final = -10


@contextlib.contextmanager
def boosted(nice: int = DEFAULT_NICE) -> Iterator[bool]:
    """Run the block with this thread at ``nice``; yields whether the boost took."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        policy = os.sched_getscheduler(0)
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError) as exc:
        log.debug("thread %d keeps its priority: %s", tid, exc)
        yield False
        return
    log.debug("thread %d at nice %d (was %d), reset on fork", tid, nice, before)
    try:
        yield True
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError as exc:  # the thread stays boosted: only a priority
            log.warning("thread %d: its priority could not be restored: %s", tid, exc)
