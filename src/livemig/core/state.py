"""The migration's explicit state machine and its ``@require`` guard."""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Concatenate, Final, ParamSpec, Protocol, TypeVar

from livemig.errors import StateError

__all__ = [
    "STATUS_TABLE", "TERMINAL", "TRANSITIONS", "MigrationState", "StateMachine", "path", "require",
    "status_transition",
]  # fmt: skip


class MigrationState(enum.Enum):
    IDLE = "idle"
    SETUP = "setup"
    PRECOPY = "precopy"
    POSTCOPY = "postcopy"
    POSTCOPY_PAUSED = "postcopy-paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


S = MigrationState
TRANSITIONS: Final[dict[MigrationState, frozenset[MigrationState]]] = {
    S.IDLE: frozenset({S.SETUP, S.FAILED}),
    S.SETUP: frozenset({S.PRECOPY, S.FAILED, S.CANCELLED}),
    S.PRECOPY: frozenset({S.POSTCOPY, S.COMPLETED, S.FAILED, S.CANCELLED}),
    S.POSTCOPY: frozenset({S.COMPLETED, S.FAILED, S.POSTCOPY_PAUSED}),
    S.POSTCOPY_PAUSED: frozenset({S.POSTCOPY, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL: Final = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def path(start: MigrationState, goal: MigrationState) -> list[MigrationState]:
    """The shortest legal walk from ``start`` to ``goal`` (excluding ``start``); used when
    livemig reattaches to a migration that QEMU has carried on with meanwhile."""
    frontier: list[list[MigrationState]] = [[start]]
    seen = {start}
    while frontier:
        walk = frontier.pop(0)
        if walk[-1] is goal:
            return walk[1:]
        for nxt in sorted(TRANSITIONS[walk[-1]], key=lambda s: s.value):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append([*walk, nxt])
    raise StateError(f"reach {goal}", start, (), "no legal path")


@dataclass(frozen=True)
class Transition:
    old: MigrationState
    new: MigrationState
    at: float
    why: str


class StateMachine:
    """Holds the state; refuses transitions that TRANSITIONS does not list."""

    def __init__(self) -> None:
        self.state = MigrationState.IDLE
        self.history: list[Transition] = []

    def __repr__(self) -> str:
        return f"<StateMachine {self.state} after {len(self.history)} transition(s)>"

    def can(self, new: MigrationState) -> bool:
        return new in TRANSITIONS[self.state]

    def to(self, new: MigrationState, why: str = "") -> bool:
        """Move to ``new``; returns False if already there. Illegal moves raise."""
        if new is self.state:
            return False
        if not self.can(new):
            raise StateError(f"go to {new}", self.state, TRANSITIONS[self.state], why)
        self.history.append(Transition(self.state, new, time.time(), why))
        self.state = new
        return True

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


# The states a side's pushed status moves the migration to: (side, status) -> (the states in
# which it applies, the state it leads to). The core's other status handling (completion,
# failure, the races of a cancel) needs more than a transition, and is in Migration.
STATUS_TABLE: Final[dict[tuple[str, str], tuple[frozenset[MigrationState], MigrationState]]] = {
    ("src", "active"): (frozenset({S.SETUP}), S.PRECOPY),
    ("src", "postcopy-active"): (frozenset({S.SETUP, S.PRECOPY}), S.POSTCOPY),
    ("src", "postcopy-paused"): (frozenset({S.POSTCOPY}), S.POSTCOPY_PAUSED),
    ("dst", "postcopy-paused"): (frozenset({S.POSTCOPY}), S.POSTCOPY_PAUSED),
}


def status_transition(side: str, status: str, state: MigrationState) -> MigrationState | None:
    """The state that ``side`` reporting ``status`` leads to from ``state``, or None."""
    entry = STATUS_TABLE.get((side, status))
    if entry is None or state not in entry[0]:
        return None
    return entry[1]


class _HasMachine(Protocol):
    _sm: StateMachine


P = ParamSpec("P")
T = TypeVar("T")
SelfT = TypeVar("SelfT", bound=_HasMachine)


def require(
    *states: MigrationState, why: str = ""
) -> Callable[[Callable[Concatenate[SelfT, P], Awaitable[T]]], Callable[Concatenate[SelfT, P], Awaitable[T]]]:
    """Guard an async method: it runs only in ``states``, else StateError
    (with ``.state`` and ``.required``). The method keeps its signature."""

    def deco(
        fn: Callable[Concatenate[SelfT, P], Awaitable[T]],
    ) -> Callable[Concatenate[SelfT, P], Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: SelfT, /, *args: P.args, **kwargs: P.kwargs) -> T:
            sm = self._sm
            if sm.state not in states:
                raise StateError(fn.__name__.lstrip("_").replace("_", "-"), sm.state, states, why)
            return await fn(self, *args, **kwargs)

        return wrapper

    return deco
