"""Post-copy recovery (backend-neutral): the watchdog that notices a dead link, the
backoff schedule, and the pause -> recover sequence with its statistics.

Once post-copy has started the VM's memory is split between the two hypervisors, so a
broken link must never end in a kill: livemig pauses both sides, then asks the backend
to reconnect them, again and again with backoff, until a deadline. After the deadline
both sides stay paused and ``livemig recover NAME`` tries again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Backoff", "RecoveryStats", "Watchdog"]


@dataclass(frozen=True)
class Backoff:
    """Waits before attempts 2, 3, ...: ``first_s`` doubling up to ``max_s``; no attempt
    starts after ``deadline_s`` (counted from the pause)."""

    deadline_s: float = 120.0
    first_s: float = 0.5
    max_s: float = 8.0

    def waits(self) -> Iterator[float]:
        wait = 0.0
        while True:
            yield wait
            wait = self.first_s if wait == 0 else min(wait * 2, self.max_s)

    def plan(self, attempt_s: float) -> list[float]:
        """Start times of the attempts if each takes ``attempt_s`` (for tests and logs)."""
        t, out = 0.0, list[float]()
        for w in self.waits():
            t += w
            if t > self.deadline_s:
                break
            out.append(round(t, 3))
            t += attempt_s
        return out


@dataclass
class RecoveryStats:
    """Post-copy pauses, recovery attempts and recoveries of one migration (the report's
    ``recovery``)."""

    pauses: int = 0
    attempts: int = 0
    recovered: int = 0
    last_reason: str | None = None
    last_recovery_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Watchdog:
    """No bytes moved for ``timeout_s``: the link is gone (a stalled TCP stream does not
    fail by itself for minutes). Fed with the source's transferred bytes at each sample;
    :meth:`feed` returns the stall's length once, when it passes the timeout."""

    timeout_s: float
    _bytes: int | None = None
    _since: float | None = None
    _fired: bool = False

    def feed(self, transferred: int, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        if self._since is None or transferred != self._bytes:
            self._bytes, self._since, self._fired = transferred, now, False
            return None
        stalled = now - self._since
        if self._fired or stalled < self.timeout_s:
            return None
        self._fired = True
        return stalled

    def reset(self, now: float | None = None) -> None:
        self._since, self._fired = (time.time() if now is None else now), False
