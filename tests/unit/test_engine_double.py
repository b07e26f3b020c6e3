"""The engine's logic against a QMP test double: events in, commands out.
(Real QEMU migrations are in tests/integration.)"""

import asyncio
from typing import Any

import pytest
from qemu.qmp import EventListener

from livemig.backends.qemu import Endpoint, QemuBackend
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.state import MigrationState
from livemig.errors import StateError, UnsafeCombination, UnsupportedError
from livemig.policy import parse_policy

ALL_CAPS = ["events", "postcopy-ram", "postcopy-preempt", "postcopy-blocktime", "multifd"]


class FakeMonitor:
    def __init__(self, side: str, caps: list[str]) -> None:
        self.side = side
        self.caps = caps
        self.commands: list[tuple[str, dict[str, Any] | None]] = []
        self.lost = asyncio.Event()
        self.listeners: list[EventListener] = []

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, oob: bool = False) -> Any:
        self.commands.append((cmd, args))
        if cmd == "query-migrate-capabilities":
            return [{"capability": c, "state": False} for c in self.caps]
        if cmd == "query-migrate":
            return {"status": "active", "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": "4444"}],
                    "ram": {"remaining": 1 << 20, "transferred": 5 << 20}, "downtime": 3, "total-time": 900}  # fmt: skip
        if cmd == "query-status":
            return {"status": "running", "running": True}
        return {}

    def listener(self, names: Any = None) -> EventListener:
        lst = EventListener(names)
        self.listeners.append(lst)
        return lst

    def remove_listener(self, lst: EventListener) -> None:
        pass

    def sent(self, cmd: str) -> bool:
        return any(c == cmd for c, _ in self.commands)

    async def emit(self, event: str, ts: float, **data: Any) -> None:
        msg = {
            "event": event,
            "data": data,
            "timestamp": {"seconds": int(ts), "microseconds": int(ts % 1 * 1e6)},
        }
        for lst in self.listeners:
            await lst.put(msg)  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)


def endpoints(
    caps: list[str] = ALL_CAPS, version: tuple[int, int, int] = (10, 0, 2)
) -> tuple[Endpoint, Endpoint]:
    eps = [Endpoint(side, FakeMonitor(side, caps), version, "tcg") for side in ("src", "dst")]  # type: ignore[arg-type]
    return eps[0], eps[1]


async def _precopy_start(src: Endpoint, dst: Endpoint) -> None:
    sm, dm = src.monitor, dst.monitor
    for _ in range(50):
        if sm.sent("migrate"):  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.001)
    await dm.emit("MIGRATION", 10.0, status="active")  # type: ignore[attr-defined]
    await sm.emit("MIGRATION", 10.0, status="setup")  # type: ignore[attr-defined]
    await sm.emit("MIGRATION_PASS", 10.01, **{"pass": 1})  # type: ignore[attr-defined]
    await sm.emit("MIGRATION", 10.01, status="active")  # type: ignore[attr-defined]


async def _switch_and_complete(src: Endpoint, dst: Endpoint) -> None:
    sm, dm = src.monitor, dst.monitor
    await sm.emit("MIGRATION_PASS", 12.0, **{"pass": 3})  # type: ignore[attr-defined]
    await sm.emit("MIGRATION", 12.0, status="postcopy-active")  # type: ignore[attr-defined]
    await sm.emit("STOP", 12.0005)  # type: ignore[attr-defined]
    await dm.emit("MIGRATION", 12.004, status="postcopy-active")  # type: ignore[attr-defined]
    await dm.emit("RESUME", 12.010)  # type: ignore[attr-defined]
    await sm.emit("MIGRATION", 13.0, status="completed")  # type: ignore[attr-defined]
    await dm.emit("MIGRATION", 13.0, status="completed")  # type: ignore[attr-defined]


