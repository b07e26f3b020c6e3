"""Runs bench cells on the lab: a fresh guest on ``src`` per run, migrated to
``dst`` across the shaped link. Repeats are interleaved across cells (r1 of every
cell, then r2, ...), so that the machine's drift hits every cell alike. Each run
writes one JSON file: metrics with units, and the dimensions they belong to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from livemig.bench.scenarios import Cell
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LivemigError
from livemig.guest import parse_workload
from livemig.job import MigrationJob
from livemig.lab import Lab, Shaping
from livemig.lab.plan import guest_ip
from livemig.observe.poller import StatusPoller, poll_latencies
from livemig.plan import Measurement, guest_ram, measure_dirty_rate, predict_policy
from livemig.policy import parse_policy
from livemig.registry import Registry
from livemig.sched import boosted
from livemig.spec import Disk, Nic, VMSpec
from livemig.units import parse_duration_ms, parse_rate
from livemig.vm import start_vm, stop_vm

__all__ = [
    "blackout_net_ms",
    "libvirt_handshake_ms",
    "metrics_of",
    "migration_ms",
    "options_of",
    "plan_errors",
    "plan_errors_of",
    "run_bench",
    "run_once",
]

log = logging.getLogger(__name__)

DISK_BYTES = 64 << 20  # a cell's disk (docs/real-vms.md's guest has 64 MiB)


def _metric(name: str, value: Any, unit: str) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit}


def metrics_of(report: MigrationReport, poll_ms: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The figures a run is judged by, each with its unit (None where it does not apply)."""
    g = report.guest or {}
    fp = g.get("faultprobe") or {}
    pushed = [e["latency_ms"] for e in report.events if e.get("latency_ms") is not None]
    handshake = libvirt_handshake_ms(report.backend)
    out = [
        _metric("completed", 1 if report.status == "completed" else 0, "bool"),
        _metric("total_time_ms", report.total_time_ms, "ms"),
        _metric("physical_bound_ms", report.physical_bound_ms, "ms"),
        _metric("time_vs_bound", report.time_vs_bound, "ratio"),
        _metric("blackout_ms", report.blackout_ms, "ms"),
        _metric("qemu_downtime_ms", report.downtime_ms, "ms"),
        _metric("max_stall_ms", g.get("max_stall_ms"), "ms"),
        _metric("stalls_over_100ms", g.get("stalls_over_100ms"), "count"),
        _metric("progress_share", (g.get("brownout") or {}).get("share_during"), "ratio"),
        _metric("under_half_s", (g.get("brownout") or {}).get("under_half_s"), "s"),
        _metric("heartbeats_lost", g.get("lost"), "count"),
        _metric("bytes_transferred", report.bytes_transferred, "bytes"),
        _metric("postcopy_requests", report.postcopy_requests, "count"),
        _metric("postcopy_blocktime_ms", report.postcopy_blocktime_ms, "ms"),
        _metric("blocktime_per_request_ms", _per_request(report), "ms"),
        _metric("switched_at_pass", report.switched_at_pass, "passes"),
        _metric("fault_mean_ms", fp.get("mean_ms"), "ms"),
        _metric("fault_p99_ms", fp.get("p99_ms"), "ms"),
        _metric("fault_max_ms", fp.get("max_ms"), "ms"),
        _metric("event_latency_max_ms", max(pushed) if pushed else None, "ms"),
        _metric("event_latency_median_ms", statistics.median(pushed) if pushed else None, "ms"),
        _metric("source_stopped_latency_ms", report.event_latency_ms("source-stopped"), "ms"),
        _metric("network_max_gap_ms", (report.network or {}).get("max_gap_ms"), "ms"),
        _metric("network_lost", (report.network or {}).get("lost"), "count"),
        _metric("manager_cpu_share", report.manager_cpu_share, "ratio"),
        _metric("migration_ms", migration_ms(report.events), "ms"),
        _metric("libvirt_handshake_ms", handshake, "ms"),
        _metric("blackout_net_ms", blackout_net_ms({"blackout_ms": report.blackout_ms,
                                                    "libvirt_handshake_ms": handshake}), "ms"),
    ]  # fmt: skip
    if poll_ms:
        out.append(_metric("poll_latency_mean_ms", round(statistics.fmean(poll_ms.values()), 3), "ms"))
    return out


