"""The one event fan-out of a migration, in the manner of qemu.qmp's ``EventListener``:
a history, a queue per subscriber (each optionally filtered by name), and callbacks.
Every consumer (the job, the sync facade, the control socket, the CLI) reads from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from livemig.core.events import MigrationEvent

__all__ = ["EventBus"]

log = logging.getLogger(__name__)
Callback = Callable[[MigrationEvent], None]


class EventBus:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.history: list[MigrationEvent] = []
        self.log = logger or log
        self._queues: list[tuple[frozenset[str] | None, asyncio.Queue[MigrationEvent | None]]] = []
        self._callbacks: list[tuple[frozenset[str] | None, Callback]] = []
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<EventBus {state} events={len(self.history)} subscribers={len(self._queues)} "
            f"callbacks={len(self._callbacks)}>"
        )

    @staticmethod
    def _names(names: Iterable[str] | None) -> frozenset[str] | None:
        return frozenset(names) if names is not None else None

    def on(self, callback: Callback, names: Iterable[str] | None = None) -> None:
        """Call ``callback(event)`` for every later event (named ``names``, if given), in the
        event loop's thread. A callback that raises is logged and kept."""
        self._callbacks.append((self._names(names), callback))

    def publish(self, ev: MigrationEvent) -> None:
        if self.closed:
            self.log.warning("event %s after the end of the migration: dropped", ev.name)
            return
        self.history.append(ev)
        lat = f" latency={ev.latency_ms:.3f}ms" if ev.latency_ms is not None else ""
        self.log.info("event %s %s%s", ev.name, dict(ev.data), lat)
        for names, q in self._queues:
            if names is None or ev.name in names:
                q.put_nowait(ev)
        for names, cb in self._callbacks:
            if names is None or ev.name in names:
                try:
                    cb(ev)
                except Exception:
                    self.log.exception("event callback %r failed on %s", cb, ev.name)

    def close(self) -> None:
        """No more events: every subscriber's iteration ends after what it has."""
        self.closed = True
        for _, q in self._queues:
            q.put_nowait(None)

    async def subscribe(self, names: Iterable[str] | None = None) -> AsyncIterator[MigrationEvent]:
        """Every event so far (history first), then live ones, until :meth:`close`."""
        want = self._names(names)
        queue: asyncio.Queue[MigrationEvent | None] = asyncio.Queue()
        for ev in self.history:
            if want is None or ev.name in want:
                queue.put_nowait(ev)
        entry = (want, queue)
        if self.closed:
            queue.put_nowait(None)
        else:
            self._queues.append(entry)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(entry)
