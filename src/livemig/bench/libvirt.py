"""Bench runs on the lab's libvirt daemons: a fresh transient domain on ``src`` per run,
moved to ``dst`` either by livemig (``backend="libvirt"``: the policy, events, report) or
by libvirt alone (``backend="virsh"``: ``virsh migrate --postcopy
--postcopy-after-precopy``, libvirt's own post-copy policy). For the virsh runs livemig
only watches: the guest's heartbeats on both hosts, and QEMU's STOP/RESUME events as
libvirt forwards them (the blackout)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from livemig.aio import communicate
from livemig.backends.libvirt.backend import call, connect, dotted
from livemig.backends.libvirt.domain import heartbeat_path
from livemig.backends.libvirt.models import parse_job_stats
from livemig.bench.scenarios import Cell
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LabError, LivemigError, VMNotFound
from livemig.guest import parse_workload
from livemig.lab import Lab
from livemig.lab.libvirtd import LabDaemon, start_daemons
from livemig.observe.heartbeat import HeartbeatReader, guest_view
from livemig.policy import parse_policy
from livemig.registry import Registry
from livemig.spec import VMSpec
from livemig.virt import DomainMigration, DomainTarget, start_domain, stop_domain
from livemig.vm import fill_image

__all__ = ["VIRSH_POLICY", "migrate_on_libvirt"]

VIRSH_POLICY = "virsh --postcopy-after-precopy"
GRACE_S = 0.3
VIRSH_WAIT_S = 600.0  # virsh's own migration: past this it is killed and the run fails


def _daemons(root: Path) -> dict[str, LabDaemon]:
    lab = Lab.load(root)
    return {d.host: d for d in start_daemons(root, [(h.name, h.netns) for h in lab.plan.hosts])}


class _Watch:
    """QEMU's STOP on the source and RESUME on the destination, through libvirt, and the
    source's JOB_COMPLETED figures."""

    def __init__(self) -> None:
        self.stop: float | None = None
        self.resume: float | None = None
        self.job: dict[str, Any] = {}
        self._ids: list[tuple[libvirt.virConnect, int]] = []
        self._dom_ids: list[tuple[libvirt.virConnect, int]] = []

    def _job(self, _c: Any, _dom: Any, params: dict[str, Any], _opaque: Any) -> None:
        self.job = dict(params)

    def _on(self, _c: Any, _dom: Any, event: str, sec: int, usec: int, _details: Any, side: str) -> None:
        ts = sec + usec / 1e6
        if side == "src" and event == "STOP":
            self.stop = ts
        elif side == "dst" and event == "RESUME" and self.resume is None:
            self.resume = ts

    async def watch(self, conns: dict[str, libvirt.virConnect]) -> None:
        for side, conn in conns.items():
            event = "STOP" if side == "src" else "RESUME"
            cid = await call("qemuMonitorEventRegister", libvirt_qemu.qemuMonitorEventRegister,
                             conn, None, event, self._on, side, 0)  # fmt: skip
            self._ids.append((conn, cid))
        src = conns["src"]
        cid = await call("domainEventRegisterAny", src.domainEventRegisterAny, None,
                         libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._job, None)  # fmt: skip
        self._dom_ids.append((src, cid))

    async def close(self) -> None:
        for conn, cid in self._ids:
            with contextlib.suppress(LivemigError):
                await call("deregister", libvirt_qemu.qemuMonitorEventDeregister, conn, cid)
        for conn, cid in self._dom_ids:
            with contextlib.suppress(LivemigError):
                await call("deregister", conn.domainEventDeregisterAny, cid)

    @property
    def ms(self) -> float | None:
        if self.stop is None or self.resume is None:
            return None
        return round((self.resume - self.stop) * 1000, 3)


async def _virsh(name: str, daemons: dict[str, LabDaemon], address: str) -> MigrationReport:
    src, dst = daemons["src"], daemons["dst"]
    hb = heartbeat_path(name)
    readers = [HeartbeatReader(src.host_path(hb), "src"), HeartbeatReader(dst.host_path(hb), "dst")]
    await readers[0].start(timeout=5.0)
    dst_reader = asyncio.create_task(readers[1].start(timeout=600.0))
    conns = {"src": await connect(src.uri), "dst": await connect(dst.uri)}
    blackout = _Watch()
    await blackout.watch(conns)
    t0 = time.time()
    try:
        proc = await asyncio.create_subprocess_exec(
            "virsh", "-c", src.uri, "migrate", name, dst.uri, "--live", "--p2p", "--postcopy",
            "--postcopy-after-precopy", "--migrateuri", f"tcp://{address}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await communicate(proc, VIRSH_WAIT_S)
        await asyncio.sleep(GRACE_S)
        report = MigrationReport(
            vm=name, status="completed" if proc.returncode == 0 else "failed", policy=VIRSH_POLICY,
            qemu_version=dotted(conns["src"].getVersion()),
            accel="tcg", preempt=False, blackout_ms=blackout.ms,
            error=err.decode(errors="replace").strip() or None if proc.returncode else None,
        )  # fmt: skip
        report.guest = guest_view(readers, t0)
        if blackout.job:  # libvirt's own figures of the job (the source's JOB_COMPLETED)
            info = parse_job_stats(blackout.job, "completed", completed=True)
            report.total_time_ms, report.bytes_transferred = info.total_time_ms, info.transferred
            report.postcopy_requests = info.postcopy_requests
    finally:
        dst_reader.cancel()
        await asyncio.gather(dst_reader, return_exceptions=True)
        for r in readers:
            await r.stop()
        await blackout.close()
        for conn in conns.values():
            await call("close", conn.close)
    return report


def migrate_on_libvirt(cell: Cell, reg: Registry, name: str = "bench") -> MigrationReport:
    """One run of a ``libvirt`` or ``virsh`` cell on the lab that is up."""
    daemons = _daemons(reg.root)
    address = Lab.load(reg.root).plan.host("dst").address
    spec = fill_image(
        VMSpec(name, memory_mib=cell.memory_mib, workload=parse_workload(cell.workload))
    ).validated()
    asyncio.run(start_domain(daemons["src"].uri, spec, reg.root, "tcg"))
    try:
        time.sleep(cell.warmup_s)
        if cell.backend == "virsh":
            return asyncio.run(_virsh(name, daemons, address))
        opts = MigrationOptions(policy=parse_policy(cell.policy))
        target = DomainTarget.resolve(name, "src", "dst", None, reg.root)
        return asyncio.run(DomainMigration(target, opts, reg).run())
    finally:
        _remove_everywhere(daemons, name)


def _remove_everywhere(daemons: dict[str, LabDaemon], name: str, within_s: float = 60.0) -> None:
    """The run's domain gone from every daemon: a job that is still ending (libvirt cleans
    up a failed or cancelled migration after QEMU reported it) is waited for. Raises if
    it is still there, rather than let every later run find it."""
    deadline = time.monotonic() + within_s
    left = dict(daemons)
    while left:
        for host, d in list(left.items()):
            try:
                asyncio.run(stop_domain(d.uri, name))  # destroyed: a transient domain is gone
                del left[host]
            except VMNotFound:
                del left[host]  # gone (or never there)
            except LivemigError as exc:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the bench's domain {name} is still on {host} after {within_s:g}s: {exc}"
                    ) from exc
        if left:
            time.sleep(0.5)
