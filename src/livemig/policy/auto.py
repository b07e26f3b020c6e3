"""``auto``: pre-copy when it will converge to a short pause, post-copy when it will not.

A pure decision over a :class:`~livemig.policy.snapshot.Progress` that carries each
pass's start figures (what the previous pass left dirty, QEMU's dirty rate and its
measured throughput). In order:

1. Past the time budget: switch (post-copy finishes any migration; pre-copy may not).
2. During the first pass: copy all memory once (post-copy after one pass beats
   switching at once: the kernel and read-mostly memory arrive before the VM resumes),
   and set the downtime limit low, to half the pause target: when the guest dirties
   well under the link, pre-copy converges to a pause far below QEMU's 300 ms default.
3. The dirty rate at 90% of the link or more: each pass re-sends about what it sent,
   pre-copy cannot converge: switch.
4. The remaining bytes stopped shrinking (within 4% of the best seen, for two passes;
   KubeVirt's stall detector): raise the downtime limit by half, up to the pause
   target; at the target, switch.
5. Predict the passes and the time pre-copy still needs (a geometric series with
   ratio dirty/link) to reach the limit. Over the budget, or both long (over
   :data:`LONG_S`) and more than three times what post-copy would take to move what is
   left (remaining / link): switch. Else continue. A few more seconds of pre-copy cost
   the guest nothing it notices (its progress stays at 0.95-0.99 of its rate before),
   while post-copy's first touches of what is left stall it: the phased guest, switched
   with ~2.7 s of pre-copy to go, stalled 805 ms where pre-copy's pause was 409 ms.

Every decision says which rule fired and the numbers behind it.

Pacing, decided before the migration starts (:func:`gso_cap`): on a link where one
64 KiB GSO burst takes over 1 ms, auto caps the source link's GSO size at 8 KiB for the
migration. At the bottleneck each post-copy page's answer waits behind about one such
burst of the background stream; docs/pacing-gso measured the stream guest's stall at
200 mbit at 1069 ms with 64 KiB bursts and 356 ms with 8 KiB ones, and no cost to a
pre-copy that converges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from livemig.policy.snapshot import Action, Decision, PassStat, Progress
from livemig.units import GSO_MAX

__all__ = ["GSO_CAP", "AutoParams", "decide_auto", "gso_cap", "initial_limit_ms"]

NONCONVERGING: Final = 0.9  # dirty rate / link rate at which pre-copy cannot converge
STALL_TOLERANCE: Final = 0.04  # remaining within 4% of the best seen counts as no progress
STALL_PASSES: Final = 2  # for this many passes in a row
RAMP: Final = 1.5  # the downtime limit's step when pre-copy stalls
SLOWER_THAN_POSTCOPY: Final = 3.0  # pre-copy's predicted time vs post-copy's, past which to switch
LONG_S: Final = 10.0  # ... when pre-copy also needs longer than this
QEMU_DEFAULT_LIMIT_MS: Final = 300
MIB: Final = float(1 << 20)


@dataclass(frozen=True)
class AutoParams:
    max_pause_ms: float = 100.0  # the pause the guest should see at most (pre-copy's)
    budget_s: float = 120.0  # past this, post-copy finishes the migration


GSO_CAP: Final = 8192  # bytes: one burst at 200 mbit is 0.33 ms
GSO_BURST_MS: Final = 1.0  # a default burst slower than this at the link's rate is capped


def gso_cap(link_Bps: float | None) -> tuple[int | None, str]:
    """The GSO size auto asks of the source's link for a migration across ``link_Bps``
    (None: leave it), and why (pure)."""
    if not link_Bps:
        return None, "the link's rate is unknown: GSO size left as it is"
    burst_ms = GSO_MAX / link_Bps * 1000.0
    if burst_ms <= GSO_BURST_MS:
        return None, f"a 64 KiB burst takes {burst_ms:.2f} ms on this link: GSO size left as it is"
    return GSO_CAP, (
        f"a 64 KiB burst takes {burst_ms:.1f} ms on this link, and each post-copy page's answer "
        f"waits behind one: GSO size capped at {GSO_CAP // 1024} KiB"
    )


def initial_limit_ms(params: AutoParams) -> int:
    return max(10, int(params.max_pause_ms / 2))


def _stalled(passes: list[PassStat]) -> tuple[bool, int]:
    """Whether the last STALL_PASSES passes left no less than the best before them
    (within STALL_TOLERANCE), and that best."""
    if len(passes) <= STALL_PASSES:
        return False, 0
    best = min(s.remaining_bytes for s in passes[:-STALL_PASSES])
    recent = passes[-STALL_PASSES:]
    return all(s.remaining_bytes >= best * (1 - STALL_TOLERANCE) for s in recent), best


def _to_converge(remaining: float, link: float, ratio: float, limit_ms: float) -> tuple[int, float]:
    """Passes and seconds until what is left fits in ``limit_ms`` at ``link`` bytes/s, if
    each pass leaves ``ratio`` of what it sent dirty (0 <= ratio < 1)."""
    target = link * limit_ms / 1000.0
    if remaining <= target:
        return 0, 0.0
    if ratio <= 0:
        return 1, remaining / link
    passes = math.ceil(math.log(target / remaining) / math.log(ratio))
    seconds = remaining / link * (1 - ratio**passes) / (1 - ratio)
    return passes, seconds


def _early(p: Progress, params: AutoParams, limit: int) -> Decision | None:
    """Rules 1 and 2: the budget, and the first pass."""
    if p.elapsed_s >= params.budget_s:
        return Decision(
            Action.SWITCH, f"budget spent ({p.elapsed_s:.1f}s of {params.budget_s:g}s): post-copy finishes it"
        )
    if p.passes_done == 0:
        first = initial_limit_ms(params)
        lever = first if limit > first else None
        return Decision(
            Action.CONTINUE, f"first pass: copying all memory once (downtime limit {first} ms)", lever
        )
    return None


def _on_stall(left: str, best: int, rates: str, limit: int, params: AutoParams) -> Decision:
    """Rule 4: raise the downtime limit towards the pause target; at the target, switch."""
    if limit < params.max_pause_ms:
        raised = int(min(params.max_pause_ms, limit * RAMP))
        why = f"{left}, best {best / MIB:.1f} MiB: passes stopped shrinking it; {rates}"
        return Decision(Action.CONTINUE, f"{why}; downtime limit {limit} -> {raised} ms", raised)
    return Decision(
        Action.SWITCH, f"{left}: passes stopped shrinking it at the pause target ({limit} ms); {rates}"
    )


def decide_auto(p: Progress, params: AutoParams) -> Decision:
    limit = p.downtime_limit_ms or QEMU_DEFAULT_LIMIT_MS
    early = _early(p, params, limit)
    if early is not None:
        return early
    figures = [s for s in p.passes if s.n >= 2 and s.link_Bps > 0]
    if not figures:
        return Decision(Action.CONTINUE, "no pass figures yet")
    last = figures[-1]
    link, dirty = last.link_Bps, last.dirty_Bps
    ratio = dirty / link
    rates = f"dirty {dirty / MIB:.1f} MiB/s, link {link / MIB:.1f} MiB/s ({ratio:.0%})"
    if ratio >= NONCONVERGING:
        return Decision(Action.SWITCH, f"{rates}: pre-copy cannot converge")
    stalled, best = _stalled(figures)
    left = f"{last.remaining_bytes / MIB:.1f} MiB left"
    if stalled and last.remaining_bytes > link * limit / 1000.0:  # else QEMU stops and copies now
        return _on_stall(left, best, rates, limit, params)
    passes, seconds = _to_converge(last.remaining_bytes, link, ratio, limit)
    postcopy_s = last.remaining_bytes / link
    if p.elapsed_s + seconds > params.budget_s:
        verdict = "past the budget"
    elif seconds > max(LONG_S, SLOWER_THAN_POSTCOPY * postcopy_s):
        verdict = f"over {SLOWER_THAN_POSTCOPY:g}x post-copy's ~{postcopy_s:.1f}s to move what is left"
    else:
        why = f"{left}, {rates}: ~{passes} more pass(es), ~{seconds:.1f}s, to a pause under {limit} ms"
        return Decision(Action.CONTINUE, why)
    return Decision(
        Action.SWITCH, f"{left}, {rates}: pre-copy needs ~{passes} more pass(es), ~{seconds:.1f}s, {verdict}"
    )
