"""What a caller asks of one migration (backend-neutral; a backend reads what applies)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from livemig.policy import DEFAULT_POLICY, Policy

__all__ = ["DEFAULT_ANNOUNCE", "MigrationOptions"]

# QEMU's defaults are 50/550/5/100 ms: the first RARP 50 ms after the VM resumes. Clients of
# the VM are cut off until the switches learn its new port, so announce sooner and often.
DEFAULT_ANNOUNCE: dict[str, int] = {"initial": 10, "max": 250, "rounds": 6, "step": 50}


@dataclass(frozen=True)
class MigrationOptions:
    policy: Policy = DEFAULT_POLICY
    preempt: bool | None = None  # None: on whenever post-copy is allowed and supported
    max_bandwidth: int | None = None  # bytes/s; None keeps QEMU's default
    downtime_limit_ms: int | None = None
    postcopy_bandwidth: int | None = None  # bytes/s of the background stream in post-copy
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
    recover: bool = True
    recover_deadline_s: float = 120.0
    recover_attempt_s: float = 10.0
    # Self-announce of the destination (RARPs from each NIC's MAC, so that switches learn
    # the VM's new port): QEMU's migration parameters, set on the destination.
    announce: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ANNOUNCE))

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
