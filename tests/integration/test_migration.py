"""Real migrations of real QEMU guests, between two QEMU processes over TCP."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from livemig.core.events import MigrationEvent
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import MigrationError
from livemig.observe.heartbeat import HeartbeatReader
from livemig.policy import parse_policy
from livemig.sync import SyncMigration

from ..unit.test_report_doc import assert_documented
from .conftest import BANDWIDTH, NONCONVERGING, VMFactory

pytestmark = pytest.mark.integration


def opts(policy: str) -> MigrationOptions:
    return MigrationOptions(policy=parse_policy(policy), max_bandwidth=BANDWIDTH)


def beats_on(path: Path, seconds: float = 1.0) -> list[int]:
    async def read() -> list[int]:
        r = HeartbeatReader(path, "after")
        await r.start()
        await asyncio.sleep(seconds)
        await r.stop()
        return [b.seq for b in r.beats]

    return asyncio.run(read())


def last_source_seq(report: MigrationReport) -> int:
    """The last heartbeat sequence number livemig's reader got from the source QEMU."""
    return int(report.guest["sides"]["src"]["last_seq"])


def assert_runs_on_destination(vms: VMFactory, src_pid: int, last_seq: int) -> None:
    """The VM is the destination QEMU now, the source is gone, and the guest's heartbeat
    counter goes on where the source left it (a restarted guest would count from 0)."""
    rec = vms.record()
    assert rec.instance.pid != src_pid and rec.instance.alive()
    assert (
        not Path(f"/proc/{src_pid}").exists() or b"qemu" not in Path(f"/proc/{src_pid}/cmdline").read_bytes()
    )
    seqs = beats_on(rec.instance.paths.heartbeat)
    assert len(seqs) > 50, "the guest's heartbeat did not continue on the destination"
    assert min(seqs) > last_seq


@pytest.mark.parametrize(
    ("policy", "workload", "switched_at"),
    [
        ("precopy", "idle", None),
        ("postcopy-now", NONCONVERGING, 0),
        ("postcopy-after:1", NONCONVERGING, 1),
        ("postcopy-after:2", NONCONVERGING, 2),
    ],
)
def test_policy_completes_and_guest_keeps_running(
    vms: VMFactory, policy: str, workload: str, switched_at: int | None
) -> None:
    src = vms.start(workload=workload)
    report = SyncMigration("vm", options=opts(policy), registry=vms.registry, policy=policy).migrate()
    assert report.status == "completed", report.error
    assert report.policy == policy
    assert report.switched_at_pass == switched_at
    assert report.qemu_version.split(".")[0] >= "9" or int(report.qemu_version.split(".")[0]) >= 9
    assert report.accel == "tcg"
    assert report.bytes_transferred and report.bytes_transferred > 0
    if switched_at is not None:
        assert report.preempt is True and "postcopy-preempt" in report.channels
        assert report.switch_reason and policy in report.switch_reason
        assert report.postcopy_bytes and report.postcopy_bytes > 0
    assert report.blackout_ms is not None and 0 < report.blackout_ms < 5000
    assert_documented(report.to_dict())
    g = report.guest
    assert g["heartbeats"] > 10 and g["max_stall_ms"] is not None
    assert g["lost"] <= g["heartbeats"] // 10, g
    # events arrive in order, each QEMU event with its delivery latency measured
    names = [e["name"] for e in report.events]
    assert names[0] == "setup" and names[-1] == "completed", names
    before = [("pass", "source-stopped"), ("source-stopped", "destination-resumed")]
    if switched_at is not None:
        before += [("postcopy-requested", "postcopy-started"), ("postcopy-started", "destination-resumed")]
        if switched_at > 0:
            before += [("pass", "postcopy-requested")]
    for a, b in before:
        assert names.index(a) < names.index(b), (a, b, names)
    for e in report.events:
        if e["name"] != "postcopy-requested":
            assert e["qemu_ts"] is not None and e["latency_ms"] is not None
            assert -5 < e["latency_ms"] < 1000
    passes = [e["data"]["n"] for e in report.events if e["name"] == "pass"]
    assert passes == sorted(passes) and passes[0] == 1
    assert_runs_on_destination(vms, src.instance.pid, last_source_seq(report))


def test_start_postcopy_from_another_thread(vms: VMFactory) -> None:
    src = vms.start(workload=NONCONVERGING)
    mig = SyncMigration("vm", policy="manual", options=opts("manual"), registry=vms.registry)
    second_pass = threading.Event()
    mig.on("pass", lambda ev: ev.data["n"] >= 2 and second_pass.set())  # type: ignore[func-returns-value]
    seen: list[MigrationEvent] = []
    mig.on(None, seen.append)
    worker = threading.Thread(target=mig.migrate, name="migrate")
    worker.start()
    assert second_pass.wait(60), "pre-copy never finished a pass"
    assert mig.state == "precopy"  # manual: nothing switches by itself
    mig.start_postcopy()  # blocks until QEMU confirms
    assert mig.state in ("postcopy", "completed")
    worker.join(120)
    assert not worker.is_alive()
    report = mig.report
    assert report is not None and report.status == "completed", report and report.error
    assert report.switched_at_pass is not None and report.switched_at_pass >= 1
    assert report.switch_reason == "requested by caller"
    assert [e.name for e in seen if e.name == "postcopy-started"] == ["postcopy-started"]
    assert_runs_on_destination(vms, src.instance.pid, last_source_seq(report))


