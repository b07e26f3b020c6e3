"""Migration events, derived from a backend's pushed events by one table (pure logic).

Names: setup, pass, postcopy-requested, source-stopped, postcopy-started,
destination-resumed, completed, failed, cancelled, and for recovery
postcopy-paused, postcopy-recovered; ``attached`` when livemig takes over a
migration. Each event carries the hypervisor's own timestamp (``qemu_ts``, None
for events livemig itself makes) and when livemig delivered it (``delivered_ts``),
so delivery latency is measured, not guessed. An event of one side names it in its
``data``: ``side`` (``source`` or ``destination``) and, when the caller said, ``host``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from livemig.core.backend import BackendEvent, EventKind
from livemig.core.sides import WHO

__all__ = ["EVENT_NAMES", "MigrationEvent", "translate"]

EVENT_NAMES: Final = (
    "setup",
    "pass",
    "postcopy-requested",
    "source-stopped",
    "postcopy-started",
    "destination-resumed",
    "completed",
    "failed",
    "cancelled",
    "postcopy-paused",
    "postcopy-recovered",
    "attached",
)


@dataclass(frozen=True)
class MigrationEvent:
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    qemu_ts: float | None = None
    delivered_ts: float = field(default_factory=time.time)

    @property
    def latency_ms(self) -> float | None:
        if self.qemu_ts is None:
            return None
        return round((self.delivered_ts - self.qemu_ts) * 1000.0, 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": dict(self.data),
            "qemu_ts": self.qemu_ts,
            "delivered_ts": self.delivered_ts,
            "latency_ms": self.latency_ms,
        }


S, P, STOP, RES = EventKind.STATUS, EventKind.PASS, EventKind.STOPPED, EventKind.RESUMED
# (kind, side, status or None) -> livemig event name. The core holds ``completed`` back
# and publishes it once the destination is confirmed running.
_TABLE: Final[dict[tuple[EventKind, str, str | None], str]] = {
    (S, "src", "setup"): "setup",
    (STOP, "src", None): "source-stopped",
    (S, "src", "postcopy-active"): "postcopy-started",
    (RES, "dst", None): "destination-resumed",
    (S, "src", "completed"): "completed",
    (S, "src", "failed"): "failed",
    (S, "dst", "failed"): "failed",
    (S, "src", "cancelled"): "cancelled",
    (S, "src", "postcopy-paused"): "postcopy-paused",
    (S, "dst", "postcopy-paused"): "postcopy-paused",
}


def translate(
    ev: BackendEvent, delivered_ts: float | None = None, hosts: Mapping[str, str] | None = None
) -> MigrationEvent | None:
    """The livemig event that a backend event names, or None. ``hosts``: each side's host
    name, for the event's data."""
    when = time.time() if delivered_ts is None else delivered_ts
    if ev.kind is P:
        if ev.side != "src" or ev.n is None:
            return None
        return MigrationEvent("pass", {"n": ev.n, "completed_passes": max(ev.n - 1, 0)}, ev.ts, when)
    mapped = _TABLE.get((ev.kind, ev.side, ev.status))
    if mapped is None:
        return None
    payload: dict[str, Any] = {"side": WHO[ev.side]}
    if hosts and ev.side in hosts:
        payload["host"] = hosts[ev.side]
    if ev.status is not None:
        payload["status"] = ev.status
    return MigrationEvent(mapped, payload, ev.ts, when)
