"""plan's model (pure): predictions per policy, and auto's decisions on the predicted passes."""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import asdict

import pytest

from livemig.errors import UsageError
from livemig.plan import (
    FAULTS_AFTER,
    HOT_NOW_BYTES,
    POLICIES,
    SWITCH_MS,
    Measurement,
    guest_ram,
    nonzero_bytes,
    postcopy_stall_ms,
    predict,
    predict_policy,
    present_runs,
    ram_mappings,
    request_ms,
    resident_of,
    top_profile,
)
from livemig.policy import parse_policy
from livemig.policy.auto import GSO_CAP

MiB = 1 << 20


def by_policy(m: Measurement) -> dict[str, object]:
    preds, _ = predict(m)
    return {p.policy: p for p in preds}


def test_a_slow_writer_converges_and_auto_stays_in_precopy_with_a_lower_pause() -> None:
    m = Measurement(512 * MiB, 8 * MiB, 25 * MiB, "test")
    preds, reasons = predict(m)
    assert [p.policy for p in preds] == list(POLICIES)
    p = {x.policy: x for x in preds}
    pre, auto = p["precopy"], p["auto"]
    # passes of 512, 164, 52, 17 MiB: QEMU stops in the 17 MiB one once 7.5 MiB (300 ms at
    # 25 MiB/s) are pending, and the pause is that plus the devices' state and hand-over
    assert pre.converges and pre.pause_ms == 300 + SWITCH_MS  # type: ignore[attr-defined]
    assert auto.converges and auto.pause_ms is not None and auto.pause_ms <= 50 + SWITCH_MS  # type: ignore[attr-defined]
    assert auto.note.startswith("stays in pre-copy")  # type: ignore[attr-defined]
    assert reasons[0].startswith("pass 1: continue: first pass") and "downtime limit 50 ms" in reasons[0]
    # one pass of 512 MiB at 25 MiB/s, then the switch: 20.5 s and 512 MiB at least
    assert p["postcopy-now"].total_s == pytest.approx(20.48, abs=0.01)  # type: ignore[attr-defined]


def test_a_writer_above_the_link_never_converges_and_auto_switches() -> None:
    m = Measurement(384 * MiB, 30 * MiB, 25 * MiB, "test")
    p = by_policy(m)
    assert not p["precopy"].converges and "does not converge" in p["precopy"].note  # type: ignore[attr-defined]
    assert p["auto"].converges and p["auto"].note.startswith("switches at pass 2")  # type: ignore[attr-defined]
    assert "cannot converge" in p["auto"].note  # type: ignore[attr-defined]


def test_an_idle_guest_finishes_in_about_one_pass() -> None:
    """QEMU stops it inside its first pass, once the 300 ms limit's worth (30 MiB) is all
    that is left: 2.26 s of pass, then a 300 ms pause and the switch's 25 ms."""
    p = by_policy(Measurement(256 * MiB, 0.0, 100 * MiB, "test"))
    pre = p["precopy"]
    assert pre.converges and pre.total_s == pytest.approx(2.26 + 0.3 + 0.025, abs=0.01)  # type: ignore[attr-defined]
    assert pre.pause_ms == 300 + SWITCH_MS  # type: ignore[attr-defined]


def test_inside_the_first_pass_only_the_top_of_ram_that_is_not_zero_takes_time() -> None:
    """The policies family's idle guest at 1 gbit: the 300 ms limit's worth is 37.5 MB, and
    QEMU stopped it with 10.8 MB pending, all of it data: a 102 ms pause. The guest's top
    35.8 MiB held that much data (the rest zeros): 86 ms at the link's rate, plus the switch."""
    per_mib = [1 * MiB] * 80 + [0] * 400 + [int(0.3 * MiB)] * 32  # 80 MiB of kernel and data, a high 32 MiB
    top = top_profile(per_mib)
    assert len(top) == 512 and top[0] == int(0.3 * MiB) and top[-1] == sum(per_mib)
    link = 125e6
    m = Measurement(512 * MiB, 0.0, link, "test", resident_bytes=sum(per_mib), top_nonzero=top)
    assert m.nonzero_in_top(32 * MiB) == 32 * int(0.3 * MiB)
    assert m.nonzero_in_top(512.5 * MiB) == sum(per_mib)  # capped at the whole
    assert m.nonzero_in_top(0) == 0 and m.nonzero_in_top(0.5 * MiB) == pytest.approx(0.15 * MiB, abs=1)
    pre = by_policy(m)["precopy"]
    pending = 32 * 0.3 * MiB  # the limit's worth (37.5 MB = 35.8 MiB) reaches past the top 32 MiB into zeros
    assert pre.pause_ms == pytest.approx(pending / link * 1000 + SWITCH_MS, abs=0.1)  # type: ignore[attr-defined]
    assert pre.total_s == pytest.approx(sum(per_mib) / link + SWITCH_MS / 1000, abs=0.01)  # type: ignore[attr-defined]
    # without the profile, the limit's worth
    assert (
        by_policy(Measurement(512 * MiB, 0.0, link, "test", sum(per_mib)))["precopy"].pause_ms
        == 300 + SWITCH_MS
    )  # type: ignore[attr-defined]


