"""A migration of a recorded VM, end to end: the destination QEMU derived from the
same spec, both monitors, the guest's heartbeats, the control socket for other
processes, and the handover of the VM's record once the destination runs.

It is over 500 lines because a run, a takeover and the lab settings that a run makes and
puts back share one record and must be read together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from livemig.adopt import adopted_launch, after_migration
from livemig.backends.qemu import Endpoint, QemuBackend
from livemig.control import ControlServer
from livemig.core.backend import Backend
from livemig.core.bus import EventBus
from livemig.core.events import MigrationEvent
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.core.state import MigrationState
from livemig.errors import (
    LabError,
    LivemigError,
    MigrationError,
    MigrationFailed,
    NotMigrating,
    QemuDied,
    UsageError,
)
from livemig.lab import Lab
from livemig.lab.plan import GUEST_BRIDGE
from livemig.observe.heartbeat import HeartbeatReader, guest_view, write_beats
from livemig.observe.netprobe import NetProbe, network_stats
from livemig.policy import parse_policy
from livemig.policy.auto import gso_cap
from livemig.qemu.binary import find_qemu
from livemig.qemu.instance import QemuInstance, spawn_owned
from livemig.qemu.monitor import Monitor
from livemig.registry import MigrationRecord, Registry, VMRecord, pid_alive, split_where
from livemig.storage import DiskRef, check_disks, spec_disks
from livemig.units import check_gso_size

__all__ = ["MigrationJob"]

log = logging.getLogger(__name__)
S = MigrationState
STALL_GRACE_S = 0.3  # after completion, wait for the guest's next beats before measuring


class MigrationJob:
    """Migrates the recorded VM ``name``. Async API: ``await job.run()``, and
    concurrently ``await job.start_postcopy()``, ``await job.cancel()``,
    ``async for ev in job.events()``."""

    def __init__(
        self,
        name: str,
        options: MigrationOptions | None = None,
        registry: Registry | None = None,
        to_host: str | None = None,
        control: bool = True,
        heartbeat_log: Path | None = None,
        bus: EventBus | None = None,
        observe_before_s: float = 0.0,
    ) -> None:
        self.name = name
        # heartbeats read this long before the migration starts: the guest's progress rate
        # before it, which the report's brownout compares with the rate during it
        self.observe_before_s = observe_before_s
        self.log = log.getChild(name)
        self.options = options or MigrationOptions()
        self.registry = registry or Registry()
        self.to_host = to_host
        self.control = control
        self.heartbeat_log = heartbeat_log  # every beat received, as TSV, for offline analysis
        self.migration: Migration | None = None
        self.report: MigrationReport | None = None
        self._ready = asyncio.Event()
        self.bus = bus or EventBus(self.log)  # the migration's events, subscribable before it starts
        self._pending: set[asyncio.Task[None]] = set()  # fire-and-forget sends to the guest

    def __repr__(self) -> str:
        state = self.migration.state if self.migration else "not started"
        return f"<MigrationJob {self.name} {state} policy={self.options.policy}>"

    def on_event(
        self, callback: Callable[[MigrationEvent], None], names: Iterable[str] | None = None
    ) -> None:
        """Call ``callback(event)`` for every event (named ``names``), in the loop's thread."""
        self.bus.on(callback, names)

    async def _migration(self, timeout: float = 60.0) -> Migration:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise NotMigrating(f"{self.name} is not migrating") from None
        assert self.migration is not None
        return self.migration

    async def start_postcopy(self, reason: str = "requested by caller") -> None:
        await (await self._migration()).start_postcopy(reason)

    async def cancel(self, reason: str = "cancelled by caller") -> None:
        await (await self._migration()).cancel(reason)

    async def events(self) -> AsyncIterator[MigrationEvent]:
        async for ev in (await self._migration()).events():
            yield ev

    def validate(self) -> None:
        """Check, before anything starts, that the VM exists, the destination makes sense and
        it can open every disk."""
        rec = self.registry.load(self.name)
        self._placement(rec)
        check_disks(_disks(rec), rec.instance.pid, self.to_host, Lab.current(self.registry.root))

    # ---------------------------------------------------------------------
    async def run(self) -> MigrationReport:
        reg = self.registry
        rec = reg.load(self.name)
        if not rec.instance.alive():
            raise QemuDied(self.name, f"{self.name}: its QEMU (pid {rec.instance.pid}) is not running")
        if rec.migration is not None and rec.migration.unfinished:
            owner = rec.migration.owner_pid
            if owner and pid_alive(owner):
                raise MigrationError(f"{self.name} is already migrating (livemig pid {owner})")
            raise MigrationError(
                f"{self.name} has an unfinished migration ({rec.migration.state}); "
                f"`livemig migrate --attach {self.name}` or `livemig recover {self.name}` takes it over"
            )
        dst_netns, link = self._placement(rec)
        check_disks(_disks(rec), rec.instance.pid, self.to_host, Lab.current(reg.root))
        qemu = find_qemu()
        launch = adopted_launch(rec) if rec.adopted else None
        dst_inst = await spawn_owned(
            QemuInstance.spawn, qemu, rec.spec, rec.instance.accel, reg.root, True, dst_netns, 10.0, launch
        )
        try:  # until it is recorded, nobody else can end it (^C, SIGTERM may strike here)
            await self._cap_gso(link)  # before QEMU connects: a socket takes its device's cap then
            rec.migration = MigrationRecord(
                "setup", os.getpid(), dst_inst, policy=str(self.options.policy), started=time.time(),
                to_host=self.to_host, address=self.options.address, preempt=self.options.preempt, link=link,
            )  # fmt: skip
            reg.save(rec)
        except BaseException:
            dst_inst.kill()
            await self._restore_gso(link)
            raise
        return await self._drive(rec, dst_inst, link, attach=False)

    async def attach(self, recover_deadline_s: float | None = None) -> MigrationReport:
        """Take over ``name``'s migration after its livemig process died (or after a
        recovery deadline passed): reattach to both QMP sockets and take it to an end."""
        reg = self.registry
        rec = reg.load(self.name)
        mig = rec.migration
        if mig is None or not mig.unfinished or mig.dst is None:
            raise NotMigrating(f"{self.name} has no unfinished migration to take over")
        owner = mig.owner_pid
        if owner and owner != os.getpid() and pid_alive(owner):
            raise MigrationError(f"{self.name}'s migration is driven by livemig pid {owner}, which is alive")
        dst_inst = mig.dst
        if not dst_inst.alive():
            if rec.instance.alive() and mig.state in ("setup", "precopy"):
                rec.migration = None
                reg.save(rec)
                raise MigrationFailed(
                    f"{self.name}: the destination QEMU is gone; the VM runs on the source "
                    f"(pid {rec.instance.pid}), nothing to take over", phase=mig.state
                )  # fmt: skip
            raise MigrationFailed(f"{self.name}: the destination QEMU (pid {dst_inst.pid}) is gone")
        if not rec.instance.alive():
            raise MigrationFailed(
                f"{self.name}: the source QEMU (pid {rec.instance.pid}) is gone; the destination "
                f"(pid {dst_inst.pid}) is kept for inspection", phase=mig.state
            )  # fmt: skip
        self.to_host = mig.to_host
        self.options = dataclasses.replace(
            self.options,
            policy=parse_policy(mig.policy or str(self.options.policy)),
            address=mig.address or self.options.address,
            preempt=mig.preempt,
            recover_deadline_s=recover_deadline_s or self.options.recover_deadline_s,
        )
        mig.owner_pid = os.getpid()
        reg.save(rec)
        return await self._drive(rec, dst_inst, mig.link, attach=True)

    async def _drive(
        self, rec: VMRecord, dst_inst: QemuInstance, link: dict[str, Any] | None, attach: bool
    ) -> MigrationReport:
        src_mon = Monitor(self.name, "src", rec.instance.paths.qmp, self.log.getChild("src"))
        dst_mon = Monitor(self.name, "dst", dst_inst.paths.qmp, self.log.getChild("dst"))
        readers = [
            HeartbeatReader(rec.instance.paths.heartbeat, "src", self.log),
            HeartbeatReader(dst_inst.paths.heartbeat, "dst", self.log),
        ] if rec.spec.heartbeat else []  # fmt: skip
        probe = self._netprobe(rec)
        server: ControlServer | None = None
        report: MigrationReport | None = None
        try:
            await asyncio.gather(src_mon.connect(), dst_mon.connect())
            for r in readers:
                await r.start()
            mig = self._migration_of(rec, dst_inst, src_mon, dst_mon, readers, attach)
            if self.control:
                server = ControlServer(
                    self.registry.control_socket(self.name), self.name, lambda: self.migration
                )
                await server.start()
            if probe is not None:
                await probe.start()
            if readers and not attach and self.observe_before_s > 0:
                await asyncio.sleep(self.observe_before_s)
            t0 = time.time()
            # taking over: the record still holds the state its last manager left it in
            previous = rec.migration.state if rec.migration else None
            report = await (mig.attach(previous) if attach else mig.run())
            await self._observe(report, rec, readers, probe, t0)
            report.link = link
            rates = [r for r in (link and link["rate_Bps"], self.options.max_bandwidth) if r]
            report.set_bound(min(rates) if rates else None)
            if report.status == "failed" and report.switched_at_pass is not None:
                report.evidence = await _evidence(rec.instance, dst_inst, mig.backend)
            self._finish(rec, dst_inst, mig, report)
            await self._quit_source(rec, report, src_mon)
        except BaseException:
            if report is None:
                self._abandon(dst_inst, self.migration)
            raise
        finally:
            if probe is not None:
                await probe.stop()  # idempotent: ends the prober if the migration raised
            if server is not None:
                await server.stop()
            for r in readers:
                await r.stop()
            await asyncio.gather(src_mon.close(), dst_mon.close())
            await self._restore_gso(link)
        self.report = report
        return report

    def _migration_of(
        self,
        rec: VMRecord,
        dst_inst: QemuInstance,
        src_mon: Monitor,
        dst_mon: Monitor,
        readers: list[HeartbeatReader],
        attach: bool,
    ) -> Migration:
        """The core's Migration over the QEMU backend, with this job's event callbacks."""
        version = find_qemu().version
        backend = QemuBackend(
            self.name,
            Endpoint("src", src_mon, version, rec.instance.accel, rec.instance.pid),
            Endpoint("dst", dst_mon, version, dst_inst.accel),
            # taking over: no negotiation, so the address for a recovery comes from the record
            uri=f"tcp:{self.options.address}:0" if attach else None,
        )
        mig = Migration(
            backend, self.options, self.bus, {"src": rec.host or "local", "dst": self.to_host or "local"}
        )
        if rec.spec.workload.mode == "faultprobe" and readers:
            mig.bus.on(lambda _ev: self._probe_go(readers[1]), names=["destination-resumed"])
        mig.on_state(lambda _state, _why: self._record_state(rec, mig))
        self.migration = mig
        self._ready.set()
        return mig

    async def _observe(
        self,
        report: MigrationReport,
        rec: VMRecord,
        readers: list[HeartbeatReader],
        probe: NetProbe | None,
        t0: float,
    ) -> None:
        """What the guest and its clients saw: heartbeats, the network probe, the guest's
        own checks (verify, faultprobe)."""
        if report.status == "completed":
            await asyncio.sleep(STALL_GRACE_S)
        if probe is not None:
            raw = await probe.stop()
            resumed = next((e["qemu_ts"] for e in report.events if e["name"] == "destination-resumed"), None)
            report.network = network_stats(raw, resumed) if raw else {"error": "the network probe failed"}
        report.guest = guest_view(readers, t0, report.last_event_ts)
        if self.heartbeat_log is not None:
            write_beats(self.heartbeat_log, [b for r in readers for b in r.beats], t0)
        if report.status != "completed" or not readers:
            return
        if rec.spec.workload.mode == "faultprobe":
            report.guest["faultprobe"] = await _faultprobe_result(readers[1])
        elif rec.spec.workload.mode == "verify":
            await self._verify(readers[1], report)

    def _placement(self, rec: VMRecord) -> tuple[str | None, dict[str, Any] | None]:
        """Where the destination runs: on this machine, or on the lab host ``to_host``
        (then it listens on that host's address, across the shaped link)."""
        if self.options.tls and self.options.tls_dirs is None and self.to_host is None:
            raise UsageError("--tls needs lab hosts (their certificates): migrate with --to HOST")
        if self.options.gso_max is not None:
            check_gso_size(self.options.gso_max)
            if self.to_host is None:
                raise UsageError(
                    "a GSO size is set on a lab host's link: migrate across lab hosts (--to HOST)"
                )
        if self.to_host is None:
            if rec.host is not None:
                raise UsageError(f"{self.name} runs on lab host {rec.host}: say where to (--to HOST)")
            return None, None
        lab = Lab.load(self.registry.root)
        dst = lab.host(self.to_host)
        if rec.host is None:
            raise UsageError(f"{self.name} is not on a lab host; start it with `vm start --host HOST`")
        if rec.host == self.to_host:
            raise UsageError(f"{self.name} already runs on {self.to_host}")
        lab.host(rec.host)
        self.options = dataclasses.replace(self.options, address=dst.address)
        if self.options.tls and self.options.tls_dirs is None:
            dirs = (str(lab.pki_dir(rec.host)), str(lab.pki_dir(self.to_host)))
            self.options = dataclasses.replace(self.options, tls_dirs=dirs)
        shaping = lab.plan.shaping
        link = {
            "from": rec.host, "to": self.to_host, "shaping": str(shaping), "rate_Bps": shaping.rate_bps,
            "burst_bytes": shaping.burst_bytes, "latency_ms": shaping.latency_ms,
            "wmem_max": lab.plan.wmem_max.get(rec.host), "gso_max": lab.plan.gso_max.get(rec.host),
        }  # fmt: skip
        return dst.netns, link

    async def _cap_gso(self, link: dict[str, Any] | None) -> None:
        """Cap the source lab host's GSO size for this migration: as the options say, or as
        auto decides for the link (:func:`~livemig.policy.auto.gso_cap`). The link's record
        keeps the cap, the size before any migration capped it, and why: for the report and
        for :meth:`_restore_gso`."""
        if link is None:
            return
        gso: int | None
        if self.options.gso_max is not None:
            gso, why = self.options.gso_max, f"GSO size {self.options.gso_max // 1024} KiB, as asked"
        elif self.options.policy.kind == "auto":
            gso, why = gso_cap(link["rate_Bps"])
        else:
            return
        link["gso_reason"] = why
        if gso is None:
            return
        lab = Lab.load(self.registry.root)
        others = self._capping(link["from"])  # migrations from this host that capped it before us
        link["gso_max_before"] = others[0]["gso_max_before"] if others else lab.plan.gso_max.get(link["from"])
        await asyncio.to_thread(lab.set_gso_max, link["from"], gso)  # pyroute2 runs a loop of its own
        link["gso_max"] = gso
        self.log.info("%s", why)

    async def _restore_gso(self, link: dict[str, Any] | None) -> None:
        """Put back the source host's GSO size from before any migration capped it, once
        no other migration from that host that capped it is still running (a socket keeps
        the cap it connected with, so a restore never touches a running migration)."""
        if link is None or "gso_max_before" not in link or self._capping(link["from"]):
            return
        lab = Lab.current(self.registry.root)
        if lab is None or link["from"] not in {h.name for h in lab.plan.hosts}:
            return
        try:
            await asyncio.to_thread(lab.set_gso_max, link["from"], link["gso_max_before"])
        except (LabError, OSError) as exc:
            self.log.warning(
                "could not put back %s's GSO size (%s): `livemig lab shape` does", link["from"], exc
            )

    def _capping(self, host: str) -> list[dict[str, Any]]:
        """The links of the other unfinished migrations from lab host ``host`` that capped
        its GSO size (their records)."""
        return [
            r.migration.link
            for r in self.registry.all()
            if r.name != self.name and r.migration is not None and r.migration.unfinished
            and r.migration.link and r.migration.link.get("from") == host and "gso_max_before" in r.migration.link
        ]  # fmt: skip

    def _netprobe(self, rec: VMRecord) -> NetProbe | None:
        """A prober in the lab's client namespace, for a VM on the lab's guest network."""
        lab = Lab.current(self.registry.root)
        if lab is None or not lab.plan.guest_network or rec.host is None:
            return None
        for nic in rec.spec.nics:
            if nic.bridge == GUEST_BRIDGE and nic.address:
                return NetProbe(lab.plan.client_netns, nic.address, nic.mac)
        return None

    def _probe_go(self, dst: HeartbeatReader) -> None:
        """faultprobe: start touching pages the moment the guest resumes on the destination."""
        task = asyncio.get_running_loop().create_task(dst.send("go"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _record_state(self, rec: VMRecord, mig: Migration) -> None:
        if rec.migration is not None and rec.migration.state != str(mig.state):
            rec.migration.state = str(mig.state)
            try:
                self.registry.save(rec)
            except OSError as exc:  # the migration goes on; a later take-over reads an older state
                self.log.warning("could not record state %s: %s", mig.state, exc)

    async def _verify(self, reader: HeartbeatReader, report: MigrationReport) -> None:
        """Ask the guest to re-check its pattern; a mismatch fails the run."""
        asked = time.time()
        await reader.send("check")
        verdict = await reader.wait_message("verify ok", asked, 0) or await reader.wait_message(
            "verify", asked, 120.0
        )
        report.guest["verify"] = verdict
        if verdict is None or not verdict.startswith("verify ok"):
            report.status = "failed"
            report.error = f"guest memory check: {verdict or 'no answer from the guest in 120s'}"
            report.phase = "after completion"

    def _finish(
        self,
        rec: VMRecord,
        dst: QemuInstance,
        mig: Migration,
        report: MigrationReport,
    ) -> None:
        state = mig.state
        report.hosts = {"source": rec.host or "local", "destination": self.to_host or "local"}
        if state is S.COMPLETED:
            old = rec.instance
            rec.instance = dataclasses.replace(dst, incoming=False)
            rec.host = self.to_host
            try:
                after_migration(rec, rec.instance)
            except Exception:  # never lose the record of where the VM runs over this
                self.log.exception("could not re-read the destination's command line")
            rec.migration = MigrationRecord("completed", source=old, finished=time.time())
            report.where = f"destination, host {self.to_host or 'local'} (pid {dst.pid})"
        elif state in (S.FAILED, S.CANCELLED) and not mig.src_completed and report.switched_at_pass is None:
            # Nothing switched: the source still holds the whole VM.
            dst.kill()
            rec.migration = None
            report.where = (
                f"source, host {rec.host or 'local'} (pid {rec.instance.pid})"
                if rec.instance.alive()
                else "lost: the source QEMU died"
            )
        else:
            # Post-copy trouble: memory is split between the two QEMUs. Keep both, never kill.
            assert rec.migration is not None
            rec.migration.state = str(state)
            rec.migration.owner_pid = 0  # nobody drives it now: `recover` / `--attach` may take it
            src_alive, dst_alive = rec.instance.alive(), dst.alive()
            if state is S.FAILED and not src_alive:
                report.where = (
                    f"destination pid {dst.pid} (paused, kept for inspection); the source died after "
                    "the switch with pages not yet sent: unrecoverable"
                )
            elif state is S.FAILED and not dst_alive:
                report.where = (
                    f"lost: the destination died after the switch; source pid {rec.instance.pid} "
                    "holds a stale, stopped copy (kept for inspection)"
                )
            else:
                report.where = split_where(
                    self.name, f"destination pid {dst.pid}", f"source pid {rec.instance.pid}"
                )
        self.registry.save(rec)

    async def _quit_source(self, rec: VMRecord, report: MigrationReport, src_mon: Monitor) -> None:
        if report.status != "completed" or rec.migration is None or rec.migration.source is None:
            return
        old = rec.migration.source
        with contextlib.suppress(LivemigError):
            await src_mon.execute("quit")
        if not await asyncio.to_thread(old.wait_exit, 5.0):
            old.kill()
        old.remove_files()

    def _abandon(self, dst: QemuInstance, mig: Migration | None) -> None:
        """An error before a report: if nothing switched, end the destination and keep the source."""
        switched = mig is not None and mig.state in (S.POSTCOPY, S.POSTCOPY_PAUSED)
        if not switched:
            dst.kill()
            with contextlib.suppress(LivemigError, OSError):
                cur = self.registry.load(self.name)
                cur.migration = None
                self.registry.save(cur)


def _disks(rec: VMRecord) -> list[DiskRef]:
    if rec.adopted is not None:
        return [(f"disk {d}", Path(d), False) for d in rec.adopted.disks]
    return spec_disks(rec.spec)


async def _evidence(src: QemuInstance, dst: QemuInstance, backend: Backend) -> dict[str, Any]:
    """What a failure after the switch left: who is alive, their last words, and the
    destination's own view of the migration."""
    out: dict[str, Any] = {
        "source_alive": src.alive(),
        "destination_alive": dst.alive(),
        "source_log_tail": src.log_tail(),
        "destination_log_tail": dst.log_tail(),
    }
    if dst.alive() and not backend.lost("dst").is_set():
        try:
            info = await backend.progress("dst")
            # A dead source's socket closes with it, but the destination notices (and
            # pauses) only when its next read fails: give it a moment before recording.
            for _ in range(30):
                if out["source_alive"] or info.status != "postcopy-active":
                    break
                await asyncio.sleep(0.1)
                info = await backend.progress("dst")
            out["destination_migration"] = {"status": info.status, "error-desc": info.error_desc}
            out["destination_vm"] = (await backend.destination_running())[1]
        except LivemigError as exc:
            out["destination_error"] = str(exc)
    return out


async def _faultprobe_result(dst: HeartbeatReader, timeout: float = 60.0) -> dict[str, Any] | None:
    """The guest's first-touch latencies after it resumed on the destination."""
    msg = await dst.wait_message("faultprobe n=", 0.0, timeout)
    return parse_faultprobe(msg) if msg else None


def parse_faultprobe(msg: str) -> dict[str, Any]:
    """``faultprobe n=.. mean_ns=.. p50_ns=.. p99_ns=.. max_ns=.. hist_log2us=a,b,..`` -> ms figures."""
    kv = dict(item.split("=", 1) for item in msg.split()[1:] if "=" in item)
    out: dict[str, Any] = {"touches": int(kv["n"])}
    for key in ("mean", "p50", "p99", "max"):
        out[f"{key}_ms"] = round(int(kv[f"{key}_ns"]) / 1e6, 4)
    out["hist_log2us"] = [int(x) for x in kv["hist_log2us"].split(",")]
    return out
