"""livemig on libvirt: domains on libvirt daemons (``livemig -c URI ...``).

:class:`DomainMigration` migrates a running domain from the daemon at ``-c URI`` to the
daemon at ``--to URI`` through :class:`~livemig.backends.libvirt.LibvirtBackend`, with
livemig's policy, events, recovery and report, and serves the migration on a control
socket named after the domain (``livemig postcopy DOMAIN`` from another process). It
never starts or destroys the domain; libvirt moves it.

Also here: the domains that ``livemig -c URI vm start`` defines from livemig's guest
image, and the listing and stopping of domains. URIs may be lab host names: with
``livemig lab up --libvirt``, ``src`` stands for that host daemon's URI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import libvirt

from livemig.backends.libvirt import LibvirtBackend, call, connect, find_domain
from livemig.backends.libvirt.domain import DomainFacts, domain_facts, domain_xml
from livemig.backends.libvirt.models import handshakes
from livemig.control import ControlServer, request
from livemig.core.bus import EventBus
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LibvirtCallError, LivemigError, MigrationError, UsageError, VMNotFound
from livemig.handle import MigrationHandle
from livemig.lab import Lab
from livemig.lab.libvirtd import LabDaemon, daemon_for_uri, running_daemons
from livemig.observe.heartbeat import HeartbeatReader, guest_view
from livemig.registry import Registry
from livemig.spec import VMSpec

__all__ = [
    "DomainMigration",
    "domain_rows",
    "measure_dirty_rate",
    "resolve_uri",
    "start_domain",
    "stop_domain",
]

log = logging.getLogger(__name__)
STALL_GRACE_S = 0.3
GUEST_READY_S = 90.0
DST_QEMU_WAIT_S = 3600.0  # the reader is cancelled when the migration ends


def resolve_uri(text: str, root: Path) -> str:
    """A libvirt URI, or a lab host's name (its daemon's URI), like libvirt's URI aliases."""
    if "://" in text or text.startswith("qemu:"):
        return text
    for d in running_daemons(root):
        if d.host == text:
            return d.uri
    hosts = ", ".join(d.host for d in running_daemons(root)) or "none: `livemig lab up --libvirt`"
    raise UsageError(f"{text!r} is neither a libvirt URI nor a lab host with a daemon (hosts: {hosts})")


def _host_path(root: Path, uri: str, path: str | None) -> Path | None:
    """Where this process reaches a socket that the QEMU behind ``uri`` sees at ``path``:
    a lab host's own directory, the path itself on this machine, or None (remote)."""
    if path is None:
        return None
    lab = daemon_for_uri(root, uri)
    if lab is not None:
        return lab.host_path(path)
    host = urlparse(uri).hostname
    return Path(path) if host in (None, "", "localhost") else None


def _host_name(root: Path, uri: str) -> str:
    lab = daemon_for_uri(root, uri)
    return f"lab host {lab.host}" if lab is not None else uri


async def _lookup(conn: libvirt.virConnect, name: str, uri: str) -> libvirt.virDomain:
    dom = await find_domain(conn, name)
    if dom is None:
        raise VMNotFound(name, f"no domain {name!r} on {uri}")
    return dom


@dataclass(frozen=True)
class DomainTarget:
    """What ``migrate DOMAIN`` is asked: where from, where to, and over which address."""

    domain: str
    src_uri: str
    dst_uri: str
    peer_uri: str  # the destination daemon as the source daemon reaches it
    migrate_uri: str | None  # QEMU's stream: tcp://ADDRESS (None: libvirt picks the host's name)

    @classmethod
    def resolve(cls, domain: str, src: str, dst: str, migrate_uri: str | None, root: Path) -> DomainTarget:
        src_uri, dst_uri = resolve_uri(src, root), resolve_uri(dst, root)
        if src_uri == dst_uri:
            raise UsageError(f"--to {dst}: the source and the destination are the same daemon ({src_uri})")
        lab = daemon_for_uri(root, dst_uri)
        if migrate_uri is None and lab is not None:
            migrate_uri = f"tcp://{_lab_address(root, lab)}"
        if migrate_uri is not None and not migrate_uri.startswith(("tcp://", "rdma://", "unix://")):
            raise UsageError(f"--migrateuri {migrate_uri!r}: expected tcp://HOST[:PORT]")
        return cls(domain, src_uri, dst_uri, dst_uri, migrate_uri)


