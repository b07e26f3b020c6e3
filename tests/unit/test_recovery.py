"""Recovery's schedule and the state walk used when reattaching (pure logic)."""

from __future__ import annotations

import itertools

import pytest

from livemig.core.migration import ATTACH_STATE
from livemig.core.recovery import Backoff
from livemig.core.state import TRANSITIONS, MigrationState, path
from livemig.errors import StateError

S = MigrationState


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = list(itertools.islice(Backoff(first_s=0.5, max_s=4.0).waits(), 7))
    assert waits == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(
    ("deadline", "attempt", "starts"),
    [
        (10.0, 1.0, [0.0, 1.5, 3.5, 6.5, 9.5]),  # waits 0, .5, 1, 2, 2, then 2 would start at 12.5
        (120.0, 10.0, [0.0, 10.5, 21.5, 33.5, 45.5, 57.5, 69.5, 81.5, 93.5, 105.5, 117.5]),
        # a dead link: each attempt ends at its 2 s connect timeout, one starts every 4 s
        (40.0, 2.0, [0.0, 2.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5, 33.5, 37.5]),
        (0.1, 5.0, [0.0]),
    ],
)
def test_backoff_plan_stops_at_the_deadline(deadline: float, attempt: float, starts: list[float]) -> None:
    assert Backoff(deadline_s=deadline).plan(attempt) == starts


@pytest.mark.parametrize(
    ("goal", "walk"),
    [
        (S.PRECOPY, [S.SETUP, S.PRECOPY]),
        (S.POSTCOPY, [S.SETUP, S.PRECOPY, S.POSTCOPY]),
        (S.POSTCOPY_PAUSED, [S.SETUP, S.PRECOPY, S.POSTCOPY, S.POSTCOPY_PAUSED]),
        (S.FAILED, [S.FAILED]),
        (S.CANCELLED, [S.SETUP, S.CANCELLED]),
    ],
)
def test_attach_walks_a_legal_path(goal: MigrationState, walk: list[MigrationState]) -> None:
    got = path(S.IDLE, goal)
    assert got == walk
    for a, b in itertools.pairwise([S.IDLE, *got]):
        assert b in TRANSITIONS[a]


def test_no_path_out_of_a_terminal_state() -> None:
    with pytest.raises(StateError):
        path(S.COMPLETED, S.POSTCOPY)


def test_every_qemu_status_maps_to_a_reachable_state() -> None:
    for status, state in ATTACH_STATE.items():
        assert path(S.IDLE, state), status
    # never "resume" a switched migration as pre-copy, where cancel would be allowed
    assert ATTACH_STATE["postcopy-active"] is S.POSTCOPY
    assert ATTACH_STATE["postcopy-recover"] is S.POSTCOPY_PAUSED