def blackout_net_ms(metrics: dict[str, Any]) -> float | None:
    """The blackout without libvirt's own round trips in it (``libvirt_handshake_ms``):
    what the backends are compared on besides the blackout itself."""
    blackout = metrics.get("blackout_ms")
    if blackout is None:
        return None
    return round(float(blackout) - float(metrics.get("libvirt_handshake_ms") or 0.0), 3)


def plan_errors(plan: dict[str, Any] | None, report: MigrationReport) -> list[dict[str, Any]]:
    """How far ``livemig plan``'s prediction was from this run, as a share of the measured
    figure: total time; the pause (pre-copy's stop-and-copy) where it predicted one,
    against the blackout; and the guest's longest stall (pre-copy's pause, or post-copy's
    switch and fault stalls) against the guest's. None where either side is missing or the
    run did not complete."""
    return plan_errors_of((plan or {}).get("prediction"), report.to_dict())


def plan_errors_of(prediction: dict[str, Any] | None, report: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`plan_errors` from a prediction and a report as recorded (``to_dict``): what
    ``bench report`` uses to replay the current model on recorded runs (pure)."""
    p = prediction or {}
    done = report.get("status") == "completed"

    def err(predicted: float | None, measured: float | None) -> float | None:
        if not done or predicted is None or not measured:
            return None
        return round(abs(predicted - measured) / measured, 3)

    total = p.get("total_s")
    return [
        _metric(
            "plan_total_error",
            err(total * 1000 if total is not None else None, report.get("total_time_ms")),
            "ratio",
        ),
        _metric("plan_pause_error", err(p.get("pause_ms"), report.get("blackout_ms")), "ratio"),
        _metric(
            "plan_stall_error",
            err(p.get("stall_ms"), (report.get("guest") or {}).get("max_stall_ms")),
            "ratio",
        ),
    ]


def libvirt_handshake_ms(backend: dict[str, Any] | None) -> float | None:
    """How much of the blackout was libvirt's own round trips (its ``migrate-continue``
    and ``cont``); None on livemig's own QEMUs, or when neither was seen."""
    parts = [v for v in ((backend or {}).get("handshakes_ms") or {}).values() if v is not None]
    return round(sum(parts), 3) if parts else None


def migration_ms(events: list[dict[str, Any]]) -> float | None:
    """The migration's length in QEMU's own clock: the source's ``setup`` to its
    ``completed`` (the same definition on every backend; libvirt's own ``time_elapsed``
    also counts starting the destination QEMU)."""
    ts = {e["name"]: e.get("qemu_ts") for e in events}
    start, end = ts.get("setup"), ts.get("completed")
    return round((end - start) * 1000, 1) if start is not None and end is not None else None


OBSERVE_BEFORE_S = 2.0  # the guest's progress rate before each migration (the brownout's baseline)


async def _migrate(
    name: str, opts: MigrationOptions, reg: Registry, poll: bool, boost: bool = False
) -> tuple[MigrationReport, Any]:
    job = MigrationJob(name, opts, reg, to_host="dst", control=False, observe_before_s=OBSERVE_BEFORE_S)
    poller = StatusPoller(name, reg.load(name).instance.paths.qmp_aux) if poll else None
    if poller is not None:
        await poller.start()
    try:
        with boosted() if boost else contextlib.nullcontext():
            report = await job.run()
    finally:
        if poller is not None:
            await poller.stop()
    if poller is None:
        return report, None
    lat = poll_latencies(poller.seen, report.events)
    return report, {"period_ms": poller.period_s * 1000, "polls": poller.polls, "latency_ms": lat}


