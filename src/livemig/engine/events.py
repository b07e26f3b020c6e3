"""Migration events, derived from QEMU's pushed QMP events (pure logic).

Names: setup, pass, postcopy-requested, source-stopped, postcopy-started,
destination-resumed, completed, failed, cancelled, and for recovery
postcopy-paused, postcopy-recovered. Each event carries QEMU's own timestamp
(``qemu_ts``, None for events livemig itself makes) and when livemig delivered
it (``delivered_ts``), so delivery latency is measured, not guessed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["EVENT_NAMES", "MigrationEvent", "Side", "qemu_timestamp", "translate"]

Side = Literal["src", "dst"]
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


def qemu_timestamp(msg: Mapping[str, Any]) -> float | None:
    ts = msg.get("timestamp")
    if not isinstance(ts, Mapping):
        return None
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6


# (side, QMP event, MIGRATION status or None) -> livemig event name
_TABLE: Final[dict[tuple[str, str, str | None], str]] = {
    ("src", "MIGRATION", "setup"): "setup",
    ("src", "STOP", None): "source-stopped",
    ("src", "MIGRATION", "postcopy-active"): "postcopy-started",
    ("dst", "RESUME", None): "destination-resumed",
    ("src", "MIGRATION", "completed"): "completed",
    ("src", "MIGRATION", "failed"): "failed",
    ("dst", "MIGRATION", "failed"): "failed",
    ("src", "MIGRATION", "cancelled"): "cancelled",
    ("src", "MIGRATION", "postcopy-paused"): "postcopy-paused",
    ("dst", "MIGRATION", "postcopy-paused"): "postcopy-paused",
}


def translate(side: Side, msg: Mapping[str, Any], delivered_ts: float | None = None) -> MigrationEvent | None:
    """Map one QMP event seen on ``side`` to a livemig event, or None if it names none.

    ``completed`` from the source is only a candidate: the engine publishes it
    once the destination is confirmed running.
    """
    name = msg.get("event")
    data = msg.get("data") or {}
    ts = qemu_timestamp(msg)
    when = time.time() if delivered_ts is None else delivered_ts
    if name == "MIGRATION_PASS":
        if side != "src":
            return None
        n = int(data.get("pass", 0))
        return MigrationEvent("pass", {"n": n, "completed_passes": max(n - 1, 0)}, ts, when)
    status = data.get("status") if name == "MIGRATION" else None
    key = (side, str(name), status)
    mapped = _TABLE.get(key)
    if mapped is None:
        return None
    payload: dict[str, Any] = {"side": side}
    if status is not None:
        payload["status"] = status
    return MigrationEvent(mapped, payload, ts, when)
