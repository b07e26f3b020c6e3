"""What a driver of one :class:`~livemig.core.migration.Migration` offers its callers
(orchestrator mode's :class:`~livemig.pair.PairMigration`, libvirt's
:class:`~livemig.virt.DomainMigration`): events from before the start, and the switch
and the cancel once the migration exists."""

from __future__ import annotations

from collections.abc import Callable

from livemig.core.bus import EventBus
from livemig.core.events import MigrationEvent
from livemig.core.migration import Migration
from livemig.errors import MigrationError

__all__ = ["MigrationHandle"]


class MigrationHandle:
    """Mixin: ``name``, ``bus`` and ``migration`` (None until the run creates it)."""

    name: str
    bus: EventBus
    migration: Migration | None

    def on_event(self, callback: Callable[[MigrationEvent], None]) -> None:
        """Call ``callback(event)`` for every event (in the event loop's thread)."""
        self.bus.on(callback)

    def _running(self) -> Migration:
        if self.migration is None:
            raise MigrationError(f"{self.name} is not migrating yet")
        return self.migration

    async def start_postcopy(self, reason: str = "requested by caller") -> None:
        await self._running().start_postcopy(reason)

    async def cancel(self, reason: str = "cancelled by caller") -> None:
        await self._running().cancel(reason)