def test_what_the_guest_dirtied_during_the_first_pass_adds_to_the_pause() -> None:
    """A 5 MB/s writer: behind the first pass's cursor it dirtied 5 MB/s x the pass's time,
    and that is sent in the pause besides the top of RAM that is not zero."""
    per_mib = [MiB] * 100 + [0] * 412
    link, dirty = 125e6, 5e6
    m = Measurement(512 * MiB, dirty, link, "test", sum(per_mib), top_profile(per_mib))
    pre = by_policy(m)["precopy"]
    dirt = dirty * sum(per_mib) / link
    assert pre.pause_ms == pytest.approx(dirt / link * 1000 + SWITCH_MS, abs=0.1)  # type: ignore[attr-defined]
    assert pre.bytes == pytest.approx(sum(per_mib) + dirt, rel=1e-6)  # type: ignore[attr-defined]


def test_a_link_must_have_a_rate() -> None:
    with pytest.raises(UsageError):
        predict(Measurement(256 * MiB, 1.0, 0.0, "test"))


def test_one_policy_as_given() -> None:
    """What a bench run records beside its measurement: the cell's own policy, options
    included (a pre-copy past its timeout is predicted cancelled; manual is not predicted)."""
    slow = Measurement(512 * MiB, 8 * MiB, 25 * MiB, "test")
    assert predict_policy(slow, parse_policy("precopy")) == by_policy(slow)["precopy"]
    late = predict_policy(slow, parse_policy("precopy:timeout=5"))
    assert late is not None and not late.converges and "past its 5 s timeout" in late.note
    three = predict_policy(slow, parse_policy("postcopy-after:3"))
    assert three is not None and three.passes == 3 and three.policy == "postcopy-after:3"
    assert predict_policy(slow, parse_policy("manual")) is None
    auto = predict_policy(slow, parse_policy("auto:max-pause=20ms"))
    assert auto is not None and auto.pause_ms is not None and auto.pause_ms <= 20 + SWITCH_MS


@pytest.mark.parametrize(
    ("first_pass_mib", "link", "after", "expected_ms"),
    [
        # switched at once: the first pass's bytes at the link's rate, up to 117 MiB
        (96, 25e6, 0, SWITCH_MS + 96 * MiB / 25e6 * 1000),
        (330, 25e6, 0, SWITCH_MS + 117 * MiB / 25e6 * 1000),
        (330, 125e6, 0, SWITCH_MS + 117 * MiB / 125e6 * 1000),
        # after passes: 320, then 220 requests, each 0.41 ms plus 75 KB at the link's rate
        (96, 25e6, 1, SWITCH_MS + 320 * (0.41 + 3.0)),
        (96, 25e6, 2, SWITCH_MS + 220 * (0.41 + 3.0)),
        (96, 25e6, 5, SWITCH_MS + 220 * (0.41 + 3.0)),
        (96, 125e6, 1, SWITCH_MS + 320 * (0.41 + 0.6)),
    ],
    ids=["now-small", "now-large", "now-large-1gbit", "after1", "after2", "after5", "after1-1gbit"],
)
def test_post_copys_stall(first_pass_mib: int, link: float, after: int, expected_ms: float) -> None:
    m = Measurement(512 * MiB, 30 * MiB, link, "test", resident_bytes=first_pass_mib * MiB)
    assert postcopy_stall_ms(m, after) == pytest.approx(expected_ms, rel=1e-9)
    assert 117 * MiB == HOT_NOW_BYTES and FAULTS_AFTER == (320, 220)  # what the table assumes


