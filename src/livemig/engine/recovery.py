"""Post-copy recovery's schedule (pure): when to try again, and when to stop trying.

Once post-copy has started the VM's memory is split between the two QEMUs, so a
broken link must never end in a kill: livemig pauses both sides (``migrate-pause``),
then tries ``migrate-recover`` on the destination and ``migrate`` with
``resume: true`` on the source, again and again with backoff, until a deadline. After
the deadline both QEMUs stay paused and ``livemig recover NAME`` tries again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


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