def test_postcopy_after_one_switches_on_the_second_pass_event() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(
            QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("postcopy-after:1"))
        )
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        assert mig.state is MigrationState.PRECOPY
        assert not src.monitor.sent("migrate-start-postcopy")  # type: ignore[attr-defined]
        await src.monitor.emit("MIGRATION_PASS", 11.0, **{"pass": 2})  # type: ignore[attr-defined]
        assert src.monitor.sent("migrate-start-postcopy")  # type: ignore[attr-defined]
        await _switch_and_complete(src, dst)
        report = await asyncio.wait_for(task, 5)
        assert report.status == "completed"
        assert report.switched_at_pass == 1
        assert report.blackout_ms == pytest.approx(9.5, abs=0.01)
        assert report.preempt is True and report.channels == ["main", "postcopy-preempt"]
        names = [e["name"] for e in report.events]
        assert names.index("postcopy-requested") < names.index("postcopy-started") < names.index("completed")
        # capabilities on the destination before migrate-incoming, then the source, then migrate
        dcmds = [c for c, _ in dst.monitor.commands]  # type: ignore[attr-defined]
        assert dcmds.index("migrate-set-capabilities") < dcmds.index("migrate-incoming")
        migrate = next(a for c, a in src.monitor.commands if c == "migrate")  # type: ignore[attr-defined]
        assert migrate == {"uri": "tcp:127.0.0.1:4444"}

    asyncio.run(main())


def test_cancel_is_refused_after_the_switch() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("postcopy-now")))
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        await _switch_and_complete_partial(src)
        assert mig.state is MigrationState.POSTCOPY
        with pytest.raises(StateError) as info:
            await mig.cancel()
        assert info.value.state is MigrationState.POSTCOPY
        assert not src.monitor.sent("migrate_cancel")  # type: ignore[attr-defined]
        await _switch_and_complete(src, dst)
        assert (await asyncio.wait_for(task, 5)).status == "completed"

    async def _switch_and_complete_partial(src: Endpoint) -> None:
        await src.monitor.emit("MIGRATION", 11.0, status="postcopy-active")  # type: ignore[attr-defined]

    asyncio.run(main())


def test_source_completed_is_not_success_until_destination_runs() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(
            QemuBackend("vm", src, dst),
            MigrationOptions(policy=parse_policy("precopy"), confirm_timeout_s=0.2),
        )
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        await src.monitor.emit("STOP", 11.0)  # type: ignore[attr-defined]
        await src.monitor.emit("MIGRATION", 11.1, status="completed")  # type: ignore[attr-defined]
        report = await asyncio.wait_for(task, 5)  # the destination never resumes
        assert report.status == "failed"
        assert "did not resume" in (report.error or "")

    asyncio.run(main())


def test_postcopy_needs_postcopy_ram() -> None:
    async def main() -> None:
        src, dst = endpoints(caps=["events"])
        with pytest.raises(UnsupportedError) as info:
            await Migration(
                QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("postcopy-after:1"))
            ).run()
        assert info.value.capability == "postcopy-ram"
        assert not src.monitor.sent("migrate")  # type: ignore[attr-defined]

    asyncio.run(main())


def test_multifd_with_postcopy_refused_before_10_1() -> None:
    async def main() -> None:
        src, dst = endpoints()
        opts = MigrationOptions(policy=parse_policy("postcopy-now"), multifd=True)
        with pytest.raises(UnsafeCombination):
            await Migration(QemuBackend("vm", src, dst), opts).run()
        assert not dst.monitor.sent("migrate-incoming")  # type: ignore[attr-defined]

    asyncio.run(main())


def test_precopy_policy_does_not_enable_postcopy_and_refuses_switch() -> None:
    async def main() -> None:
        src, dst = endpoints()
        mig = Migration(QemuBackend("vm", src, dst), MigrationOptions(policy=parse_policy("precopy")))
        task = asyncio.create_task(mig.run())
        await _precopy_start(src, dst)
        caps = next(a for c, a in src.monitor.commands if c == "migrate-set-capabilities")  # type: ignore[attr-defined]
        assert caps is not None
        # on, or explicitly off: a QEMU keeps capabilities from its previous migration
        on = {c["capability"] for c in caps["capabilities"] if c["state"]}
        off = {c["capability"] for c in caps["capabilities"] if not c["state"]}
        assert on == {"events"} and "postcopy-ram" in off and "postcopy-preempt" in off
        for ep in (src, dst):
            sent = next(a for c, a in ep.monitor.commands if c == "migrate-set-capabilities")  # type: ignore[attr-defined]
            assert sent == caps  # the same on both sides
        params = next(a for c, a in src.monitor.commands if c == "migrate-set-parameters")  # type: ignore[attr-defined]
        assert params is not None and params["tls-creds"] == "" and params["max-postcopy-bandwidth"] == 0
        with pytest.raises(StateError):
            await mig.start_postcopy()
        task.cancel()

    asyncio.run(main())
