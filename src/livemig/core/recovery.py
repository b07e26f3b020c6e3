"""Post-copy recovery (backend-neutral): the watchdog that notices a dead link, the
backoff schedule, and the pause -> recover sequence with its statistics.

Once post-copy has started the VM's memory is split between the two hypervisors, so a
broken link must never end in a kill: livemig pauses both sides, then asks the backend
to reconnect them, again and again with backoff, until a deadline. After the deadline
both sides stay paused and ``livemig recover NAME`` tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from livemig.core.backend import Backend, Side
from livemig.core.sides import WHO, Sides
from livemig.errors import LivemigError

__all__ = ["PAUSED", "RESUMING", "RUNNING_AGAIN", "Backoff", "Reconnect", "RecoveryStats", "Watchdog"]

CONNECTING: Final = "postcopy-recover-setup"  # the source's resume waits for its connection
CONNECTED: Final = frozenset({"postcopy-recover"})  # connected: the two sides handshake
RESUMING: Final = frozenset({CONNECTING}) | CONNECTED
PAUSED: Final = frozenset({"postcopy-paused"})
RUNNING_AGAIN: Final = frozenset({"postcopy-active", "completed"})


@dataclass(frozen=True)
class Backoff:
    """Waits before attempts 2, 3, ...: ``first_s`` doubling up to ``max_s``; no attempt
    starts after ``deadline_s`` (counted from the pause). An attempt over a dead link
    ends after its connect timeout, so a link that comes back is tried within about
    ``max_s`` plus that timeout."""

    deadline_s: float = 120.0
    first_s: float = 0.5
    max_s: float = 2.0

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

    outages: int = 0  # times post-copy stopped (QEMU's postcopy-paused, whoever caused it)
    pauses: int = 0  # of which livemig paused it (no progress: the link is gone)
    attempts: int = 0
    recovered: int = 0
    last_reason: str | None = None
    last_recovery_ms: float | None = None
    # The deadline passed while the source's resume was still connecting (its SYNs are
    # retried for minutes): QEMU finishes that recovery by itself if the link returns.
    left_connecting: bool | None = None
    recovered_while_detached: bool | None = None  # found so by the next `livemig recover`
    blocked: str | None = None  # why no attempt can succeed (the backend's RecoveryBlocked)

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


@dataclass
class Reconnect:
    """One recovery attempt's sequence: each side paused (once, and only while it is
    postcopy-active), then the backend's reconnect, confirmed by pushed statuses."""

    backend: Backend
    sides: Sides
    log: logging.Logger
    attempt_s: float
    connect_s: float  # an unanswered resume is withdrawn after this, where possible
    asked: set[str] = field(default_factory=set)  # sides asked to pause since the last recovery

    async def pause_side(self, side: Side) -> None:
        """QEMU 10.0.2's destination segfaults (in its OOB monitor thread) on migrate-pause
        once a failed resume has left it recovering: so once per outage, only when active."""
        if self.sides.get(side) == "postcopy-active" and side not in self.asked:
            self.asked.add(side)
            try:
                await self.backend.pause(side)
            except LivemigError as exc:
                self.log.info("pause of the %s: %s", WHO[side], exc)

    async def attempt(self) -> bool:
        """True once the source runs post-copy again (or completed)."""
        src = self.sides.get("src")
        if src in RUNNING_AGAIN:
            return True  # an earlier attempt's connection went through after all
        if src in RESUMING:
            # An earlier resume is still under way (over a cut link, its SYNs are retried
            # for minutes): let it finish, or withdraw it.
            st = await self._settle()
            if st in RUNNING_AGAIN:
                return True
            if st not in PAUSED:
                return False
        for side in ("src", "dst"):
            await self.pause_side(side)
            if self.sides.get(side) not in PAUSED:
                await self.sides.wait(side, PAUSED, frozenset(), 5.0)
        if self.sides.get("src") not in PAUSED:
            return False
        await self.backend.recover(self.attempt_s)
        return await self._settle() in RUNNING_AGAIN

    async def _settle(self) -> str | None:
        """The source's resume, to its end. Connected (``postcopy-recover``), it gets
        ``attempt_s`` to run again; still connecting after ``connect_s``, it is withdrawn
        where the backend can (the source goes back to paused), else waited for."""
        end = PAUSED | {"failed"}
        st = await self.sides.wait("src", RUNNING_AGAIN | CONNECTED, end, self.connect_s)
        if st == CONNECTING:
            if await self.withdraw():
                return self.sides.get("src")  # paused again: the next attempt may start
            wait = max(self.attempt_s - self.connect_s, 0.0)
            st = await self.sides.wait("src", RUNNING_AGAIN | CONNECTED, end, wait)
        if st in CONNECTED:
            st = await self.sides.wait("src", RUNNING_AGAIN, end, self.attempt_s)
        return st

    async def withdraw(self) -> bool:
        """Withdraw a resume that is still connecting; True once the source is paused again."""
        try:
            if not await self.backend.abort_resume():
                return False
        except LivemigError as exc:
            self.log.warning("could not withdraw the connecting resume: %s", exc)
            return False
        return await self.sides.wait("src", PAUSED, frozenset({"failed"}), 5.0) in PAUSED