def _lab_address(root: Path, d: LabDaemon) -> str:
    return Lab.load(root).plan.host(d.host).address


class DomainMigration(MigrationHandle):
    """One migration of a libvirt domain. Async API like :class:`~livemig.pair.PairMigration`:
    ``await run()``, and concurrently ``start_postcopy()``, ``cancel()``, ``events()``."""

    def __init__(
        self, target: DomainTarget, options: MigrationOptions | None = None, registry: Registry | None = None
    ) -> None:
        self.target = target
        self.options = options or MigrationOptions()
        self.registry = registry or Registry()
        self.name = target.domain
        self.migration: Migration | None = None
        self.report: MigrationReport | None = None
        self.bus = EventBus(log)
        self.log = log.getChild(self.name)

    def __repr__(self) -> str:
        state = self.migration.state if self.migration else "not started"
        return f"<DomainMigration {self.name} {state} {self.target.src_uri} -> {self.target.dst_uri}>"

    def _claim_control(self) -> Path:
        ctl = self.registry.control_socket(self.name)
        if self.registry.exists(self.name):
            raise UsageError(f"{self.name} is also a VM livemig runs itself; rename one of them")
        if ctl.exists():
            try:
                request(ctl, self.name, "status", timeout=2.0)
            except LivemigError:
                ctl.unlink(missing_ok=True)  # left by a livemig that died
            else:
                raise MigrationError(f"{self.name} is already migrating (another livemig owns {ctl})")
        return ctl

    async def _check(self, dom: libvirt.virDomain, dst: libvirt.virConnect, facts: DomainFacts) -> bool:
        """Refuse, before anything changes, what cannot migrate. True: a migration of this
        domain is under way already (a livemig died): take it over."""
        t = self.target
        if not await call("isActive", dom.isActive):
            raise UsageError(f"domain {self.name} is not running on {t.src_uri}")
        job = await call("jobInfo", dom.jobInfo)
        if job[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            return True
        state, reason = await call("state", dom.state)
        if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED:
            return True
        if await find_domain(dst, facts.uuid, by="uuid") is not None:
            raise UsageError(f"the destination {t.dst_uri} already has a domain with {self.name}'s UUID")
        self._check_storage(facts)
        try:
            await call(
                "getDomainCapabilities", dst.getDomainCapabilities, None, "x86_64", facts.machine, None, 0
            )
        except LibvirtCallError as exc:
            raise UsageError(
                f"the destination cannot run machine type {facts.machine}: {exc.message}"
            ) from exc
        return False

    def _check_storage(self, facts: DomainFacts) -> None:
        """A disk that only the source host can open: on a lab host's local storage. Other
        hosts' storage livemig cannot see; libvirt refuses an unsafe one itself, before QEMU
        starts (its refusal reaches the user the same way)."""
        lab = Lab.current(self.registry.root)
        src = daemon_for_uri(self.registry.root, self.target.src_uri)
        if lab is None or src is None:
            return
        for disk in facts.local_disks:
            if lab.owner_of(Path(disk)) == src.host:
                raise UsageError(
                    f"domain {self.name}'s disk {disk} is on {src.host}'s local storage, which the destination "
                    "cannot open: livemig does not migrate storage; put it on shared storage"
                )

    async def run(self, attach: bool = False, resume_only: bool = False) -> MigrationReport:
        """Migrate (or, with a job under way or ``attach``, take it over) and report."""
        t = self.target
        src = await connect(t.src_uri)
        dst: libvirt.virConnect | None = None
        readers: list[HeartbeatReader] = []
        server: ControlServer | None = None
        waiter: asyncio.Task[None] | None = None
        try:
            dst = await connect(t.dst_uri)
            ctl = self._claim_control()
            dom = await _lookup(src, self.name, t.src_uri)
            facts = domain_facts(await call("XMLDesc", dom.XMLDesc, 0))
            under_way = await self._check(dom, dst, facts)
            if resume_only and not under_way:
                raise UsageError(f"domain {self.name} has no paused post-copy migration to resume")
            attach = attach or under_way
            backend = LibvirtBackend(dom, src, dst, t.peer_uri, t.migrate_uri)
            if not attach:
                backend.refuse(self.options, self.options.policy.allows_postcopy)
            src_hb = _host_path(self.registry.root, t.src_uri, facts.heartbeat)
            dst_hb = _host_path(self.registry.root, t.dst_uri, facts.heartbeat)
            if src_hb is not None and dst_hb is not None:
                readers = [HeartbeatReader(src_hb, "src", self.log), HeartbeatReader(dst_hb, "dst", self.log)]
                await readers[0].start(timeout=2.0)
                waiter = asyncio.create_task(self._start_later(readers[1]), name=f"hb-dst-{self.name}")
            hosts = {
                "src": _host_name(self.registry.root, t.src_uri),
                "dst": _host_name(self.registry.root, t.dst_uri),
            }
            mig = Migration(backend, self.options, self.bus, hosts)
            self.migration = mig
            server = ControlServer(ctl, self.name, lambda: self.migration)
            await server.start()
            t0 = time.time()
            report = await (mig.attach() if attach else mig.run())
            if report.status == "completed" and readers:
                await asyncio.sleep(STALL_GRACE_S)
            self._finish(report, readers, t0, backend, facts)
        finally:
            if waiter is not None:
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
            if server is not None:
                await server.stop()
            for r in readers:
                await r.stop()
            for conn in (src, dst):
                if conn is not None:
                    await call("close", conn.close)
        self.report = report
        return report

    async def _start_later(self, reader: HeartbeatReader) -> None:
        """The destination's heartbeat socket appears once libvirt started its QEMU."""
        try:
            await reader.start(timeout=DST_QEMU_WAIT_S)
        except OSError as exc:
            self.log.info("destination heartbeat %s: %s", reader.path, exc)

    def _finish(
        self, report: MigrationReport, readers: list[HeartbeatReader], t0: float,
        backend: LibvirtBackend, facts: DomainFacts,
    ) -> None:  # fmt: skip
        t = self.target
        report.guest = guest_view(readers, t0, report.last_event_ts)
        if not readers:
            why = (
                "no heartbeat port" if facts.heartbeat is None else "its heartbeat socket is on a remote host"
            )
            report.guest["note"] = f"unknown: the domain has {why}"
        report.set_bound(self.options.max_bandwidth)
        report.backend = {
            "name": "libvirt", "libvirt_version": backend.version_libvirt, "source": t.src_uri,
            "destination": t.dst_uri, "migrate_uri": t.migrate_uri, "lifecycle": backend.lifecycle,
            "handshakes_ms": handshakes(backend.seen),
        }  # fmt: skip
        src, dst = _host_name(self.registry.root, t.src_uri), _host_name(self.registry.root, t.dst_uri)
        report.hosts = {"source": src, "destination": dst}
        if report.status == "completed":
            report.where = f"destination ({dst}); libvirt removed it from the source"
        elif report.switched_at_pass is None:
            report.where = f"source ({src}); nothing moved"
        else:
            blocked = (report.recovery or {}).get("blocked")
            then = (
                f"no recovery can start: {blocked}" if blocked
                else f"`livemig -c {t.src_uri} recover {self.name} --to {t.dst_uri}` resumes it"
            )  # fmt: skip
            report.where = f"split: {dst} holds the vCPUs, {src} the pages not yet sent; {then}"


# -- domains livemig defines ----------------------------------------------------------
async def start_domain(uri: str, spec: VMSpec, root: Path, accel: str = "tcg", wait: bool = True) -> str:
    """Define and start a transient domain for ``spec`` (livemig's guest image, with its
    heartbeat port); with ``wait``, return once the guest's first heartbeat arrives."""
    conn = await connect(uri)
    try:
        if await find_domain(conn, spec.name) is not None:
            raise UsageError(f"a domain named {spec.name} exists on {uri}")
        try:
            dom = await call("createXML", conn.createXML, domain_xml(spec, accel), 0)
        except LibvirtCallError as exc:
            raise UsageError(f"libvirt refused domain {spec.name}: {exc.message}") from exc
        facts = domain_facts(await call("XMLDesc", dom.XMLDesc, 0))
        hb = _host_path(root, uri, facts.heartbeat)
        if wait and hb is not None:
            await _wait_beat(hb, spec.name)
        return facts.uuid
    finally:
        await call("close", conn.close)


async def _wait_beat(path: Path, name: str) -> None:
    reader = HeartbeatReader(path, "src", log.getChild(name))
    await reader.start(timeout=10.0)
    try:
        deadline = time.monotonic() + GUEST_READY_S
        while not reader.beats:
            if time.monotonic() > deadline:
                raise UsageError(
                    f"domain {name} runs, but its guest wrote no heartbeat in {GUEST_READY_S:g}s"
                )
            await asyncio.sleep(0.05)
    finally:
        await reader.stop()


async def stop_domain(uri: str, name: str) -> None:
    """Destroy domain ``name`` (a transient one is gone then). Refused while it migrates."""
    conn = await connect(uri)
    try:
        dom = await _lookup(conn, name, uri)
        job = await _job_of(dom)
        if job != "-":
            role = "migrating" if job == "migrating" else "the destination of a migration"
            raise MigrationError(
                f"domain {name} is {role}: `livemig cancel {name}` first (after the switch to "
                "post-copy, stopping either side would lose the VM)"
            )
        await call("destroy", dom.destroy)
    finally:
        await call("close", conn.close)


async def _job_of(dom: libvirt.virDomain) -> str:
    """The domain's migration job: ``migrating`` (the source's), ``incoming`` (libvirt keeps
    job statistics only on the source, and says so on the destination) or ``-``."""
    try:
        job = await call("jobInfo", dom.jobInfo)
    except LibvirtCallError as exc:
        if exc.code != libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            raise
        return "incoming"
    return "migrating" if job[0] != libvirt.VIR_DOMAIN_JOB_NONE else "-"


_STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
           libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}  # fmt: skip