def test_cancel_during_precopy_leaves_source_running(vms: VMFactory) -> None:
    src = vms.start(workload=NONCONVERGING)
    mig = SyncMigration("vm", policy="manual", options=opts("manual"), registry=vms.registry)
    first_pass = threading.Event()
    mig.on("pass", lambda ev: first_pass.set())
    worker = threading.Thread(target=mig.migrate)
    worker.start()
    assert first_pass.wait(60)
    mig.cancel()
    worker.join(60)
    report = mig.report
    assert report is not None and report.status == "cancelled"
    assert report.where and report.where.startswith("source")
    rec = vms.record()
    assert rec.instance.pid == src.instance.pid and rec.instance.alive()
    assert rec.migration is None
    assert len(list(vms.runtime.glob("qemu/*"))) == 1, "the destination QEMU was not cleaned up"
    assert len(beats_on(rec.instance.paths.heartbeat)) > 50


def test_cancel_is_refused_after_the_switch(vms: VMFactory) -> None:
    vms.start(workload=NONCONVERGING)
    slow = MigrationOptions(policy=parse_policy("postcopy-now"), max_bandwidth=BANDWIDTH // 4)
    mig = SyncMigration("vm", options=slow, registry=vms.registry, policy="postcopy-now")
    switched = threading.Event()
    mig.on("postcopy-started", lambda ev: switched.set())
    worker = threading.Thread(target=mig.migrate)
    worker.start()
    assert switched.wait(60)
    with pytest.raises(MigrationError) as info:
        mig.cancel()
    assert "lose" in str(info.value)
    worker.join(120)
    assert mig.report is not None and mig.report.status == "completed"


@pytest.mark.parametrize(("policy", "workload"), [("precopy", "verify:mib=48,rate=4"),
                                                  ("postcopy-after:1", "verify:mib=96")])  # fmt: skip
def test_verify_finds_memory_intact(vms: VMFactory, policy: str, workload: str) -> None:
    vms.start(workload=workload)
    time.sleep(1.0)  # let the writer rewrite pages for a while
    report = SyncMigration("vm", options=opts(policy), registry=vms.registry, policy=policy).migrate()
    assert report.status == "completed", report.error
    assert report.guest.get("verify", "").startswith("verify ok"), report.guest


def test_a_switch_within_the_first_pass_keeps_memory_intact(vms: VMFactory) -> None:
    """postcopy-after:0.3 switches while the first pass is still sending: the destination
    gets the rest by request and by the background stream, and the guest's pattern
    checks out after it."""
    vms.start(workload="verify:mib=96")
    report = SyncMigration("vm", options=opts("postcopy-after:0.3"), registry=vms.registry).migrate()
    assert report.status == "completed", report.error
    assert report.switched_at_pass == 0, report.decisions
    assert report.switch_reason and "the first pass covered" in report.switch_reason
    assert report.postcopy_bytes and report.postcopy_bytes > 48 << 20  # most of the pattern came after
    assert report.guest.get("verify", "").startswith("verify ok"), report.guest


def test_auto_on_a_converging_guest_stays_in_precopy_with_a_short_pause(vms: VMFactory) -> None:
    src = vms.start(workload="dirty:mib=32,rate=4")
    policy = "auto:max-pause=200ms"
    o = MigrationOptions(policy=parse_policy(policy), max_bandwidth=25_000_000)
    report = SyncMigration("vm", options=o, registry=vms.registry).migrate()
    assert report.status == "completed", report.error
    assert report.switched_at_pass is None, report.switch_reason
    assert report.postcopy_bytes in (0, None)  # QEMU's own count: nothing moved after a switch
    assert report.blackout_ms is not None and report.blackout_ms < 200, report.blackout_ms
    levers = [d["downtime_limit_ms"] for d in report.decisions if d["downtime_limit_ms"]]
    assert levers and levers[0] == 100, report.decisions  # half the target, set in the first pass
    assert_runs_on_destination(vms, src.instance.pid, last_source_seq(report))


def test_auto_on_a_nonconverging_guest_switches_and_completes(vms: VMFactory) -> None:
    src = vms.start(workload=NONCONVERGING)
    report = SyncMigration("vm", options=opts("auto"), registry=vms.registry).migrate()
    assert report.status == "completed", report.error
    assert report.switched_at_pass is not None and report.switched_at_pass >= 1
    assert report.switch_reason and report.switch_reason.startswith("policy auto:")
    assert report.postcopy_bytes and report.postcopy_bytes > 0  # QEMU's count of post-copy bytes
    switch = next(d for d in report.decisions if d["action"] == "switch")
    assert "MiB" in switch["reason"]  # the numbers that drove it
    assert_runs_on_destination(vms, src.instance.pid, last_source_seq(report))
