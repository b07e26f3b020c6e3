"""The engine's reliability logic against the QMP double: the progress watchdog in
pre-copy (cancel, the VM stays on the source) and in post-copy (pause both sides,
then migrate-recover and a resuming migrate), in the order QEMU requires."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from livemig.backends.qemu import Endpoint, QemuBackend
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.core.state import MigrationState
from livemig.policy import parse_policy

from .test_engine_double import FakeMonitor, _precopy_start, endpoints


class OobMonitor(FakeMonitor):
    """Also records which commands went out of band."""

    def __init__(self, side: str, caps: list[str]) -> None:
        super().__init__(side, caps)
        self.oob_sent: list[str] = []

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, oob: bool = False) -> Any:
        if oob:
            self.oob_sent.append(cmd)
        return await super().execute(cmd, args, oob)


def _fast(policy: str, **kw: Any) -> MigrationOptions:
    return MigrationOptions(policy=parse_policy(policy), tick_s=0.02, stall_timeout_s=0.2, **kw)


async def _until(cond: Any, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def _in_postcopy(src: Endpoint, dst: Endpoint) -> tuple[Migration, asyncio.Task[MigrationReport]]:
    """A postcopy-now migration, switched: both sides postcopy-active, the destination resumed."""
    mig = Migration(QemuBackend("vm", src, dst), _fast("postcopy-now", recover_deadline_s=5.0))
    task = asyncio.create_task(mig.run())
    await _precopy_start(src, dst)
    await src.monitor.emit("MIGRATION", 12.0, status="postcopy-active")  # type: ignore[attr-defined]
    await dst.monitor.emit("MIGRATION", 12.004, status="postcopy-active")  # type: ignore[attr-defined]
    await dst.monitor.emit("RESUME", 12.010)  # type: ignore[attr-defined]
    return mig, task


def test_stalled_precopy_is_cancelled_and_reported_as_a_failure() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(QemuBackend("vm", src, dst), _fast("postcopy-after:3"))  # the fake's bytes never move
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        await _until(lambda: src.monitor.sent("migrate_cancel"))  # type: ignore[attr-defined]
        assert not src.monitor.sent("migrate-pause")  # type: ignore[attr-defined]
        await src.monitor.emit("MIGRATION", 20.0, status="cancelled")  # type: ignore[attr-defined]
        report = await asyncio.wait_for(task, 3)
        assert report.status == "failed" and report.phase == "precopy"
        assert report.error and "no migration progress" in report.error

    asyncio.run(main())


def test_stalled_postcopy_pauses_both_sides_then_recovers_and_completes() -> None:
    async def main() -> None:
        src, dst = endpoints()
        src.monitor, dst.monitor = OobMonitor("src", src.monitor.caps), OobMonitor("dst", dst.monitor.caps)  # type: ignore[attr-defined]
        sm, dm = src.monitor, dst.monitor
        mig, task = await _in_postcopy(src, dst)
        assert mig.state is MigrationState.POSTCOPY
        # no progress: both sides are paused, out of band
        await _until(lambda: "migrate-pause" in sm.oob_sent and "migrate-pause" in dm.oob_sent)  # type: ignore[attr-defined]
        await sm.emit("MIGRATION", 13.0, status="postcopy-paused")  # type: ignore[attr-defined]
        await dm.emit("MIGRATION", 13.0, status="postcopy-paused")  # type: ignore[attr-defined]
        assert mig.state is MigrationState.POSTCOPY_PAUSED
        # recovery: the destination listens again first, then the source resumes into it
        await _until(lambda: any(c == "migrate" and (a or {}).get("resume") for c, a in sm.commands))  # type: ignore[attr-defined]
        assert "migrate-recover" in dm.oob_sent  # type: ignore[attr-defined]
        recover = next(a for c, a in dm.commands if c == "migrate-recover")  # type: ignore[attr-defined]
        resume = next(a for c, a in sm.commands if c == "migrate" and (a or {}).get("resume"))  # type: ignore[attr-defined]
        assert resume == {"uri": recover["uri"], "resume": True} and not recover["uri"].endswith(":0")
        # nothing in-band reaches the paused destination (its main loop may be blocked on a fault)
        paused_at = [c for c, _ in dm.commands].index("migrate-pause")
        assert [c for c, _ in dm.commands][paused_at:] == ["migrate-pause", "migrate-recover"]
        assert [c for c, _ in sm.commands].count("migrate-pause") == 1  # type: ignore[attr-defined]
        assert [c for c, _ in dm.commands].count("migrate-pause") == 1, "never pause a recovering destination"  # type: ignore[attr-defined]
        await sm.emit("MIGRATION", 14.0, status="postcopy-recover")  # type: ignore[attr-defined]
        await sm.emit("MIGRATION", 14.1, status="postcopy-active")  # type: ignore[attr-defined]
        await _until(lambda: mig.state is MigrationState.POSTCOPY)
        await sm.emit("MIGRATION", 15.0, status="completed")  # type: ignore[attr-defined]
        report = await asyncio.wait_for(task, 3)
        assert report.status == "completed"
        assert report.recovery is not None and report.recovery["recovered"] == 1
        names = [e["name"] for e in report.events]
        assert names.index("postcopy-paused") < names.index("postcopy-recovered") < names.index("completed")

    asyncio.run(main())


def test_a_destination_that_dies_while_paused_fails_the_migration() -> None:
    async def main() -> None:
        src, dst = endpoints()
        sm, dm = src.monitor, dst.monitor
        _mig, task = await _in_postcopy(src, dst)
        dm.lost.set()  # type: ignore[attr-defined]  # the destination QEMU is gone ...
        await sm.emit("MIGRATION", 13.0, status="postcopy-paused")  # type: ignore[attr-defined]
        report = await asyncio.wait_for(task, 3)
        assert report.status == "failed", report  # ... so there is nothing to recover
        assert report.error and "destination QEMU died" in report.error

    asyncio.run(main())


async def _dst_reports_failed(mig: Migration, sm: Any, dm: Any) -> None:
    await dm.emit("MIGRATION", 11.0, status="failed")  # its stream ended
    assert mig.state is MigrationState.PRECOPY
    await sm.emit("MIGRATION", 11.001, status="cancelled")


async def _src_ends_failed(mig: Migration, sm: Any, dm: Any) -> None:
    await sm.emit("MIGRATION", 11.0, status="failed")  # QEMU 10.0.2, seen in CI


async def _dst_exits_first(mig: Migration, sm: Any, dm: Any) -> None:
    dm.lost.set()  # "load of migration failed": the destination QEMU exits
    await asyncio.sleep(0.05)
    assert mig.state is MigrationState.PRECOPY
    await sm.emit("MIGRATION", 11.0, status="cancelled")


@pytest.mark.parametrize("race", [_dst_reports_failed, _src_ends_failed, _dst_exits_first])
def test_a_cancel_ends_cancelled_however_qemu_races_it(
    race: Callable[[Migration, Any, Any], Awaitable[None]],
) -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("manual")))
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        canceller = asyncio.create_task(mig.cancel())
        await _until(lambda: src.monitor.sent("migrate_cancel"))  # type: ignore[attr-defined]
        await race(mig, src.monitor, dst.monitor)
        await asyncio.wait_for(canceller, 3)
        report = await asyncio.wait_for(task, 3)
        assert report.status == "cancelled" and report.error is None

    asyncio.run(main())


def test_a_source_that_fails_without_a_cancel_fails_the_migration() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("manual")))
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        await src.monitor.emit("MIGRATION", 11.0, status="failed")  # type: ignore[attr-defined]
        report = await asyncio.wait_for(task, 3)
        assert report.status == "failed" and report.error and "source QEMU reports failed" in report.error

    asyncio.run(main())
