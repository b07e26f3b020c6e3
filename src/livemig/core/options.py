"""What a caller asks of one migration (backend-neutral; a backend reads what applies)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from livemig.policy import DEFAULT_POLICY, Policy

__all__ = ["DEFAULT_ANNOUNCE", "PRE_SWITCH_BANDWIDTH", "MigrationOptions"]

# QEMU's defaults are 50/550/5/100 ms: the first RARP 50 ms after the VM resumes. Clients of
# the VM are cut off until the switches learn its new port, so announce sooner and often.
DEFAULT_ANNOUNCE: dict[str, int] = {"initial": 10, "max": 250, "rounds": 6, "step": 50}

PRE_SWITCH_BANDWIDTH: Final = 1 << 20
"""bytes/s of pre-copy before a switch that comes at once (postcopy-now), unless a
bandwidth was asked for. Pages sent then gain nothing (post-copy sends what is left), and
at the link's rate they fill its queue ahead of the switch's own package, which the
blackout then waits behind. Measured on libvirt (200mbit, tbf queue 100 ms, where the
switch can only come once libvirt's job has started the stream): blackout 55-65 ms
without the cap, 11-15 ms with it. QEMU (10.0) sends the switch-over at full rate and
post-copy at its max-postcopy-bandwidth (0: unlimited), so the cap ends at the switch."""


@dataclass(frozen=True)
class MigrationOptions:
    policy: Policy = DEFAULT_POLICY
    preempt: bool | None = None  # None: on whenever post-copy is allowed and supported
    max_bandwidth: int | None = None  # bytes/s; None keeps QEMU's default
    downtime_limit_ms: int | None = None
    postcopy_bandwidth: int | None = None  # bytes/s of the background stream in post-copy
    # GSO size cap on the source lab host's link for the migration (None: auto's choice for
    # the auto policy, else as it is); restored afterwards
    gso_max: int | None = None
    blocktime: bool = True
    multifd: bool = False
    address: str = "127.0.0.1"
    port: int = 0  # 0: the destination picks a free port
    tick_s: float = 0.25
    confirm_timeout_s: float = 30.0
    # TLS: (source dir, destination dir) of x509 credentials; covers every channel.
    tls_dirs: tuple[str, str] | None = None
    tls: bool = False  # ask for TLS; the job fills tls_dirs (the lab's PKI) or refuses
    # Reliability: no bytes moved for stall_timeout_s means the link is gone. In pre-copy
    # the migration is cancelled (the VM stays on the source); in post-copy both sides
    # are paused and recovery is retried with backoff until recover_deadline_s.
    stall_timeout_s: float = 5.0
    # A stall after the switch but before the destination resumed is waited out this long
    # before the pause: the destination is still loading the devices' state, and QEMU
    # cannot recover a post-copy whose load broke (a pause there killed a destination that
    # had only hung: the stop-dst/switchover fault).
    switch_stall_s: float = 60.0
    recover: bool = True
    recover_deadline_s: float = 120.0
    recover_attempt_s: float = 10.0
    # A resume whose connection is not answered within this is withdrawn (where the
    # backend can) and tried again: a link that comes back is used within seconds.
    recover_connect_s: float = 2.0
    # Self-announce of the destination (RARPs from each NIC's MAC, so that switches learn
    # the VM's new port): QEMU's migration parameters, set on the destination.
    announce: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ANNOUNCE))

    def for_start(self) -> MigrationOptions:
        """What the backend is asked for when the job starts (pure): as given, except that
        a policy which switches at once pre-copies at :data:`PRE_SWITCH_BANDWIDTH` unless a
        bandwidth was asked for. The report's ``options`` stay as given; its
        ``parameters`` show what the backend set."""
        if self.policy.switches_at_once and self.max_bandwidth is None:
            return replace(self, max_bandwidth=PRE_SWITCH_BANDWIDTH)
        return self

    def summary(self) -> dict[str, Any]:
        """The options in force, for the report: the policy as given, and every setting
        (rates in bytes/s, times in s or ms as named); TLS directories are not included."""
        d = asdict(self)
        d["policy"] = str(self.policy)
        d.pop("tls_dirs", None)
        for name in ("max_bandwidth", "postcopy_bandwidth"):
            d[f"{name}_Bps"] = d.pop(name)
        d["announce_ms"] = d.pop("announce")
        return d
