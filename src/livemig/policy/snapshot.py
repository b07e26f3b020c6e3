"""What a policy sees (a frozen snapshot, with the history its decision needs) and what
it returns (a decision with its reason and, for auto, a parameter to change)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Action", "Decision", "PassStat", "Progress"]


@dataclass(frozen=True)
class PassStat:
    """The source's figures right after pre-copy pass ``n`` began (QEMU's dirty-bitmap
    sync): ``remaining`` is what the previous pass left dirty."""

    n: int
    t_s: float  # seconds since the migration started
    remaining_bytes: int
    transferred_bytes: int
    dirty_Bps: float
    link_Bps: float


@dataclass(frozen=True)
class Progress:
    """What the core knows when it asks a policy.

    ``passes_done`` counts completed pre-copy passes (QEMU's MIGRATION_PASS
    ``pass`` minus one). Rates are bytes per second; ``None`` when unknown.
    """

    passes_done: int
    elapsed_s: float
    remaining_bytes: int | None = None
    transferred_bytes: int | None = None
    dirty_rate_bps: float | None = None
    bandwidth_bps: float | None = None
    passes: tuple[PassStat, ...] = ()  # each pass's start figures, oldest first
    downtime_limit_ms: int | None = None  # the limit in force (QEMU's default 300)
    expected_downtime_ms: float | None = None
    ram_bytes: int | None = None  # the guest's RAM (QEMU's ram.total)


class Action(enum.Enum):
    CONTINUE = "continue"
    SWITCH = "switch"
    ABORT = "abort"


@dataclass(frozen=True)
class Decision:
    """What to do, why (with the numbers that drove it), and for adaptive policies a
    lever to move: the downtime limit to set (ms), or None to leave it."""

    action: Action
    reason: str
    downtime_limit_ms: int | None = None

    def __str__(self) -> str:
        lever = f" [downtime limit -> {self.downtime_limit_ms} ms]" if self.downtime_limit_ms else ""
        return f"{self.action.value}: {self.reason}{lever}"
