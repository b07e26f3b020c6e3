"""The fault bench's watcher of a migration's phases, against a real control socket: it
must not give up while the socket or the migration behind it is not there yet (a trial
whose fault never struck once counted as a completed trial)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from livemig.bench.faults import wait_event
from livemig.control import ControlServer
from livemig.core.events import MigrationEvent


class _Started:
    """What the control socket asks of a migration for ``events``: its events, then its state."""

    state = "completed"

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    async def _gen(self) -> AsyncIterator[MigrationEvent]:
        for n in self.names:
            yield MigrationEvent(n)

    def events(self) -> AsyncIterator[MigrationEvent]:
        return self._gen()


def _serve(
    path: Path, names: tuple[str, ...], not_yet: int, late_s: float, stop: threading.Event
) -> list[int]:
    """Serve on ``path`` after ``late_s``; the migration exists from the ``not_yet + 1``-th ask."""
    asked = [0]

    def current() -> Any:
        asked[0] += 1
        return None if asked[0] <= not_yet else _Started(names)

    async def main() -> None:
        await asyncio.sleep(late_s)
        server = ControlServer(path, "vm", current)
        await server.start()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.01)
        finally:
            await server.stop()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    return asked


def test_it_waits_for_a_socket_and_a_migration_that_come_late(tmp_path: Path) -> None:
    stop = threading.Event()
    asked = _serve(tmp_path / "c.ctl", ("setup", "pass"), not_yet=3, late_s=0.2, stop=stop)
    try:
        assert wait_event(tmp_path / "c.ctl", "vm", "pass", 10.0) is True
    finally:
        stop.set()
    assert asked[0] == 4  # three "not migrating yet" answers, then the events


def test_a_migration_that_ends_without_the_event_is_no_strike(tmp_path: Path) -> None:
    stop = threading.Event()
    _serve(tmp_path / "c.ctl", ("setup", "completed"), not_yet=0, late_s=0.0, stop=stop)
    try:
        assert wait_event(tmp_path / "c.ctl", "vm", "postcopy-paused", 10.0) is False
    finally:
        stop.set()


def test_no_socket_at_all_is_no_strike_at_the_deadline(tmp_path: Path) -> None:
    assert wait_event(tmp_path / "never.ctl", "vm", "pass", 0.3) is False
