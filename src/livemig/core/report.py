"""MigrationReport: what one migration did (its field names are a contract), and the
pure builder that assembles it from what the core recorded and the backend reported."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from livemig.core.backend import MigrationInfo, Negotiated

__all__ = ["MigrationReport", "Switch", "build_report"]


@dataclass
class MigrationReport:
    vm: str
    status: str
    policy: str
    qemu_version: str
    accel: str
    preempt: bool
    started_at: str | None = None  # wall clock, ISO 8601 UTC
    ended_at: str | None = None
    livemig_version: str | None = None
    ram_bytes: int | None = None  # the guest's RAM
    hosts: dict[str, Any] | None = None  # {"source": ..., "destination": ...}: where it moved from and to
    options: dict[str, Any] = field(default_factory=dict)  # the options in force
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
    tunings: list[dict[str, Any]] = field(default_factory=list)  # runtime changes: when, by whom, what
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
    # livemig's own cost: the CPU time of its process while it drove the migration, and
    # that as a share of one core over the same wall-clock time
    manager_cpu_ms: float | None = None
    manager_cpu_share: float | None = None
    # What a client of the VM saw (the lab's client namespace, UDP echo every 5 ms):
    # sent, received, lost, max_gap_ms, and when the destination announced the VM.
    network: dict[str, Any] | None = None
    backend: dict[str, Any] | None = None  # which backend moved it, when not livemig's own QEMUs

    def set_bound(self, rate_bps: int | None) -> None:
        """Record the physical bound for a bottleneck of ``rate_bps`` bytes/s."""
        if not rate_bps or not self.bytes_transferred:
            return
        self.physical_bound_ms = round(self.bytes_transferred / rate_bps * 1000.0, 1)
        if self.total_time_ms and self.physical_bound_ms:  # a cancelled run may have sent a few bytes
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

    @property
    def last_event_ts(self) -> float | None:
        """When the last event (the end, for a finished migration) was delivered."""
        return max((float(e["delivered_ts"]) for e in self.events), default=None)

    def event_latency_ms(self, name: str) -> float | None:
        for ev in self.events:
            if ev["name"] == name:
                lat = ev.get("latency_ms")
                return float(lat) if lat is not None else None
        return None


@dataclass(frozen=True)
class Switch:
    """When and why post-copy was requested, and whether it took effect."""

    requested_at_pass: int | None = None
    reason: str | None = None
    took_effect: bool = False


def build_report(
    base: MigrationReport,
    switch: Switch,
    negotiated: Negotiated | None,
    blackout: tuple[float | None, float | None],
    src: MigrationInfo | None,
    dst: MigrationInfo | None,
) -> MigrationReport:
    """Fill ``base`` (identity, status, events, decisions, failure) with the switch, the
    channels, the STOP->RESUME blackout (hypervisor timestamps) and the final figures."""
    r = base
    if negotiated is not None:
        r.preempt = negotiated.preempt
        r.channels = negotiated.channels
        r.parameters = dict(negotiated.parameters)
    if switch.took_effect:
        r.switched_at_pass = switch.requested_at_pass
        r.switch_reason = switch.reason
    elif switch.reason is not None:
        r.switch_reason = (
            f"requested at pass {switch.requested_at_pass}, but pre-copy converged first: nothing switched"
        )
    stop, resume = blackout
    if stop is not None and resume is not None:
        r.blackout_ms = round((resume - stop) * 1000.0, 3)
    if src is not None:
        r.ram_bytes = src.ram_total or r.ram_bytes
        r.downtime_ms = src.downtime_ms
        r.total_time_ms = src.total_time_ms
        r.setup_time_ms = src.setup_time_ms
        r.bytes_transferred = src.transferred
        r.precopy_bytes = src.precopy_bytes
        r.postcopy_bytes = src.postcopy_bytes
        r.postcopy_requests = src.postcopy_requests
    if dst is not None:
        r.postcopy_blocktime_ms = dst.blocktime_ms
    return r