def test_every_policy_predicts_the_guests_stall() -> None:
    """Pre-copy's stall is its pause; post-copy's grows with less pre-copy first and with a
    slower link; the one auto ends in is its own."""
    for link in (25e6, 125e6):
        p = by_policy(Measurement(512 * MiB, 8 * MiB, link, "test", resident_bytes=100 * MiB))
        assert p["precopy"].stall_ms == p["precopy"].pause_ms  # type: ignore[attr-defined]
        stalls = [p[k].stall_ms for k in ("postcopy-now", "postcopy-after:1", "postcopy-after:2")]  # type: ignore[attr-defined]
        assert stalls == sorted(stalls, reverse=True) and stalls[2] > SWITCH_MS
    fast, slow = (
        by_policy(Measurement(512 * MiB, 0.0, r, "t", resident_bytes=100 * MiB)) for r in (125e6, 25e6)
    )
    assert request_ms(25e6) > request_ms(125e6) > 0.41
    assert slow["postcopy-after:1"].stall_ms > fast["postcopy-after:1"].stall_ms  # type: ignore[attr-defined]
    switching = by_policy(Measurement(384 * MiB, 30 * MiB, 25 * MiB, "test"))["auto"]
    assert switching.pause_ms is None  # type: ignore[attr-defined]
    # auto caps the GSO size on this slow link, so its page requests cost less than the fixed policies'
    slow_link = Measurement(384 * MiB, 30 * MiB, 25 * MiB, "test")
    assert switching.stall_ms == round(postcopy_stall_ms(slow_link, switching.passes, GSO_CAP), 1)  # type: ignore[attr-defined]
    assert switching.stall_ms < by_policy(slow_link)["postcopy-after:1"].stall_ms  # type: ignore[attr-defined]


def test_a_recorded_run_is_replayed_with_the_current_model() -> None:
    """bench report puts the current model's prediction and errors in a recorded run, from
    the measurement recorded beside it; the prediction made at run time is kept."""
    from livemig.bench.report import replay_plan

    m = Measurement(512 * MiB, 30 * MiB, 25e6, "cell link 200mbit", 330 * MiB, (1, 2, 3))
    old = {"policy": "postcopy-after:1", "stall_ms": None, "total_s": 1.0}
    run = {
        "plan": {"measured": asdict(m),
                 "prediction": old},
        "report": {"policy": "postcopy-after:1", "status": "completed", "total_time_ms": 26000.0,
                   "blackout_ms": 60.0, "guest": {"max_stall_ms": 1200.0}},
        "metrics": [{"name": "plan_stall_error", "value": None, "unit": "ratio"}, {"name": "completed", "value": 1}],
    }  # fmt: skip
    replay_plan(run)
    assert Measurement.from_dict(run["plan"]["measured"]) == m
    assert run["plan"]["prediction_recorded"] == old
    want = postcopy_stall_ms(m, 1)
    assert run["plan"]["prediction"]["stall_ms"] == round(want, 1)
    ms = {x["name"]: x["value"] for x in run["metrics"]}
    assert ms["plan_stall_error"] == round(abs(round(want, 1) - 1200.0) / 1200.0, 3)
    assert ms["completed"] == 1 and len(run["metrics"]) == 4  # replaced, not added twice


def test_a_runs_error_against_plan() -> None:
    from livemig.bench.runner import plan_errors
    from livemig.core.report import MigrationReport

    def rep(status: str) -> MigrationReport:
        return MigrationReport(
            "vm",
            status,
            "precopy",
            "10.0.2",
            "tcg",
            False,
            total_time_ms=8000.0,
            blackout_ms=200.0,
            guest={"max_stall_ms": 240.0},
        )

    plan = {"prediction": {"total_s": 10.0, "pause_ms": 300.0, "stall_ms": 300.0}}
    got = {m["name"]: m["value"] for m in plan_errors(plan, rep("completed"))}
    # |10 - 8| / 8, |300 - 200| / 200, |300 - 240| / 240
    assert got == {"plan_total_error": 0.25, "plan_pause_error": 0.5, "plan_stall_error": 0.25}
    switched = {"prediction": {"total_s": 10.0, "pause_ms": None, "stall_ms": 360.0}}  # post-copy: no pause
    got = {m["name"]: m["value"] for m in plan_errors(switched, rep("completed"))}
    assert got["plan_pause_error"] is None and got["plan_stall_error"] == 0.5  # |360 - 240| / 240
    assert {m["value"] for m in plan_errors(plan, rep("cancelled"))} == {None}  # not a result
    assert {m["value"] for m in plan_errors(None, rep("completed"))} == {None}  # no prediction recorded


