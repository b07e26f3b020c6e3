"""libvirt's raw data, checked once: job statistics into
:class:`~livemig.core.backend.MigrationInfo`, QEMU monitor events (which libvirt
forwards with QEMU's own timestamps) into :class:`~livemig.core.backend.BackendEvent` s,
and a domain's state and reason into the migration status livemig's core speaks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import libvirt

from livemig.backends.qemu.models import parse_event
from livemig.core.backend import BackendEvent, EventKind, MigrationInfo, Side

__all__ = [
    "MONITOR_EVENTS",
    "handshakes",
    "lifecycle_name",
    "monitor_event",
    "parse_job_stats",
    "status_from_state",
]

MONITOR_EVENTS: Final = ("MIGRATION", "STOP", "RESUME")  # passes come from MIGRATION_ITERATION

RUNNING, PAUSED, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTOFF
RUNNING_POSTCOPY, RUNNING_POSTCOPY_FAILED = (
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY,
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED,
)
PAUSED_MIGRATION, PAUSED_POSTCOPY = libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY
PAUSED_POSTCOPY_FAILED = libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED


def _names(prefix: str) -> dict[int, str]:
    return {v: k[len(prefix):].lower() for k, v in vars(libvirt).items()
            if k.startswith(prefix) and isinstance(v, int) and not k.endswith("_LAST")}  # fmt: skip


_EVENTS: Final = {
    getattr(libvirt, f"VIR_DOMAIN_EVENT_{k.upper()}"): k
    for k in (
        "defined",
        "undefined",
        "started",
        "suspended",
        "resumed",
        "stopped",
        "shutdown",
        "pmsuspended",
        "crashed",
    )
}


def lifecycle_name(event: int, detail: int) -> str:
    """A lifecycle event as libvirt names it: ``suspended/postcopy``, ``resumed/migrated``."""
    kind = _EVENTS.get(event, str(event))
    details = _names(f"VIR_DOMAIN_EVENT_{kind.upper()}_")
    return f"{kind}/{details.get(detail, detail)}"


def monitor_event(side: Side, event: str, seconds: int, micros: int, details: str | None,
                  arrived: float) -> BackendEvent | None:  # fmt: skip
    """A QEMU event as libvirt forwards it (``details`` is its JSON ``data``)."""
    try:
        data = json.loads(details) if details else {}
    except ValueError:
        return None
    msg = {"event": event, "data": data, "timestamp": {"seconds": seconds, "microseconds": micros}}
    return parse_event(side, msg, arrived)


def _mark(ev: BackendEvent) -> str:
    return ev.status if ev.kind is EventKind.STATUS and ev.status else ev.kind.name


def handshakes(events: list[BackendEvent]) -> dict[str, float | None]:
    """The parts of the pause that are libvirt's own round trips, from QEMU's timestamps
    (pure). ``continue_ms``: the source in ``pre-switchover`` (libvirt always turns on
    pause-before-switchover) until ``device`` (libvirt's ``migrate-continue``).
    ``resume_ms``: the destination ready (its ``postcopy-active`` or ``completed``) until
    it ran (libvirt starts it paused, then sends ``cont``). None: not seen."""
    last: dict[tuple[Side, str], float] = {}
    out: dict[str, float | None] = {"continue_ms": None, "resume_ms": None}
    for ev in sorted((e for e in events if e.ts is not None), key=lambda e: e.ts or 0.0):
        mark, ts = _mark(ev), ev.ts or 0.0
        if ev.side == "src" and mark == "device" and ("src", "pre-switchover") in last:
            out["continue_ms"] = out["continue_ms"] or round((ts - last["src", "pre-switchover"]) * 1000, 3)
        if ev.side == "dst" and mark == "RESUMED" and out["resume_ms"] is None:
            ready = [last[k] for k in (("dst", "postcopy-active"), ("dst", "completed")) if k in last]
            if ready:
                out["resume_ms"] = round((ts - max(ready)) * 1000, 3)
        last[ev.side, mark] = ts
    return out


def _num(stats: Mapping[str, Any], key: str) -> float | None:
    v = stats.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_job_stats(stats: Mapping[str, Any], status: str, completed: bool = False,
                    error: str | None = None) -> MigrationInfo:  # fmt: skip
    """``virDomainGetJobStats`` (or a JOB_COMPLETED event's parameters) as progress
    figures. libvirt reports the dirty rate in pages/s, bandwidth in bytes/s, and
    ``downtime`` as the expected pause while the job runs, the real one once completed."""
    page = _num(stats, "memory_page_size") or 4096.0
    bps = _num(stats, "memory_bps") or 0.0
    downtime = _num(stats, "downtime")
    requests = _num(stats, "memory_postcopy_requests")
    return MigrationInfo(
        status=status,
        total_time_ms=_num(stats, "time_elapsed"),
        setup_time_ms=_num(stats, "setup_time"),
        downtime_ms=downtime if completed else None,
        expected_downtime_ms=None if completed else downtime,
        ram_total=int(v) if (v := _num(stats, "memory_total")) else None,
        transferred=int(_num(stats, "memory_processed") or 0),
        remaining=int(_num(stats, "memory_remaining") or 0),
        postcopy_requests=int(requests) if requests is not None else None,
        dirty_sync_count=int(_num(stats, "memory_iteration") or 0),
        dirty_rate_Bps=(_num(stats, "memory_dirty_rate") or 0.0) * page,
        mbps=bps * 8 / 1e6,
        error_desc=error or (str(stats["errmsg"]) if stats.get("errmsg") else None),
    )


def status_from_state(side: Side, state: int, reason: int, job_active: bool) -> str:
    """Where a side's migration stands, from its domain's state and reason (used only to
    take over a migration; phases otherwise come from pushed events)."""
    if state == PAUSED and reason == PAUSED_POSTCOPY_FAILED:
        return "postcopy-paused"
    if state == RUNNING and reason == RUNNING_POSTCOPY_FAILED:
        return "postcopy-paused"
    if (state, reason) in ((PAUSED, PAUSED_POSTCOPY), (RUNNING, RUNNING_POSTCOPY)):
        return "postcopy-active"
    if side == "src":
        return "active" if job_active else ("completed" if state == SHUTOFF else "none")
    if state == PAUSED and reason == PAUSED_MIGRATION:
        return "active"
    return "completed" if state == RUNNING else "none"
