"""Fault injection on real migrations across the lab: a cut link in pre-copy and in
post-copy, QEMUs killed with SIGKILL, and livemig itself killed mid-migration.
The VM must never be lost where recovery is possible, its memory must stay intact,
and nothing may be left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from livemig.core.events import MigrationEvent
from livemig.core.options import MigrationOptions
from livemig.lab import Lab, Shaping
from livemig.policy import parse_policy
from livemig.qemu.instance import QemuInstance
from livemig.registry import VMRecord
from livemig.sync import SyncMigration

from ..unit.test_report_doc import assert_documented
from .conftest import VMFactory, qemu_running
from .test_migration import beats_on

pytestmark = [pytest.mark.integration, pytest.mark.lab]

RATE = 12_500_000  # 100 mbit: post-copy of the guests below lasts several seconds


def dst_of(rec: VMRecord) -> QemuInstance:
    """The destination QEMU of ``rec``'s unfinished migration."""
    assert rec.migration is not None and rec.migration.dst is not None, rec
    return rec.migration.dst


def options(policy: str, **kw: float) -> MigrationOptions:
    return MigrationOptions(policy=parse_policy(policy), stall_timeout_s=1.5, **kw)  # type: ignore[arg-type]


def migrate_with(
    vms: VMFactory,
    opts: MigrationOptions,
    on: str,
    action: callable[[MigrationEvent], None],  # type: ignore[valid-type]
    ended: list[float] | None = None,
) -> SyncMigration:
    """Migrate, running ``action`` in a thread at the first event named ``on``; the thread
    is joined afterwards and whatever it raised is raised here."""
    mig = SyncMigration("vm", options=opts, registry=vms.registry, to_host="dst")
    ended = ended if ended is not None else [0.0]
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def guarded(ev: MigrationEvent) -> None:
        try:
            action(ev)  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001 (carried to the test's thread, raised there)
            errors.append(exc)

    def once(ev: MigrationEvent) -> None:
        if not threads:
            threads.append(threading.Thread(target=guarded, args=(ev,), daemon=True))
            threads[0].start()

    mig.on(on, once)
    mig.migrate()
    ended[0] = time.monotonic()  # before the fault's thread is joined (a cut may outlast the run)
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "the fault's thread did not end"
    if errors:
        raise errors[0]
    return mig


def cut_for(
    lab: Lab, host: str, after_s: float, outage_s: float, times: dict[str, float] | None = None
) -> callable[[MigrationEvent], None]:  # type: ignore[valid-type]
    """Cut ``host``'s link ``after_s`` after the event, for ``outage_s``; the wall-clock
    times of the cut and of the repair go into ``times``."""

    def act(_ev: MigrationEvent) -> None:
        time.sleep(after_s)
        lab.set_link(host, up=False)
        if times is not None:
            times["down"] = time.time()
        time.sleep(outage_s)
        lab.set_link(host, up=True)
        if times is not None:
            times["up"] = time.time()

    return act


@pytest.fixture
def lab(lab_env: Path) -> Lab:
    return Lab.up(2, Shaping(RATE), lab_env)


def test_link_cut_in_precopy_fails_in_bounded_time_and_keeps_the_source(lab: Lab, vms: VMFactory) -> None:
    src = vms.start(workload="dirty:mib=96,pattern=seq", host="src")
    t0, ended = time.monotonic(), [0.0]
    mig = migrate_with(vms, options("postcopy-after:5"), "pass", cut_for(lab, "dst", 0.5, 20.0), ended)
    took = ended[0] - t0
    report = mig.report
    assert report is not None and report.status == "failed", report
    assert report.phase == "precopy" and "no migration progress" in (report.error or "")
    assert took < 15, f"took {took:.1f}s to give up"
    rec = vms.record()
    assert rec.instance.pid == src.instance.pid and rec.instance.alive() and rec.migration is None
    assert [p.name for p in vms.runtime.glob("qemu/*")] == [src.instance.dir.name]
    assert len(beats_on(rec.instance.paths.heartbeat)) > 50, "the guest stopped on the source"


@pytest.mark.parametrize("outage_s", [2.0, 6.0])
def test_link_cut_in_postcopy_recovers_with_memory_intact(lab: Lab, vms: VMFactory, outage_s: float) -> None:
    vms.start(workload="verify:mib=128,rate=2", host="src")
    # Cut 0.3 s after the switch, while post-copy still runs: it lasts about 8 s on this link.
    # The stall timeout is 1.5 s (options()): a 2 s cut may end before livemig pauses (TCP
    # retransmits carry the stream on), a 6 s cut is paused and recovered.
    cut: dict[str, float] = {}
    mig = migrate_with(
        vms, options("postcopy-now"), "postcopy-started", cut_for(lab, "dst", 0.3, outage_s, cut)
    )
    report = mig.report
    assert report is not None and report.status == "completed", report.error
    completed = next(e for e in report.events if e["name"] == "completed")
    assert "down" in cut and "up" in cut, "the cut did not happen"
    assert cut["down"] < completed["qemu_ts"], "the migration completed before the link was cut"
    assert report.guest.get("verify", "").startswith("verify ok"), report.guest
    names = [e["name"] for e in report.events]
    if outage_s > 3:  # longer than the stall timeout: paused, then recovered
        t0 = report.events[0]["delivered_ts"]
        timeline = " ".join(f"{e['name']}@{e['delivered_ts'] - t0:.2f}" for e in report.events)
        assert "postcopy-paused" in names and "postcopy-recovered" in names, timeline
        assert names.index("postcopy-paused") < names.index("postcopy-recovered") < names.index("completed")
        assert report.recovery and report.recovery["recovered"] >= 1, report.recovery
        assert_documented(report.to_dict())
    rec = vms.record()
    assert rec.host == "dst" and rec.instance.alive()
    assert len(beats_on(rec.instance.paths.heartbeat)) > 50


def test_destination_killed_in_precopy_keeps_the_source(lab: Lab, vms: VMFactory) -> None:
    src = vms.start(workload="dirty:mib=96,pattern=seq", host="src")

    def kill_dst(_ev: MigrationEvent) -> None:
        time.sleep(0.5)
        dst = dst_of(vms.record())
        os.kill(dst.pid, signal.SIGKILL)

    mig = migrate_with(vms, options("postcopy-after:5"), "pass", kill_dst)
    report = mig.report
    assert report is not None and report.status == "failed" and report.phase == "precopy", report
    assert report.where and report.where.startswith("source")
    rec = vms.record()
    assert rec.instance.pid == src.instance.pid and rec.instance.alive() and rec.migration is None
    assert [p.name for p in vms.runtime.glob("qemu/*")] == [src.instance.dir.name]


def test_source_killed_in_postcopy_is_unrecoverable_and_the_destination_is_kept(
    lab: Lab, vms: VMFactory
) -> None:
    src = vms.start(workload="dirty:mib=160,pattern=seq", host="src")

    def kill_src(_ev: MigrationEvent) -> None:
        time.sleep(0.5)
        os.kill(src.instance.pid, signal.SIGKILL)

    mig = migrate_with(vms, options("postcopy-now"), "postcopy-started", kill_src)
    report = mig.report
    assert report is not None and report.status == "failed", report
    assert "source QEMU died" in (report.error or "") and "unrecoverable" in (report.where or "")
    dst = dst_of(vms.record())
    assert dst.alive(), "the destination must be kept for inspection, not killed"
    ev = report.evidence
    assert ev is not None and ev["source_alive"] is False and ev["destination_alive"] is True
    assert ev["destination_migration"]["status"] == "postcopy-paused", ev


def _livemig(runtime: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(runtime)}
    return subprocess.Popen(
        [sys.executable, "-m", "livemig", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(("policy", "phase"), [("postcopy-after:2", "precopy"), ("postcopy-now", "postcopy")])
def test_livemig_killed_mid_migration_is_taken_over(
    lab: Lab, vms: VMFactory, policy: str, phase: str
) -> None:
    vms.start(workload="verify:mib=128,rate=2", host="src")
    first = _livemig(vms.runtime, "migrate", "vm", "--to", "dst", "--policy", policy, "--quiet")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mig = vms.record().migration
        if mig is not None and mig.state == phase:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    rec = vms.record()
    dst = dst_of(rec)
    assert rec.instance.alive() and dst.alive(), "QEMU must outlive livemig"
    assert rec.status == f"orphaned:{phase}"
    second = _livemig(vms.runtime, "migrate", "vm", "--json", "--quiet")  # the next command takes it over
    out, errs = second.communicate(timeout=180)
    assert second.returncode == 0, errs
    report = json.loads(out)
    assert report["status"] == "completed" and report["events"][0]["name"] == "attached"
    assert report["guest"]["verify"].startswith("verify ok")
    after = vms.record()
    assert after.host == "dst" and after.instance.pid == dst.pid and after.migration.state == "completed"  # type: ignore[union-attr]
    assert not qemu_running(rec.instance.pid)


def _wait_state(vms: VMFactory, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mig = vms.record().migration
        if mig is not None and mig.state == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"the migration never reached {state}: {vms.record().migration!r}")


def _connecting(pid: int) -> bool:
    """Whether QEMU ``pid``'s network namespace has a TCP connect waiting for an answer."""
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-Htn", "state", "syn-sent"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return bool(out.strip())


def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["connecting", "withdrawn"])
def test_livemig_killed_during_a_recovery_is_taken_over(lab: Lab, vms: VMFactory, moment: str) -> None:
    """Killed while a recovery runs: with the source's resume connecting over the cut link,
    or just after livemig withdrew it (the destination listening, the source paused). Once
    the link is back, `recover` takes it to the end."""
    vms.start(workload="verify:mib=128,rate=2", host="src")
    src_pid = vms.record().instance.pid
    first = _livemig(vms.runtime, "migrate", "vm", "--to", "dst", "--policy", "postcopy-now",
                     "--stall-timeout", "1.5", "--quiet")  # fmt: skip
    try:
        _wait_state(vms, "postcopy")
        time.sleep(0.5)
        lab.set_link("dst", up=False)
        _until(lambda: _connecting(src_pid), "a resume connecting")
        if moment == "withdrawn":
            _until(lambda: not _connecting(src_pid), "the resume withdrawn")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        if moment == "withdrawn":
            assert not _connecting(src_pid), "the next attempt began before the kill"
        lab.set_link("dst", up=True)
    rec = vms.record()
    dst = dst_of(rec)
    assert rec.instance.alive() and dst.alive() and rec.status == "orphaned:postcopy-paused"
    second = _livemig(vms.runtime, "recover", "vm", "--json", "--quiet")
    out, errs = second.communicate(timeout=180)
    assert second.returncode == 0, errs
    report = json.loads(out)
    assert report["status"] == "completed" and report["guest"]["verify"].startswith("verify ok")
    recovered = [e["data"] for e in report["events"] if e["name"] == "postcopy-recovered"]
    assert len(recovered) == 1, report["events"]
    if moment == "withdrawn":  # nothing was connecting: this livemig made the recovery
        assert not recovered[0].get("detached") and recovered[0]["attempts"] >= 1, recovered
    assert vms.record().instance.pid == dst.pid and not qemu_running(rec.instance.pid)


def test_after_the_deadline_both_stay_paused_and_recover_resumes(lab: Lab, vms: VMFactory) -> None:
    vms.start(workload="verify:mib=128,rate=2", host="src")
    opts = options("postcopy-now", recover_deadline_s=3.0)

    def cut(_ev: MigrationEvent) -> None:
        time.sleep(0.5)
        lab.set_link("dst", up=False)

    mig = migrate_with(vms, opts, "postcopy-started", cut)
    report = mig.report
    assert report is not None and report.status == "postcopy-paused", report
    assert report.where and "livemig recover vm" in report.where
    rec = vms.record()
    dst = dst_of(rec)
    assert rec.instance.alive() and dst.alive(), "after the deadline both QEMUs are kept, paused"
    listing = json.loads(subprocess.run(
        [sys.executable, "-m", "livemig", "vm", "list", "--json"], capture_output=True, text=True, check=True,
        env={**os.environ, "LIVEMIG_RUNTIME_DIR": str(vms.runtime)},
    ).stdout)  # fmt: skip
    assert listing[0]["status"] == "orphaned:postcopy-paused"
    assert listing[0]["where"].startswith("split:") and "`livemig recover vm`" in listing[0]["where"]
    lab.set_link("dst", up=True)
    proc = _livemig(vms.runtime, "recover", "vm", "--json", "--quiet")
    out, errs = proc.communicate(timeout=180)
    assert proc.returncode == 0, errs
    resumed = json.loads(out)
    assert resumed["status"] == "completed" and resumed["guest"]["verify"].startswith("verify ok")
    recovered = [e for e in resumed["events"] if e["name"] == "postcopy-recovered"]
    assert len(recovered) == 1, resumed["events"]
    attached = next(e for e in resumed["events"] if e["name"] == "attached")
    if recovered[0]["data"].get("detached"):
        # The deadline's last resume was still connecting (report: left_connecting) and
        # connected once the link came back, before `recover` attached: QEMU said so.
        assert report.recovery and report.recovery.get("left_connecting"), report.recovery
        assert attached["data"]["source"] in ("postcopy-active", "completed"), attached
    else:
        assert attached["data"]["source"] in ("postcopy-paused", "postcopy-recover-setup", "postcopy-recover")
    assert vms.record().instance.pid == dst.pid