def _predict(cell: Cell, reg: Registry, name: str) -> dict[str, Any]:
    """``livemig plan`` for this run, measured during its warm-up: the guest's dirty rate
    over the warm-up, the cell's link rate, the cell's policy."""
    inst = reg.load(name).instance
    ram, dirty = asyncio.run(measure_dirty_rate(name, inst.paths.qmp_aux, max(1, round(cell.warmup_s))))
    m = Measurement(ram, dirty, float(parse_rate(cell.bandwidth)), f"cell link {cell.bandwidth}",
                    *guest_ram(inst.pid, ram))  # fmt: skip
    p = predict_policy(m, parse_policy(cell.policy))
    return {"measured": asdict(m), "prediction": p.to_dict() if p else None}


def _migrate_own(
    cell: Cell, reg: Registry, name: str
) -> tuple[MigrationReport, dict[str, Any] | None, dict[str, Any] | None]:
    """A VM livemig starts itself; on the lab's guest network (the report's `network` says
    what a client of the VM saw) unless the cell says not."""
    nics = (Nic("bridge:lmbr0", ip=guest_ip(0)),) if cell.nic else ()
    disks: tuple[Disk, ...] = ()
    cmdline = ""
    if cell.disk:  # shared storage: every lab host sees this machine's file system
        image = reg.root / "bench-disk.raw"
        with image.open("wb") as f:
            f.truncate(DISK_BYTES)
        disks, cmdline = (Disk(image),), "livemig.diskbeat=vda"
    spec = VMSpec(name, memory_mib=cell.memory_mib, workload=parse_workload(cell.workload), nics=nics,
                  disks=disks, cmdline=cmdline)  # fmt: skip
    opts = options_of(cell)
    start_vm(spec, reg, host="src")
    plan = None
    try:
        if cell.predict:
            plan = _predict(cell, reg, name)  # takes the warm-up's time
        else:
            time.sleep(cell.warmup_s)
        report, poll = asyncio.run(_migrate(name, opts, reg, cell.poll, cell.boost))
    finally:
        try:
            stop_vm(name, reg)
        except LivemigError as exc:  # logged, not raised: the run has its report already
            log.warning("could not stop %s after its run: %s", name, exc)
        for d in disks:  # the run's own image: nothing of it stays in the runtime directory
            d.path.unlink(missing_ok=True)
    return report, poll, plan


def options_of(cell: Cell) -> MigrationOptions:
    """The migration options a cell of livemig's own QEMUs runs with (pure)."""
    cap = parse_rate(cell.postcopy_bandwidth) if cell.postcopy_bandwidth else None
    return MigrationOptions(
        policy=parse_policy(cell.policy), preempt=cell.preempt, postcopy_bandwidth=cap, gso_max=cell.gso_max
    )


def _per_request(report: MigrationReport) -> float | None:
    """QEMU's post-copy blocktime per page request: how long a vCPU waited, on average,
    for a page it asked for."""
    bt, n = report.postcopy_blocktime_ms, report.postcopy_requests
    return round(bt / n, 3) if bt is not None and n else None


def run_once(cell: Cell, repeat: int, reg: Registry, name: str = "bench") -> dict[str, Any]:
    """One run of ``cell`` on the lab that is up: start, warm up, migrate, stop."""
    t0 = time.time()
    poll: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    if cell.backend in ("libvirt", "virsh"):
        from livemig.bench.libvirt import migrate_on_libvirt  # libvirt-python: the `libvirt` extra

        report = migrate_on_libvirt(cell, reg, name)
    else:
        report, poll, plan = _migrate_own(cell, reg, name)
    dims = {
        "scenario": cell.scenario, "cell": cell.id, "policy": cell.policy, "qemu_version": report.qemu_version,
        "accel": report.accel, "bandwidth": cell.bandwidth, "latency": cell.latency,
        "preempt": report.preempt, "wmem_max": cell.wmem_max, "gso_max": cell.gso_max, "repeat": repeat, "backend": cell.backend,
    }  # fmt: skip
    return {
        "cell": cell.to_dict(),
        "dimensions": dims,
        "started": t0,
        "metrics": metrics_of(report, poll["latency_ms"] if poll else None) + plan_errors(plan, report),
        "poll": poll,
        "plan": plan,
        "report": report.to_dict(),
    }