_REASONS = {libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migrating", libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "post-copy",
            libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "post-copy failed"}  # fmt: skip


async def domain_rows(uri: str) -> list[dict[str, Any]]:
    """The daemon's domains: name, state, memory and the migration job (if any)."""
    conn = await connect(uri)
    try:
        doms = await call("listAllDomains", conn.listAllDomains, 0)
        rows = []
        for dom in doms:
            state, reason = await call("state", dom.state)
            try:
                migrating = await _job_of(dom)
            except LibvirtCallError:
                migrating = "?"
            info = await call("info", dom.info)
            st = _STATES.get(state, str(state))
            if state == libvirt.VIR_DOMAIN_PAUSED and reason in _REASONS:
                st += f" ({_REASONS[reason]})"
            if state == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_POSTCOPY:
                st += " (post-copy: pages still arriving)"
            if state == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED:
                st += " (post-copy failed: pages missing; recover)"
            rows.append(
                {"name": dom.name(), "state": st, "memory_mib": info[1] // 1024, "migration": migrating}
            )
        return rows
    finally:
        await call("close", conn.close)


async def measure_dirty_rate(uri: str, name: str, seconds: int) -> tuple[int, float]:
    """A domain's RAM (bytes) and dirty rate (bytes/s): libvirt's ``startDirtyRateCalc``
    in page-sampling mode (QEMU's calc-dirty-rate: read-only), then its result once
    measured. Refused for a domain that is not running or is migrating. libvirt does not
    pass a sample size, so QEMU hashes its default 512 pages per GiB: a coarse reading
    for a slow writer over a short window (a longer ``seconds`` helps; the dirty-bitmap
    mode reads 0 under TCG)."""
    conn = await connect(uri)
    try:
        dom = await _lookup(conn, name, uri)
        if not await call("isActive", dom.isActive):
            raise UsageError(f"domain {name} is not running on {uri}")
        job = await call("jobInfo", dom.jobInfo)
        if job[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            raise UsageError(f"domain {name} is already migrating: nothing to plan")
        ram = int((await call("info", dom.info))[2]) * 1024
        await call("startDirtyRateCalc", dom.startDirtyRateCalc, seconds,
                   libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)  # fmt: skip
        await asyncio.sleep(seconds)
        deadline = time.monotonic() + 10
        while True:  # the result of a measurement libvirt was asked for (not a phase)
            stats = await call(
                "domainListGetStats", conn.domainListGetStats, [dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE
            )
            rec = stats[0][1] if stats else {}
            if rec.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return ram, float(rec.get("dirtyrate.megabytes_per_second", 0)) * (1 << 20)
            if time.monotonic() > deadline:
                raise MigrationError(f"{name}: libvirt's dirty-rate measurement did not finish")
            await asyncio.sleep(0.2)
    finally:
        await call("close", conn.close)
