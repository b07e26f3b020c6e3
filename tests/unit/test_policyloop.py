"""The policy loop's bookkeeping (no I/O): samples, pass figures, decisions, the lever."""

from __future__ import annotations

from livemig.core.backend import MigrationInfo
from livemig.core.policyloop import PolicyLoop
from livemig.policy import Action, parse_policy


def test_ticks_that_change_nothing_are_not_recorded_and_levers_are_taken() -> None:
    now = [100.0]
    loop = PolicyLoop(parse_policy("auto"), 300, clock=lambda: now[0])
    loop.started = 100.0
    first = loop.decide("start", 0)
    assert first is not None and first.action is Action.CONTINUE and loop.limit_ms == 50
    now[0] = 101.0
    loop.sample(MigrationInfo("active", transferred=1 << 20, remaining=9 << 20, mbps=200.0))
    assert loop.decide("tick", 0) is None  # nothing to act on: not recorded
    assert [d["trigger"] for d in loop.decisions] == ["start"] and loop.decisions[0][
        "downtime_limit_ms"
    ] == 50
    now[0] = 104.0
    loop.record_pass(
        2, MigrationInfo("active", transferred=100 << 20, remaining=40 << 20, dirty_rate_Bps=30e6, mbps=200.0)
    )
    decision = loop.decide("pass 2 figures", 1)
    assert decision is not None and decision.action is Action.SWITCH  # 30 MB/s against a 25 MB/s link
    snap = loop.snapshot(1)
    assert (
        snap.elapsed_s == 4.0 and snap.passes[0].remaining_bytes == 40 << 20 and snap.downtime_limit_ms == 50
    )
    assert loop.timeline[0].t == 1.0 and loop.timeline[0].to_dict()["remaining"] == 9 << 20