def run_bench(
    cells: list[Cell],
    repeats: int,
    out_dir: Path,
    say: Callable[[str], None] = print,
) -> list[Path]:
    """Run every cell ``repeats`` times on the lab (brought up here if none is up)."""
    reg = Registry()
    lab = Lab.current(reg.root)
    created = lab is None
    if lab is None:
        lab = Lab.up(2, Shaping(parse_rate(cells[0].bandwidth)), reg.root)
    original = lab.plan.shaping
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total, k = len(cells) * repeats, 0
    took: list[tuple[Cell, float]] = []  # each run so far, with its wall time
    try:
        for r in range(1, repeats + 1):
            for cell in cells:
                k += 1
                shaping = Shaping(
                    parse_rate(cell.bandwidth), original.burst_bytes, parse_duration_ms(cell.latency)
                )
                if shaping != lab.plan.shaping:
                    lab.shape(shaping)
                if lab.plan.wmem_max.get("src") != cell.wmem_max:
                    lab.set_wmem_max("src", cell.wmem_max)
                left = cells[cells.index(cell) :] + cells * (repeats - r)
                say(f"[{k}/{total}] {cell.id} repeat {r} ...{_left(took, left)}")
                began = time.monotonic()
                try:
                    result = run_once(cell, r, reg)
                except LivemigError as exc:
                    log.warning("%s repeat %d: %s", cell.id, r, exc)
                    result = {"cell": cell.to_dict(), "dimensions": {"cell": cell.id, "repeat": r},
                              "error": str(exc), "metrics": [_metric("completed", 0, "bool")]}  # fmt: skip
                took.append((cell, time.monotonic() - began))
                path = _result_path(out_dir, cell, r)
                path.write_text(json.dumps(result, indent=1))
                written.append(path)
                say(f"      {_line(result)}")
    finally:
        if created:
            from livemig.lab.libvirtd import running_daemons, stop_daemons

            if running_daemons(reg.root):  # started for libvirt cells, in a lab made here
                stop_daemons(reg.root)
            lab.down()
        else:
            lab.set_wmem_max("src", None)
            lab.shape(original)
    return written


def _left(took: list[tuple[Cell, float]], runs: list[Cell]) -> str:
    """What is left of ``runs`` (pure): their estimates, scaled by how the runs so far
    compared with theirs (a family's cells differ: the fast ones often come first)."""
    scale = sum(t for _, t in took) / sum(c.estimate_s for c, _ in took) if took else 1.0
    left = scale * sum(c.estimate_s for c in runs)
    return f"  (about {left / 60:.0f} min left{'' if took else ', estimated'})" if left >= 60 else ""


def _result_path(out_dir: Path, cell: Cell, repeat: int) -> Path:
    """Where a run's JSON goes: runs of a bench done in parts into one folder add up (a
    repeat number already taken there takes the next free one)."""
    stem = cell.id.replace("/", "__").replace(":", "")
    while (path := out_dir / f"{stem}__r{repeat}.json").exists():
        repeat += 1
    return path


def _line(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    m = {x["name"]: x["value"] for x in result["metrics"]}
    rep = result["report"]
    parts = [rep["status"], f"total {m['total_time_ms']} ms", f"max stall {m['max_stall_ms']} ms",
             f"blackout {m['blackout_ms']} ms"]  # fmt: skip
    if m.get("fault_mean_ms") is not None:
        parts.append(f"fault mean {m['fault_mean_ms']} ms")
    return ", ".join(parts)
