"""QEMU's raw QMP data, checked once: ``query-migrate`` into a
:class:`~livemig.core.backend.MigrationInfo`, events into
:class:`~livemig.core.backend.BackendEvent` s. Nothing past this module reads raw dicts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from livemig.core.backend import BackendEvent, EventKind, MigrationInfo, Side
from livemig.errors import MigrationFailed

__all__ = [
    "WATCHED", "parse_capabilities", "parse_event", "parse_listen_port", "parse_migration_info", "parse_run_state",
    "qemu_timestamp",
]  # fmt: skip

PAGE = 4096
WATCHED: Final = ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME")
_KINDS: Final = {"MIGRATION": EventKind.STATUS, "MIGRATION_PASS": EventKind.PASS,
                 "STOP": EventKind.STOPPED, "RESUME": EventKind.RESUMED}  # fmt: skip


def qemu_timestamp(msg: Mapping[str, Any]) -> float | None:
    ts = msg.get("timestamp")
    if not isinstance(ts, Mapping):
        return None
    try:
        return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
    except (TypeError, ValueError):
        return None


def parse_event(side: Side, msg: Mapping[str, Any], arrived: float | None = None) -> BackendEvent | None:
    """One QMP event as a backend event; None for events the core does not watch, or
    malformed ones."""
    kind = _KINDS.get(str(msg.get("event")))
    if kind is None:
        return None
    data = msg.get("data")
    data = data if isinstance(data, Mapping) else {}
    when = time.time() if arrived is None else arrived
    ts = qemu_timestamp(msg)
    if kind is EventKind.STATUS:
        status = data.get("status")
        if not isinstance(status, str):
            return None
        return BackendEvent(kind, side, when, ts, status=status)
    if kind is EventKind.PASS:
        n = data.get("pass")
        if not isinstance(n, int) or isinstance(n, bool):
            return None
        return BackendEvent(kind, side, when, ts, n=n)
    return BackendEvent(kind, side, when, ts)


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(d: Mapping[str, Any], key: str, default: int = 0) -> int:
    v = _num(d, key)
    return int(v) if v is not None else default


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = _num(d, key)
    return int(v) if v is not None else None


def _malformed(command: str, raw: Any) -> MigrationFailed:
    text = repr(raw)
    return MigrationFailed(
        f"QEMU sent a malformed {command} reply: {text[:120]}{'...' if len(text) > 120 else ''}"
    )


def parse_capabilities(raw: Any) -> dict[str, bool]:
    """``query-migrate-capabilities``: capability -> state."""
    if not isinstance(raw, list) or not all(
        isinstance(c, Mapping) and isinstance(c.get("capability"), str) and isinstance(c.get("state"), bool)
        for c in raw
    ):
        raise _malformed("query-migrate-capabilities", raw)
    return {c["capability"]: c["state"] for c in raw}


def parse_run_state(raw: Any) -> tuple[bool, str]:
    """``query-status``: whether the vCPUs run, and the run state's name."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("running"), bool):
        raise _malformed("query-status", raw)
    return raw["running"], str(raw.get("status"))


def parse_listen_port(raw: Any) -> int:
    """The port a destination listens on, from its ``query-migrate`` (``socket-address``)."""
    addrs = raw.get("socket-address") if isinstance(raw, Mapping) else None
    port = (
        addrs[0].get("port") if isinstance(addrs, list) and addrs and isinstance(addrs[0], Mapping) else None
    )
    try:
        value = int(port)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _malformed("query-migrate (socket-address)", raw) from None
    if not 1 <= value <= 65535:
        raise _malformed("query-migrate (socket-address)", raw)
    return value


def parse_migration_info(raw: Any) -> MigrationInfo:
    """``query-migrate``'s answer (of either side) as a MigrationInfo."""
    d: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    ram = d.get("ram")
    ram = ram if isinstance(ram, Mapping) else {}
    desc = d.get("error-desc")
    return MigrationInfo(
        status=str(d.get("status", "none")),
        total_time_ms=_num(d, "total-time"),
        setup_time_ms=_num(d, "setup-time"),
        downtime_ms=_num(d, "downtime"),
        expected_downtime_ms=_num(d, "expected-downtime"),
        ram_total=_opt_int(ram, "total"),
        transferred=_int(ram, "transferred"),
        remaining=_int(ram, "remaining"),
        precopy_bytes=_opt_int(ram, "precopy-bytes"),
        postcopy_bytes=_opt_int(ram, "postcopy-bytes"),
        postcopy_requests=_opt_int(ram, "postcopy-requests"),
        dirty_sync_count=_int(ram, "dirty-sync-count"),
        dirty_rate_Bps=(_num(ram, "dirty-pages-rate") or 0.0) * _int(ram, "page-size", PAGE),
        mbps=_num(ram, "mbps") or 0.0,
        blocktime_ms=_num(d, "postcopy-blocktime"),
        error_desc=desc if isinstance(desc, str) else None,
    )
