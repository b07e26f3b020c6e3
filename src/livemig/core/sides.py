"""Each side's latest pushed migration status, and waiting for the next one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from livemig.core.backend import Side

__all__ = ["Sides"]

WHO = {"src": "source", "dst": "destination"}


class Sides:
    """Statuses as the backend pushed them. ``changed`` is the migration's condition (it
    is notified on every event); ``ended`` says when waiting is pointless."""

    def __init__(self, changed: asyncio.Condition, ended: Callable[[], bool], log: logging.Logger) -> None:
        self._status: dict[str, str] = {}
        self._seq: dict[str, int] = {}  # statuses pushed so far, per side
        self._changed = changed
        self._ended = ended
        self.log = log

    def __repr__(self) -> str:
        return f"<Sides src={self.get('src')} dst={self.get('dst')} seq={self._seq}>"

    def get(self, side: Side) -> str | None:
        return self._status.get(side)

    def update(self, side: Side, status: str) -> None:
        self._status[side] = status
        self._seq[side] = self._seq.get(side, 0) + 1

    async def wait(self, side: Side, ok: frozenset[str], bad: frozenset[str], timeout: float) -> str | None:
        """Wait for ``side``'s next status in ``ok`` or ``bad`` (or one in ``ok`` now);
        returns the status then (which may be neither, after ``timeout``)."""
        seq, want = self._seq.get(side, 0), ok | bad

        def reached() -> bool:
            st = self._status.get(side)
            return st in ok or (self._seq.get(side, 0) > seq and st in want) or self._ended()

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(reached)
        except TimeoutError:
            self.log.info("%s: no status in %s within %gs", WHO[side], sorted(want), timeout)
        return self._status.get(side)
