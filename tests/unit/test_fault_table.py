"""The fault-injection matrix and its table (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from livemig.bench.faultreport import WHY_UNRECOVERABLE, merge_trials, write_reliability
from livemig.bench.faults import FAULTS, FLAP, _back_to_recovered, _merged
from livemig.errors import UsageError


def test_the_matrix_covers_every_fault_in_every_phase() -> None:
    ids = [f.id for f in FAULTS]
    assert len(ids) == len(set(ids)) == 32
    for phase in ("precopy", "switchover", "postcopy"):
        for what in ("link-down-2s", "link-down-5s", "link-down-30s", "kill-dst", "kill-src", "kill-livemig",
                     "flap", "stop-src", "stop-dst"):  # fmt: skip
            assert f"{what}/{phase}" in ids
    assert "kill-livemig-recovering/postcopy" in ids
    # a cut inside a recovery, at its connect and in its handshake; a cut that hits two migrations
    assert {"cut-recover-setup/postcopy", "cut-recover/postcopy"} <= set(ids)
    assert {"two-vms-link-down-5s/precopy", "two-vms-link-down-5s/postcopy"} <= set(ids)
    assert next(f for f in FAULTS if f.kind == "two-vms").names == ("fi", "fi2")


def test_a_two_vm_trial_is_as_good_as_its_worse_vm() -> None:
    one = {"vm": "fi", "status": "completed", "error": None, "where": "dst", "recovered": 1,
           "link_back_to_recovered_s": 1.5, "recover_s": 20.0, "vm_running": True, "on": "dst",
           "memory_intact": True}  # fmt: skip
    other = {**one, "vm": "fi2", "recover_s": 31.0, "link_back_to_recovered_s": 2.5}
    both = _merged([one, other])
    assert (both["status"], both["recover_s"], both["link_back_to_recovered_s"]) == ("completed", 31.0, 2.5)
    assert both["memory_intact"] is True and both["vms"] == [one, other]
    failed = _merged([one, {**other, "status": "failed", "error": "no progress", "recover_s": None,
                            "on": "src", "memory_intact": None}])  # fmt: skip
    assert (failed["status"], failed["error"], failed["recover_s"], failed["on"]) == (
        "failed",
        "no progress",
        None,
        "dst/src",
    )
    assert failed["memory_intact"] is None and failed["vm_running"] is True
    assert _merged([one, {**other, "memory_intact": False}])["memory_intact"] is False
    assert _merged([one, {**other, "vm_running": False}])["vm_running"] is False
    assert "vm" not in _merged([one]) and _merged([one])["recover_s"] == 20.0


def test_a_flapping_link_is_three_cuts_of_2_to_6_s_within_30_s() -> None:
    assert len(FLAP) == 3 and all(2.0 <= down <= 6.0 for down, _ in FLAP)
    assert sum(down + up for down, up in FLAP) <= 30.0


def _trial(fault: str, **kw: Any) -> dict[str, Any]:
    base = {"fault": fault, "status": "completed", "vm_running": True, "memory_intact": True, "leftovers": [],
            "recovered": 0, "recover_s": None, "on": "dst", "error": None}  # fmt: skip
    return {**base, **kw}


def test_table_counts_and_flags_mismatches(tmp_path: Path) -> None:
    trials = [
        _trial("link-down-30s/postcopy", recovered=1, recover_s=34.0, link_back_to_recovered_s=2.5),
        _trial("link-down-30s/postcopy", recovered=1, recover_s=36.5, link_back_to_recovered_s=4.1),
        _trial("kill-dst/precopy", status="failed", on="src"),
        _trial("kill-dst/precopy", status="failed", on="src", memory_intact=False, leftovers=["qemu pid 1"]),
    ]
    text = write_reliability(trials, tmp_path / "r.md", "livemig bench faults-inject").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert (
        "| 2 | 2 | 2/2 | 2/2 | 0 | 2 | 36.5 s (36.5 s) | 4.1 s (4.1 s) | dst: completed |"
        in rows["link-down-30s/postcopy"]
    )
    assert "1/2 (**1 mismatches**) | 1 |" in rows["kill-dst/precopy"]
    missed = write_reliability(
        [*trials, _trial("kill-dst/precopy", struck=False, trial=3)], tmp_path / "m.md"
    )
    assert "| kill-dst/precopy | 2 | 0 |" in missed.read_text()  # a run whose fault never struck is no trial
    assert (
        "Not counted: 1 run(s) in which the fault never struck (kill-dst/precopy #3)." in missed.read_text()
    )
    assert "| - | - | src: failed |" in rows["kill-dst/precopy"]
    assert "src: failed" in rows["kill-dst/precopy"]
    # the unrecoverable cases are listed with their reasons, and only those
    section = text.split("## Unrecoverable cases, and why", 1)[1]
    listed = {line.split("**")[1] for line in section.splitlines() if line.startswith("- **")}
    assert listed == set(WHY_UNRECOVERABLE) and "kill-src/postcopy" in listed
    assert "kill-dst/precopy" not in listed
    for cid, why in WHY_UNRECOVERABLE.items():
        assert f"- **{cid}**: {why}." in section


def test_link_back_to_recovered_counts_each_restore_that_a_recovery_followed() -> None:
    events = [{"name": "postcopy-recovered", "delivered_ts": t} for t in (112.5, 130.4)]
    report = {"events": [{"name": "postcopy-paused", "delivered_ts": 105.0}, *events]}
    # a flap: the first cut (restored at 100) was too short to pause post-copy; the second
    # (restored at 112) was recovered 0.5 s later, the third (restored at 130) 0.4 s later
    assert _back_to_recovered(report, [100.0, 112.0, 130.0]) == 0.5
    assert _back_to_recovered(report, [100.0]) == 12.5
    assert _back_to_recovered(report, []) is None and _back_to_recovered(None, [1.0]) is None
    assert _back_to_recovered({"events": []}, [100.0]) is None


def test_parts_merge_into_one_matrix_renumbered_per_cell(tmp_path: Path) -> None:
    for part, cells in (("r1", ["flap/postcopy", "kill-dst/precopy"]), ("r2", ["flap/postcopy"])):
        (tmp_path / part).mkdir()
        (tmp_path / part / "trials.json").write_text(json.dumps([_trial(c, trial=1) for c in cells]))
    merged = merge_trials([tmp_path / "r1", tmp_path / "r2"])
    assert [(t["fault"], t["trial"], t["part"]) for t in merged] == [
        ("flap/postcopy", 1, "r1"),
        ("kill-dst/precopy", 1, "r1"),
        ("flap/postcopy", 2, "r2"),
    ]


def test_a_folder_without_trials_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a faults-inject result"):
        merge_trials([tmp_path])
    (tmp_path / "trials.json").write_text('{"runs": []}')
    with pytest.raises(UsageError, match="expected a list of trials"):
        merge_trials([tmp_path])
