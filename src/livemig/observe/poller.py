"""The baseline that pushed events replace: a manager that polls ``query-migrate``
every 50 ms learns of a phase change, on average, half a period late.

:class:`StatusPoller` polls the source QEMU's second monitor during a migration and
notes when it first saw each status. :func:`poll_latencies` matches those sightings
with QEMU's own timestamps of the same changes (from the pushed events), so that
both ways of learning are measured against the same clock, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from livemig.aio import reap
from livemig.errors import LivemigError
from livemig.qemu.monitor import Monitor

__all__ = ["StatusPoller", "poll_latencies"]

# query-migrate status -> (livemig event, data filter) carrying QEMU's timestamp of that change
STATUS_EVENT: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "setup": ("setup", {}),
    "active": ("pass", {"n": 1}),  # MIGRATION active and MIGRATION_PASS 1 come together
    "device": ("source-stopped", {}),
    "postcopy-active": ("postcopy-started", {}),
    "completed": ("completed", {}),
}


class StatusPoller:
    """Polls ``query-migrate`` on ``qmp`` every ``period_s`` until stopped."""

    def __init__(self, vm: str, qmp: Path, period_s: float = 0.05) -> None:
        self.monitor = Monitor(vm, "poller", qmp)
        self.period_s = period_s
        self.seen: dict[str, float] = {}  # status -> time.time() of the first poll that showed it
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<StatusPoller every {self.period_s * 1000:g}ms polls={self.polls} seen={sorted(self.seen)}>"

    async def start(self) -> None:
        await self.monitor.connect()
        self._task = asyncio.create_task(self._run(), name="status-poller")

    async def _run(self) -> None:
        next_t = time.monotonic()
        while True:
            with contextlib.suppress(LivemigError):
                info = await self.monitor.execute("query-migrate")
                self.polls += 1
                status = info.get("status")
                if status and status not in self.seen:
                    self.seen[str(status)] = time.time()
            next_t += self.period_s
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    async def stop(self) -> None:
        if self._task is not None:
            await reap(self._task)
        await self.monitor.close()


def poll_latencies(seen: Mapping[str, float], events: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """ms from QEMU's timestamp of each status change to the poll that first showed it."""
    evs = list(events)
    out: dict[str, float] = {}
    for status, seen_ts in seen.items():
        name, match = STATUS_EVENT.get(status, ("", {}))
        for ev in evs:
            data = ev.get("data") or {}
            if ev["name"] == name and ev.get("qemu_ts") and all(data.get(k) == v for k, v in match.items()):
                out[status] = round((seen_ts - float(ev["qemu_ts"])) * 1000.0, 3)
                break
    return out
