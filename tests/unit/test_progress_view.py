"""The progress line shows only what was measured (pure)."""

from __future__ import annotations

from livemig.cli.progress import progress_view
from livemig.core.backend import MigrationInfo

MIB = 1 << 20
RAM = 512 * MIB


def info(
    status: str, sent: int, left: int, syncs: int = 1, dirty: float = 0.0, mbps: float = 200.0
) -> MigrationInfo:
    return MigrationInfo(status, transferred=sent * MIB, remaining=left * MIB, dirty_sync_count=syncs,
                         dirty_rate_Bps=dirty, mbps=mbps, ram_total=RAM)  # fmt: skip


def test_the_dirty_rate_only_once_measured() -> None:
    first = progress_view([info("active", 100, 412)], "precopy", 1)
    assert first.dirty_Bps is None and "dirty -" in first.line()  # QEMU measures it at a pass's end
    second = progress_view([info("active", 520, 40, syncs=2, dirty=30 * MIB)], "precopy", 2)
    assert second.dirty_Bps == 30 * MIB and "dirty 30.0 MiB/s" in second.line()


def test_postcopy_left_to_fetch_only_falls_with_percent_and_eta() -> None:
    samples = [
        info("postcopy-active", 300, 371),
        info("postcopy-active", 310, 414),
        info("postcopy-active", 320, 380),
    ]
    v = progress_view(samples, "postcopy", 3, {"action": "switch", "reason": "1 pre-copy pass(es) done"})
    assert v.left == 371 * MIB  # QEMU's remaining rose after the switch: the display does not
    assert v.percent is not None and round(v.percent) == round(100 * (1 - 371 / 512))
    assert v.eta_s is not None and round(v.eta_s, 1) == round(371 * MIB / (200e6 / 8), 1)
    assert v.dirty_Bps is None and "to fetch" in v.line() and v.decision == "switch: 1 pre-copy pass(es) done"


def test_nothing_before_the_first_sample() -> None:
    v = progress_view([], "setup", 0)
    assert v.left is None and v.percent is None and v.eta_s is None and v.line() == "0 MiB sent, dirty -"
