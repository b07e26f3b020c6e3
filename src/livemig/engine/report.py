"""MigrationReport: what one migration did. Its field names are a contract."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MigrationReport"]


@dataclass
class MigrationReport:
    vm: str
    status: str
    policy: str
    qemu_version: str
    accel: str
    preempt: bool
    channels: list[str] = field(default_factory=list)
    switched_at_pass: int | None = None
    switch_reason: str | None = None
    downtime_ms: float | None = None
    blackout_ms: float | None = None
    total_time_ms: float | None = None
    setup_time_ms: float | None = None
    bytes_transferred: int | None = None
    precopy_bytes: int | None = None
    postcopy_bytes: int | None = None
    postcopy_requests: int | None = None
    passes: int = 0
    postcopy_blocktime_ms: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    guest: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    phase: str | None = None
    where: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # The bottleneck: the lab link's shaping and/or QEMU's max-bandwidth; the physical
    # bound is bytes_transferred / its rate, and total time is reported against it.
    recovery: dict[str, Any] | None = None  # post-copy pauses, recovery attempts, recoveries
    evidence: dict[str, Any] | None = None  # when a QEMU died after the switch: what was seen
    link: dict[str, Any] | None = None
    physical_bound_ms: float | None = None
    time_vs_bound: float | None = None
    # What a client of the VM saw (the lab's client namespace, UDP echo every 5 ms):
    # sent, received, lost, max_gap_ms, and when the destination announced the VM.
    network: dict[str, Any] | None = None

    def set_bound(self, rate_bps: int | None) -> None:
        """Record the physical bound for a bottleneck of ``rate_bps`` bytes/s."""
        if not rate_bps or not self.bytes_transferred:
            return
        self.physical_bound_ms = round(self.bytes_transferred / rate_bps * 1000.0, 1)
        if self.total_time_ms:
            self.time_vs_bound = round(self.total_time_ms / self.physical_bound_ms, 3)

    def __repr__(self) -> str:
        return (
            f"<MigrationReport {self.vm} {self.status} policy={self.policy} "
            f"switched_at_pass={self.switched_at_pass} blackout_ms={self.blackout_ms}>"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def event_latency_ms(self, name: str) -> float | None:
        for ev in self.events:
            if ev["name"] == name:
                lat = ev.get("latency_ms")
                return float(lat) if lat is not None else None
        return None
