"""The seam between livemig's core and a hypervisor backend.

The core (state machine, policy loop, event bus, recovery, report) never speaks QMP
or libvirt. It drives "a source and a destination" through :class:`Backend`:

* **events in**: the backend pushes :class:`BackendEvent` s (a side's migration status,
  the end of a pass, the source's vCPUs stopping, the destination's resuming), each
  with the hypervisor's own timestamp, into the sink the core gives it;
* **commands out**: prepare (capabilities, parameters, the destination's listener),
  start, switch to post-copy, cancel, pause a side, recover, query progress.

Statuses use one vocabulary (:data:`STATUSES`, QEMU's own names, which libvirt's job
states map onto). A new backend implements :class:`Backend` and nothing in the core
changes; see ``livemig.backends.qemu`` for the first one.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

__all__ = [
    "STATUSES",
    "AttachView",
    "Backend",
    "BackendEvent",
    "EventKind",
    "EventSink",
    "MigrationInfo",
    "Negotiated",
    "Side",
]

Side = Literal["src", "dst"]

# A side's migration status, as the backend reports it (QEMU's names).
STATUSES: Final = frozenset(
    {
        "none", "setup", "active", "device", "pre-switchover", "postcopy-active", "postcopy-paused",
        "postcopy-recover-setup", "postcopy-recover", "completed", "failed", "cancelling", "cancelled",
        "wait-unplug", "colo",
    }
)  # fmt: skip


class EventKind(enum.Enum):
    STATUS = "status"  # a side's migration status changed (``status``)
    PASS = "pass"  # the source began pre-copy pass ``n`` (so pass n-1 ended)
    STOPPED = "stopped"  # the source's vCPUs stopped
    RESUMED = "resumed"  # the destination's vCPUs run


@dataclass(frozen=True)
class BackendEvent:
    """One pushed event from a backend. ``ts`` is the hypervisor's own timestamp (None if
    it gave none); ``arrived`` is when the backend received it (``time.time()``)."""

    kind: EventKind
    side: Side
    arrived: float
    ts: float | None = None
    status: str | None = None
    n: int | None = None


EventSink = Callable[[BackendEvent], Awaitable[None]]


@dataclass(frozen=True)
class MigrationInfo:
    """Progress figures of one side, parsed once from the backend's raw answer.
    Bytes and bytes per second; times in ms; None where the backend gave none."""

    status: str
    total_time_ms: float | None = None
    setup_time_ms: float | None = None
    downtime_ms: float | None = None
    expected_downtime_ms: float | None = None
    transferred: int = 0
    remaining: int = 0
    precopy_bytes: int | None = None
    postcopy_bytes: int | None = None
    postcopy_requests: int | None = None
    dirty_sync_count: int = 0
    dirty_rate_Bps: float = 0.0
    mbps: float = 0.0
    blocktime_ms: float | None = None
    error_desc: str | None = None
    ram_total: int | None = None  # the guest's RAM, bytes

    @property
    def postcopy(self) -> bool:
        return self.status.startswith("postcopy")

    @property
    def measured_dirty_rate_Bps(self) -> float | None:
        """The dirty rate, once QEMU has measured one (at a pass's end: before that it
        reads 0 whatever the guest writes); None in post-copy, where it means nothing."""
        measured = self.dirty_sync_count >= 2 or self.dirty_rate_Bps > 0
        return self.dirty_rate_Bps if measured and not self.postcopy else None


@dataclass(frozen=True)
class Negotiated:
    """What :meth:`Backend.prepare` set up: the URI the source migrates to, the
    capabilities on both sides, and the parameters in force."""

    uri: str
    caps: Mapping[str, bool]
    tls: bool = False
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def preempt(self) -> bool:
        return bool(self.caps.get("postcopy-preempt"))

    @property
    def channels(self) -> list[str]:
        names = ["main"] + (["postcopy-preempt"] if self.preempt else [])
        return [c + ("+tls" if self.tls else "") for c in names]


@dataclass(frozen=True)
class AttachView:
    """Where a migration that went on without its manager stands, on both sides."""

    src_status: str
    dst_status: str
    caps: Mapping[str, bool]
    info: MigrationInfo
    dst_running: bool


class Backend(Protocol):
    """A pair of hypervisors, one migration between them. Every method may raise a
    :class:`~livemig.errors.LivemigError`; lower layers' errors never escape."""

    name: str  # the VM's name, for logs and the report
    hypervisor: str  # what runs each side, in messages: "QEMU"
    version: str  # the hypervisor's version, for the report
    accel: str  # tcg, kvm, or what the backend knows of it

    def lost(self, side: Side) -> asyncio.Event:
        """Set once ``side``'s hypervisor is gone (its connection closed)."""
        ...

    async def open(self, sink: EventSink) -> None:
        """Start delivering events to ``sink`` (in order, per side)."""
        ...

    async def prepare(self, options: Any, allows_postcopy: bool) -> Negotiated:
        """Capabilities and parameters on both sides, then the destination's listener."""
        ...

    async def start(self) -> None:
        """Start the migration (the source connects to the destination)."""
        ...

    async def switch(self) -> None:
        """Ask for post-copy; confirmed by a ``postcopy-active`` status event."""
        ...

    async def cancel(self) -> None:
        """Cancel during pre-copy; confirmed by a ``cancelled`` status event."""
        ...

    async def pause(self, side: Side) -> None:
        """Pause post-copy on ``side`` (must get through a busy hypervisor)."""
        ...

    async def recover(self, timeout: float) -> None:
        """Reconnect both paused sides; confirmed by status events."""
        ...

    async def abort_resume(self) -> bool:
        """Withdraw a resume whose connection is not answered (a dead link), so that the
        source goes back to postcopy-paused; False if this backend cannot."""
        ...

    async def tune(
        self,
        *,
        downtime_limit_ms: int | None = None,
        max_bandwidth: int | None = None,
        postcopy_bandwidth: int | None = None,
    ) -> None:
        """Change parameters while the migration runs (a policy's lever, or an operator's:
        bandwidths in bytes/s)."""
        ...

    async def progress(self, side: Side = "src") -> MigrationInfo:
        """Progress figures (never used to detect a phase)."""
        ...

    async def destination_running(self) -> tuple[bool, str]:
        """Whether the destination's vCPUs run, and its run state's name."""
        ...

    async def attach(self) -> AttachView:
        """Learn where a migration that went on without livemig stands."""
        ...

    async def close(self) -> None:
        """Stop delivering events; release what :meth:`open` took."""
        ...
