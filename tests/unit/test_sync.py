"""The sync facade's portal: lazy start, cancel on timeout, close cancels what is left."""

from __future__ import annotations

import asyncio
import threading

import pytest

from livemig.sync import Portal, SyncMigration


def test_portal_starts_its_thread_on_first_use_only() -> None:
    before = threading.active_count()
    portal = Portal()
    assert threading.active_count() == before and "not started" in repr(portal)

    async def one() -> int:
        return 1

    assert portal.call(one()) == 1
    assert threading.active_count() == before + 1
    portal.close()
    assert threading.active_count() == before and "closed" in repr(portal)


def test_a_timed_out_call_cancels_its_task() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with Portal() as portal, pytest.raises(TimeoutError, match="cancelled"):
        portal.call(forever(), timeout=0.1)
    assert cancelled.wait(2), "the coroutine kept running after its call timed out"


def test_close_cancels_the_tasks_still_running() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    portal = Portal()
    fut = portal.submit(forever())
    portal.close()
    assert cancelled.is_set() and fut.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        portal.submit(forever())


def test_sync_migration_starts_no_thread_until_it_migrates() -> None:
    before = threading.active_count()
    mig = SyncMigration("vm", policy="manual")
    assert threading.active_count() == before
    assert mig.state == "idle"