def test_the_first_pass_is_the_resident_guest_memory_when_known() -> None:
    """An idle 512 MiB guest that touched 100 MiB: QEMU's first pass sends those 100 MiB
    (zero pages are a flag); more resident than RAM (a rounding) is capped by the RAM."""
    p = by_policy(Measurement(512 * MiB, 0.0, 25 * MiB, "test", resident_bytes=100 * MiB))
    assert p["precopy"].total_s == pytest.approx(4.0 + 0.025, abs=0.01)  # type: ignore[attr-defined]  # + the switch
    assert p["postcopy-now"].bytes == 100 * MiB  # type: ignore[attr-defined]
    assert Measurement(64 * MiB, 0.0, 1.0, "t", resident_bytes=65 * MiB).first_pass_bytes == 64 * MiB
    assert Measurement(64 * MiB, 0.0, 1.0, "t", resident_bytes=None).first_pass_bytes == 64 * MiB


SMAPS = """\
55d0c0000000-55d0c0800000 rw-p 00000000 00:00 0                          [heap]
Size:               8192 kB
Rss:                4096 kB
7f841fe00000-7f843fe00000 rw-p 00000000 00:00 0
Size:             524288 kB
KernelPageSize:        4 kB
Rss:              364544 kB
7f8448000000-7f8487fff000 rwxp 00000000 00:00 0
Size:            1048572 kB
Rss:               55296 kB
"""


def test_the_resident_guest_memory_is_read_from_the_mapping_of_its_size() -> None:
    assert resident_of(SMAPS, 512 * MiB) == 364544 * 1024  # not the heap, not TCG's code buffer
    assert resident_of(SMAPS, 256 * MiB) is None


def test_what_the_first_pass_sends_is_the_present_pages_that_are_not_zero() -> None:
    """A guest's kernel zeroes the pages it hands out: resident is not sent. The guest-RAM
    mapping is found by its size; pagemap says which pages are present (bit 63) or
    swapped (bit 62); a page of zeros costs QEMU a flag, any other byte a whole page."""
    assert ram_mappings(SMAPS, 512 * MiB) == [(0x7F841FE00000, 0x7F843FE00000, 364544 * 1024)]
    assert ram_mappings(SMAPS, 256 * MiB) == []
    present, swapped, absent = 1 << 63, 1 << 62, 0
    entries = struct.pack("5Q", present | 7, present | 8, absent, swapped, present)
    assert present_runs(entries, 0x1000) == [(0x1000, 8192), (0x4000, 8192)]
    assert present_runs(struct.pack("2Q", absent, absent), 0) == []
    page = 4096
    data = bytes(page) + b"\x01" + bytes(page - 1) + bytes(page - 1) + b"\xff" + bytes(page)
    assert nonzero_bytes(data) == 2 * page  # the second and third pages
    assert nonzero_bytes(b"") == 0 and nonzero_bytes(bytes(3 * page)) == 0


def test_the_profile_is_read_from_a_real_mapping_of_the_guests_size() -> None:
    """guest_ram on this very process: a mapping of 7 MiB and 3 pages (a size nothing else
    here has), one page written in its first MiB and two in its sixth; the rest never
    touched (not present) or written with zeros."""
    size = 7 * MiB + 3 * 4096
    with mmap.mmap(-1, size) as ram:
        ram[100:104] = b"\x01\x02\x03\x04"
        ram[5 * MiB : 5 * MiB + 2] = b"\xff\xff"
        ram[5 * MiB + 4096 * 3] = 7
        ram[3 * MiB : 3 * MiB + 4096] = bytes(4096)  # present, but zero
        sent, top = guest_ram(os.getpid(), size)
    assert sent == 3 * 4096
    assert top == (0, 0, 2 * 4096, 2 * 4096, 2 * 4096, 2 * 4096, 2 * 4096, 3 * 4096)
    # Unmapped now: no mapping of that size is left. (A size picked out of the air is not
    # proof of absence: in CI this process held a mapping of 3 MiB and a page.)
    assert guest_ram(os.getpid(), size) == (None, None)
