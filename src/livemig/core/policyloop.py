"""The policy's side of a migration (no I/O): the progress samples, each pass's figures,
the downtime limit in force, and every decision with what triggered it. The driver
(:mod:`livemig.core.migration`) feeds it and carries out what it decides."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livemig.core.backend import MigrationInfo
from livemig.policy import Action, Decision, PassStat, Policy, Progress

__all__ = ["PolicyLoop", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One progress sample of the source, for the timeline and the progress display."""

    t: float
    info: MigrationInfo

    def to_dict(self) -> dict[str, Any]:
        i = self.info
        return {"t": round(self.t, 4), "status": i.status, "remaining": i.remaining,
                "transferred": i.transferred, "dirty_rate_Bps": i.dirty_rate_Bps,
                "throughput_Bps": round(i.mbps * 1e6 / 8)}  # fmt: skip


class PolicyLoop:
    def __init__(self, policy: Policy, limit_ms: int, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.limit_ms = limit_ms  # the downtime limit in force
        self.clock = clock
        self.started: float | None = None  # when `migrate` was sent
        self.timeline: list[Sample] = []
        self.passes: list[PassStat] = []
        self.decisions: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return (f"<PolicyLoop {self.policy} samples={len(self.timeline)} passes={len(self.passes)} "
                f"decisions={len(self.decisions)} limit={self.limit_ms}ms>")  # fmt: skip

    @property
    def elapsed_s(self) -> float:
        return self.clock() - (self.started or self.clock())

    @property
    def last(self) -> MigrationInfo | None:
        return self.timeline[-1].info if self.timeline else None

    def sample(self, info: MigrationInfo) -> None:
        self.timeline.append(Sample(self.elapsed_s, info))

    def record_pass(self, n: int, info: MigrationInfo) -> None:
        """The source's figures as pass ``n`` begins (what pass n-1 left dirty)."""
        self.passes.append(
            PassStat(
                n, self.elapsed_s, info.remaining, info.transferred, info.dirty_rate_Bps, info.mbps * 1e6 / 8
            )
        )

    def snapshot(self, passes_done: int) -> Progress:
        last = self.last
        return Progress(
            passes_done=passes_done,
            elapsed_s=self.elapsed_s,
            remaining_bytes=last.remaining if last else None,
            transferred_bytes=last.transferred if last else None,
            dirty_rate_bps=last.dirty_rate_Bps if last else None,
            bandwidth_bps=last.mbps * 1e6 / 8 if last else None,
            passes=tuple(self.passes),
            downtime_limit_ms=self.limit_ms,
            expected_downtime_ms=last.expected_downtime_ms if last else None,
            ram_bytes=last.ram_total if last else None,
        )

    def decide(self, trigger: str, passes_done: int) -> Decision | None:
        """The policy's decision, recorded; None when there is nothing to act on (a tick
        that changes nothing). A lever it moves is taken as in force."""
        snap = self.snapshot(passes_done)
        decision = self.policy.decide(snap)
        lever = decision.downtime_limit_ms
        if decision.action is Action.CONTINUE and trigger == "tick" and lever is None:
            return None  # ticks only matter when they change something (timeouts, levers)
        self.decisions.append(
            {"trigger": trigger, "passes_done": snap.passes_done, "elapsed_s": round(snap.elapsed_s, 3),
             "action": decision.action.value, "reason": decision.reason, "downtime_limit_ms": lever}
        )  # fmt: skip
        if lever is not None:
            self.limit_ms = lever
        return decision
