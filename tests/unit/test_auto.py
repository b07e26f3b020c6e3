"""The auto policy as a table: recorded sequences of snapshots (converging, stalling,
non-converging, phased), each decision's action, lever and reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from livemig.errors import PolicyError
from livemig.policy import Action, AutoParams, PassStat, Progress, parse_policy
from livemig.policy.auto import GSO_CAP, decide_auto, gso_cap, initial_limit_ms

MiB = 1 << 20
LINK = 25 * MiB  # 200 mbit


@dataclass(frozen=True)
class Step:
    remaining_mib: float  # at the start of this pass
    dirty_mib_s: float
    expect: Action
    reason: str  # a part of the decision's reason
    lever: int | None = None


def walk(steps: list[Step], limit: int = 50, params: AutoParams | None = None, t0: float = 20.0) -> None:
    """Feed the steps as passes 2, 3, ... (pass 1 took ``t0`` s); check each decision."""
    params = params or AutoParams()
    stats: list[PassStat] = []
    t = t0
    for i, step in enumerate(steps):
        n = i + 2
        stats.append(PassStat(n, t, int(step.remaining_mib * MiB), 0, step.dirty_mib_s * MiB, LINK))
        p = Progress(passes_done=n - 1, elapsed_s=t, passes=tuple(stats), downtime_limit_ms=limit)
        d = decide_auto(p, params)
        assert (d.action, d.downtime_limit_ms) == (step.expect, step.lever), (n, str(d))
        assert step.reason in d.reason, (n, d.reason)
        if d.downtime_limit_ms is not None:
            limit = d.downtime_limit_ms
        t += step.remaining_mib * MiB / LINK


C, SW = Action.CONTINUE, Action.SWITCH

SEQUENCES = {
    # 8 MiB/s into 128 MiB at 25 MiB/s: each pass leaves a third; 1.25 MiB (50 ms) in 5
    "converging": [
        Step(128, 8, C, "~5 more pass(es)"),
        Step(41, 8, C, "~4 more pass(es)"),
        Step(13, 8, C, "~3 more pass(es)"),
        Step(4.2, 8, C, "~2 more pass(es)"),
    ],
    # random writes that keep ~20 MiB dirty whatever the pass: raise the limit, then switch
    "stalling": [
        Step(24, 17, C, "~"),
        Step(20, 17, C, "~"),
        Step(20.4, 17, C, "~"),  # one pass within 4% of the best: not yet a stall
        Step(20.2, 17, C, "downtime limit 50 -> 75 ms", 75),
        Step(20.1, 17, C, "downtime limit 75 -> 100 ms", 100),
        Step(20.0, 17, SW, "stopped shrinking it at the pause target (100 ms)"),
    ],
    # the demo's stream: 31 MB/s into a ring, more than the link carries
    "nonconverging": [Step(256, 30, SW, "pre-copy cannot converge")],
    # converging, until the dirty rate jumps mid-migration
    "phased": [
        Step(128, 6, C, "~"),
        Step(31, 6, C, "~"),
        Step(40, 28, SW, "(112%): pre-copy cannot converge"),
    ],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_recorded_sequences(name: str) -> None:
    walk(SEQUENCES[name])


def test_the_first_pass_lowers_the_downtime_limit_to_half_the_target() -> None:
    p = Progress(passes_done=0, elapsed_s=1.0, downtime_limit_ms=300)
    d = decide_auto(p, AutoParams(max_pause_ms=100))
    assert d.action is C and d.downtime_limit_ms == 50 == initial_limit_ms(AutoParams())
    assert "first pass" in d.reason
    again = decide_auto(Progress(passes_done=0, elapsed_s=2.0, downtime_limit_ms=50), AutoParams())
    assert again.downtime_limit_ms is None  # already in force


def test_past_the_budget_it_switches() -> None:
    p = Progress(passes_done=9, elapsed_s=121.0, downtime_limit_ms=100)
    d = decide_auto(p, AutoParams(budget_s=120))
    assert d.action is SW and "budget spent" in d.reason


def test_a_convergence_predicted_past_the_budget_switches_now() -> None:
    # q = 0.8: 512 MiB needs ~24 passes and ~90 s more; the budget leaves 30 s
    walk([Step(512, 20, SW, "past the budget")], params=AutoParams(budget_s=50))


def test_a_slow_convergence_switches_when_postcopy_would_be_much_faster() -> None:
    # the stream guest under TCG, as QEMU measured it at pass 2: 257 MiB left, dirty 76% of
    # the link: pre-copy would need ~20 passes and ~46 s, post-copy ~11 s to move the rest
    d = decide_auto(
        Progress(passes_done=1, elapsed_s=12.0, downtime_limit_ms=50,
                 passes=(PassStat(2, 12.0, 257 * MiB, 0, 17.4 * MiB, 22.9 * MiB),)),
        AutoParams(),
    )  # fmt: skip
    assert d.action is SW and "over 3x post-copy's ~11.2s" in d.reason, d.reason


def test_a_short_convergence_stays_in_precopy_even_when_postcopy_would_be_faster() -> None:
    # the phased guest at pass 6, recorded (docs/policies): 17.5 MiB left, dirty 72% of the
    # link: ~2.7 s more of pre-copy against ~0.8 s of post-copy. Switched, it stalled 805 ms;
    # pre-copy's pause is under the limit
    d = decide_auto(
        Progress(passes_done=5, elapsed_s=14.0, downtime_limit_ms=50,
                 passes=(PassStat(6, 14.0, int(17.5 * MiB), 0, 15.6 * MiB, 21.8 * MiB),)),
        AutoParams(),
    )  # fmt: skip
    assert d.action is C and "~2.7s, to a pause under 50 ms" in d.reason, d.reason


def test_remaining_under_the_limit_is_no_stall() -> None:
    # what is left already fits in the pause: QEMU stops and copies, nothing to raise
    walk(
        [
            Step(30, 8, C, "~"),
            Step(9, 8, C, "~"),
            Step(0.2, 8, C, "~"),
            Step(0.2, 8, C, "~"),
            Step(0.2, 8, C, "~0 more"),
        ]
    )


def test_no_figures_yet_means_continue() -> None:
    d = decide_auto(Progress(passes_done=1, elapsed_s=3.0), AutoParams())
    assert d.action is C and "no pass figures" in d.reason


@pytest.mark.parametrize(
    ("text", "words"),
    [("auto:max-pause=abc", "max-pause='abc'"), ("auto:budget=0", "between 1s"), ("auto:budget=-5s", "budget='-5s'"),
     ("auto:speed=1", "unknown auto setting 'speed'"), ("auto:budget", "KEY=VALUE"), ("auto:max-pause=5ms", "10ms")],
)  # fmt: skip
def test_bad_auto_settings(text: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words.replace("(", r"\(")) as info:
        parse_policy(text)
    assert info.value.exit_code == 2


def test_auto_settings_parse_and_print_as_given() -> None:
    p = parse_policy("auto:max-pause=0.2s,budget=2m")
    assert p.auto == AutoParams(200.0, 120.0) and p.allows_postcopy and p.adaptive
    assert str(p) == "auto:max-pause=200ms,budget=120s" and str(parse_policy("auto")) == "auto"


@pytest.mark.parametrize(
    ("link_Bps", "cap", "why"),
    [
        (25e6, GSO_CAP, "a 64 KiB burst takes 2.6 ms on this link"),  # 200 mbit
        (50e6, GSO_CAP, "a 64 KiB burst takes 1.3 ms on this link"),  # 400 mbit
        (125e6, None, "a 64 KiB burst takes 0.52 ms on this link: GSO size left as it is"),  # 1 gbit
        (None, None, "the link's rate is unknown"),
    ],
    ids=["200mbit", "400mbit", "1gbit", "unknown"],
)
def test_auto_caps_the_gso_size_where_a_burst_is_slow(
    link_Bps: float | None, cap: int | None, why: str
) -> None:
    got, reason = gso_cap(link_Bps)
    assert got == cap and reason.startswith(why)
