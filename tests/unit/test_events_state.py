import asyncio
from typing import Any

import pytest

from livemig.backends.qemu.models import parse_event
from livemig.core.events import MigrationEvent
from livemig.core.events import translate as translate_backend
from livemig.core.state import TERMINAL, MigrationState, StateMachine, require
from livemig.errors import StateError

S = MigrationState


def qmp(event: str, ts: float = 100.0, **data: Any) -> dict[str, Any]:
    return {
        "event": event,
        "data": data,
        "timestamp": {"seconds": int(ts), "microseconds": int(ts % 1 * 1e6)},
    }


def translate(side: Any, msg: dict[str, Any], delivered_ts: float | None = None) -> MigrationEvent | None:
    """A QMP event through the QEMU backend's parser, then the core's table."""
    ev = parse_event(side, msg)
    return translate_backend(ev, delivered_ts) if ev is not None else None


@pytest.mark.parametrize(
    ("side", "msg", "name"),
    [
        ("src", qmp("MIGRATION", status="setup"), "setup"),
        ("src", qmp("MIGRATION_PASS", **{"pass": 2}), "pass"),
        ("src", qmp("STOP"), "source-stopped"),
        ("src", qmp("MIGRATION", status="postcopy-active"), "postcopy-started"),
        ("dst", qmp("RESUME"), "destination-resumed"),
        ("src", qmp("MIGRATION", status="completed"), "completed"),
        ("src", qmp("MIGRATION", status="failed"), "failed"),
        ("dst", qmp("MIGRATION", status="failed"), "failed"),
        ("src", qmp("MIGRATION", status="cancelled"), "cancelled"),
        ("dst", qmp("MIGRATION", status="postcopy-paused"), "postcopy-paused"),
        ("src", qmp("MIGRATION", status="active"), None),
        ("dst", qmp("MIGRATION", status="setup"), None),
        ("dst", qmp("STOP"), None),
        ("src", qmp("RESUME"), None),
        ("dst", qmp("MIGRATION_PASS", **{"pass": 1}), None),
        ("src", qmp("SHUTDOWN"), None),
    ],
)
def test_translation_table(side: Any, msg: dict[str, Any], name: str | None) -> None:
    ev = translate(side, msg, delivered_ts=100.5)
    assert (ev.name if ev else None) == name


def test_event_latency_from_qemu_timestamp() -> None:
    ev = translate("src", qmp("STOP", ts=1000.25), delivered_ts=1000.2505)
    assert ev is not None
    assert ev.qemu_ts == pytest.approx(1000.25)
    assert ev.latency_ms == pytest.approx(0.5, abs=1e-3)
    assert MigrationEvent("postcopy-requested").latency_ms is None


def test_pass_counts_completed_passes() -> None:
    ev = translate("src", qmp("MIGRATION_PASS", **{"pass": 3}))
    assert ev is not None and ev.data == {"n": 3, "completed_passes": 2}


def test_an_event_of_one_side_names_it_and_its_host() -> None:
    hosts = {"src": "hostA", "dst": "hostB"}
    for side, who, host, msg in (
        ("src", "source", "hostA", qmp("STOP")),
        ("dst", "destination", "hostB", qmp("RESUME")),
    ):
        ev = parse_event(side, msg)
        assert ev is not None
        got = translate_backend(ev, hosts=hosts)
        assert got is not None and got.data == {"side": who, "host": host}
    ev = parse_event("dst", qmp("MIGRATION", status="failed"))
    assert ev is not None
    got = translate_backend(ev)  # no hosts given: the side alone
    assert got is not None and got.data == {"side": "destination", "status": "failed"}


def test_state_machine_happy_paths() -> None:
    for path in ([S.SETUP, S.PRECOPY, S.COMPLETED], [S.SETUP, S.PRECOPY, S.POSTCOPY, S.COMPLETED]):
        sm = StateMachine()
        for st in path:
            assert sm.to(st)
        assert sm.terminal


@pytest.mark.parametrize(
    ("path", "bad"),
    [([], S.PRECOPY), ([S.SETUP, S.PRECOPY, S.POSTCOPY], S.CANCELLED), ([S.SETUP, S.FAILED], S.PRECOPY),
     ([S.SETUP, S.PRECOPY, S.COMPLETED], S.FAILED)],
)  # fmt: skip
def test_illegal_transitions(path: list[MigrationState], bad: MigrationState) -> None:
    sm = StateMachine()
    for st in path:
        sm.to(st)
    with pytest.raises(StateError) as info:
        sm.to(bad)
    assert info.value.state is sm.state


def test_terminal_states_have_no_exit() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL


class Guarded:
    def __init__(self) -> None:
        self._sm = StateMachine()

    @require(S.SETUP, S.PRECOPY, why="only before the switch")
    async def poke(self) -> str:
        return "ok"


def test_require_guard() -> None:
    g = Guarded()
    with pytest.raises(StateError) as info:
        asyncio.run(g.poke())
    assert info.value.required == (S.SETUP, S.PRECOPY)
    assert info.value.state is S.IDLE
    assert "only before the switch" in str(info.value)
    g._sm.to(S.SETUP)
    assert asyncio.run(g.poke()) == "ok"
