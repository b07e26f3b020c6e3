"""The libvirt backend: a domain on one libvirt daemon, migrated peer-to-peer to another.

libvirt stays the engine: the source daemon runs the migration job (``migrateToURI3``
with ``VIR_MIGRATE_PEER2PEER``), so a livemig that dies does not take the migration
with it, and the next command re-attaches to the job. livemig brings the policy, the
events with their latencies, the recovery and the report.

Events, all pushed through libvirt's event loop (:mod:`.eventloop`), none polled:

* ``VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION``: the passes;
* QEMU's own MIGRATION, STOP and RESUME events, which libvirt forwards with QEMU's
  timestamps (``qemuMonitorEventRegister``): each side's migration status and the
  blackout, exactly as on the QEMU backend;
* lifecycle events (a side's QEMU gone) and ``JOB_COMPLETED`` (the final statistics).

Commands are libvirt's API: ``migrateStartPostCopy``, ``abortJob`` (with
``VIR_DOMAIN_ABORT_JOB_POSTCOPY`` to pause post-copy), ``VIR_MIGRATE_POSTCOPY_RESUME``
to recover, ``migrateSetMaxDowntime`` / ``migrateSetMaxSpeed`` to tune, job statistics
for progress. What libvirt 11.3 cannot express is refused or said (README): the
post-copy preempt channel, the blocktime statistics, pausing a destination whose
daemon is finishing the job.

Every libvirt call runs in a worker thread (they block); the migration call itself in a
daemon thread of its own, since it returns only when the migration ends.

This module is over 500 lines: one class implements the whole Backend protocol for libvirt, whose
events, commands, recovery and re-attach share one state (each side's status, the
pending job call); split across modules, that state would be passed around, not owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import libvirt
import libvirt_qemu

from livemig.backends.libvirt.eventloop import ensure_event_loop
from livemig.backends.libvirt.models import (
    MONITOR_EVENTS,
    RUNNING,
    lifecycle_name,
    monitor_event,
    parse_job_stats,
    status_from_state,
)
from livemig.core.backend import (
    AttachView,
    BackendEvent,
    EventKind,
    EventSink,
    MigrationInfo,
    Negotiated,
    Side,
)
from livemig.core.options import MigrationOptions
from livemig.errors import (
    LibvirtCallError,
    LivemigError,
    MigrationFailed,
    RecoveryBlocked,
    UnsafeCombination,
    UnsupportedError,
    UsageError,
)
from livemig.qemu.binary import MULTIFD_POSTCOPY_MIN

__all__ = ["LibvirtBackend", "call", "connect", "dotted", "find_domain"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MiB: Final = 1 << 20
REFUSAL_WAIT_S: Final = 0.5  # a resume that libvirt refuses fails within this
# a resume call pending this long is looked into: is the destination's Prepare stuck?
RESUME_PENDING_S: Final = 15.0
JOB_END_WAIT_S: Final = 15.0


def _mib(rate: int) -> int:
    """libvirt takes bandwidths in MiB/s: round bytes/s up (0 would mean unlimited)."""
    return max(1, -(-rate // MiB))


def dotted(version: int) -> str:
    """libvirt's packed version number (11003000) as text (11.3.0)."""
    return ".".join(str(version // 10**k % 1000) for k in (6, 3, 0))


def _error(call_name: str, exc: libvirt.libvirtError) -> LibvirtCallError:
    msg = (exc.get_error_message() or str(exc)).strip().splitlines()[0]
    return LibvirtCallError(call_name, exc.get_error_code() or 0, msg)


async def call(name: str, fn: Callable[..., T], *args: Any) -> T:
    """One blocking libvirt call in a worker thread; its error as a LibvirtCallError."""
    try:
        return await asyncio.to_thread(fn, *args)
    except libvirt.libvirtError as exc:
        raise _error(name, exc) from exc


async def connect(uri: str) -> libvirt.virConnect:
    """A connection to ``uri`` with keepalive, or a one-line UsageError."""
    ensure_event_loop()
    try:
        conn = await call("open", libvirt.open, uri)
    except LibvirtCallError as exc:
        raise UsageError(f"cannot connect to {uri}: {exc.message}") from exc
    try:
        conn.setKeepAlive(5, 3)
    except libvirt.libvirtError as exc:
        log.info("no keepalive on %s: %s", uri, exc)
    return conn


async def find_domain(conn: libvirt.virConnect, key: str, by: str = "name") -> libvirt.virDomain | None:
    """The domain named ``key`` (``by="uuid"``: with that UUID), or None if the daemon has none."""
    fn = conn.lookupByName if by == "name" else conn.lookupByUUIDString
    try:
        return await call(fn.__name__, fn, key)
    except LibvirtCallError as exc:
        if exc.code == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


class _Call:
    """A long libvirt call (the migration) in a daemon thread, awaitable from the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, fn: Callable[[], Any]) -> None:
        self.name = name
        self.done: asyncio.Future[None] = loop.create_future()
        self.started = time.time()

        def run() -> None:
            err: LibvirtCallError | None = None
            try:
                fn()
            except libvirt.libvirtError as exc:
                err = _error(name, exc)
            try:
                loop.call_soon_threadsafe(self._settle, err)
            except RuntimeError:  # the loop closed first: nobody waits for this call any more
                log.info("%s ended after livemig stopped waiting: %s", name, err or "ok")

        threading.Thread(target=run, name=f"libvirt-{name}", daemon=True).start()

    def _settle(self, err: LibvirtCallError | None) -> None:
        if self.done.done():
            return
        if err is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(err)

    def __repr__(self) -> str:
        return f"<_Call {self.name} {'done' if self.done.done() else 'running'}>"

    def error(self) -> LibvirtCallError | None:
        if not self.done.done() or self.done.cancelled():
            return None
        exc = self.done.exception()
        return exc if isinstance(exc, LibvirtCallError) else None


class LibvirtBackend:
    """Implements :class:`livemig.core.backend.Backend` for a libvirt domain. ``peer_uri``:
    the destination daemon as the source daemon reaches it (peer-to-peer);
    ``migrate_uri``: where QEMU's stream goes (``tcp://ADDRESS``), None for libvirt's
    choice (the destination host's name)."""

    hypervisor = "libvirt"

    def __init__(
        self,
        dom: libvirt.virDomain,
        src: libvirt.virConnect,
        dst: libvirt.virConnect,
        peer_uri: str,
        migrate_uri: str | None = None,
    ) -> None:
        self.name = dom.name()
        self.uuid = dom.UUIDString()
        self.dom = dom
        self.conns: dict[Side, libvirt.virConnect] = {"src": src, "dst": dst}
        self.peer_uri = peer_uri
        self.migrate_uri = migrate_uri
        self.version = dotted(src.getVersion())  # QEMU's, as the report's qemu_version
        self.version_libvirt = dotted(src.getLibVersion())
        self.accel = "kvm" if "type='kvm'" in dom.XMLDesc(0).split(">", 1)[0] else "tcg"
        self.log = log.getChild(self.name)
        self._loop = asyncio.get_running_loop()
        self._lost: dict[Side, asyncio.Event] = {"src": asyncio.Event(), "dst": asyncio.Event()}
        self._status: dict[Side, str] = {}
        self._pass_ts: dict[int, float] = {}
        self._completed: dict[Side, dict[str, Any]] = {}
        self._queue: asyncio.Queue[BackendEvent] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self._callbacks: list[tuple[Side, str, int]] = []
        self._flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        self._params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri} if migrate_uri else {}
        self._downtime: int | None = None
        self._failure: str | None = None  # libvirt's own error, when QEMU reported none
        self._migrate: _Call | None = None
        self._job_done = asyncio.Event()  # the source's JOB_COMPLETED arrived
        self._src_stopped = asyncio.Event()  # the source domain stopped (libvirt's Confirm phase)
        self._seen_status = asyncio.Event()  # the source's QEMU began migrating
        self.lifecycle: list[dict[str, Any]] = []  # libvirt's lifecycle events, for the report
        self.seen: list[BackendEvent] = []  # every event delivered, for the report's handshakes
        for side, conn in self.conns.items():
            conn.registerCloseCallback(self._on_close, side)

    def __repr__(self) -> str:
        return f"<LibvirtBackend {self.name} -> {self.peer_uri} {self._status} migrate={self._migrate!r}>"

    def lost(self, side: Side) -> asyncio.Event:
        return self._lost[side]

    # -- events (callbacks run in libvirt's event thread) ------------------
    def _push(self, ev: BackendEvent) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ev)

    def _mine(self, dom: libvirt.virDomain | None) -> bool:
        return dom is not None and dom.UUIDString() == self.uuid

    def _on_close(self, _conn: Any, reason: int, side: Side) -> None:
        self.log.warning("connection to the %s daemon closed (reason %d)", side, reason)
        with contextlib.suppress(RuntimeError):  # a loop closed after the migration: nobody to tell
            self._loop.call_soon_threadsafe(self._lost[side].set)

    def _on_monitor(
        self, _c: Any, dom: Any, event: str, sec: int, usec: int, details: Any, side: Side
    ) -> None:
        if not self._mine(dom):
            return
        arrived = time.time()
        if event == "MIGRATION_PASS":  # only its timestamp: the pass itself is MIGRATION_ITERATION's
            ev = monitor_event(side, event, sec, usec, details, arrived)
            if ev is not None and ev.n is not None and ev.ts is not None:
                self._pass_ts[ev.n] = ev.ts
            return
        ev = monitor_event(side, event, sec, usec, details, arrived)
        if ev is not None:
            self._push(ev)

    def _on_iteration(self, _c: Any, dom: Any, iteration: int, side: Side) -> None:
        if self._mine(dom) and side == "src":
            self._push(
                BackendEvent(EventKind.PASS, "src", time.time(), self._pass_ts.get(iteration), n=iteration)
            )

    def _on_lifecycle(self, _c: Any, dom: Any, event: int, detail: int, side: Side) -> None:
        if not self._mine(dom):
            return
        self.lifecycle.append(
            {"side": side, "event": lifecycle_name(event, detail), "t": round(time.time(), 6)}
        )
        self.log.debug("%s lifecycle %d/%d", side, event, detail)
        gone = event == libvirt.VIR_DOMAIN_EVENT_STOPPED and not (
            side == "src" and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
        )
        if gone:
            self._loop.call_soon_threadsafe(self._lost[side].set)
        if side == "src" and event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._loop.call_soon_threadsafe(self._src_stopped.set)

    def _on_job_completed(self, _c: Any, dom: Any, params: dict[str, Any], side: Side) -> None:
        if self._mine(dom):
            self._completed[side] = dict(params)
            if side == "src":
                self._loop.call_soon_threadsafe(self._job_done.set)

    async def open(self, sink: EventSink) -> None:
        for side, conn in self.conns.items():
            for ev_id, cb in ((libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                              (libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, self._on_iteration),
                              (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed)):  # fmt: skip
                cid = await call("domainEventRegisterAny", conn.domainEventRegisterAny, None, ev_id, cb, side)
                self._callbacks.append((side, "domain", cid))
            for event in (*MONITOR_EVENTS, "MIGRATION_PASS"):
                cid = await call("qemuMonitorEventRegister", libvirt_qemu.qemuMonitorEventRegister,
                                 conn, None, event, self._on_monitor, side, 0)  # fmt: skip
                self._callbacks.append((side, "monitor", cid))
        self._pump = asyncio.create_task(self._deliver(sink), name=f"libvirt-pump-{self.name}")

    async def _deliver(self, sink: EventSink) -> None:
        while True:
            ev = await self._queue.get()
            self.seen.append(ev)
            if ev.kind is EventKind.STATUS and ev.status is not None:
                self._status[ev.side] = ev.status
                if ev.side == "src":
                    self._seen_status.set()
            await sink(ev)

    async def close(self) -> None:
        await self._job_end()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        for side, kind, cid in self._callbacks:
            conn = self.conns[side]
            fn = conn.domainEventDeregisterAny if kind == "domain" else (
                lambda i, c=conn: libvirt_qemu.qemuMonitorEventDeregister(c, i))  # fmt: skip
            try:
                await call("deregister", fn, cid)
            except LivemigError as exc:
                self.log.debug("deregister %s %d: %s", kind, cid, exc)
        self._callbacks.clear()
        for side, conn in self.conns.items():  # else it keeps the connection, and fires later
            try:
                await call("unregisterCloseCallback", conn.unregisterCloseCallback)
            except LivemigError as exc:
                self.log.debug("close callback of the %s daemon: %s", side, exc)

    async def _job_end(self) -> None:
        """libvirt's job ends after QEMU's: the source's Confirm phase stops (and, for a
        transient domain, removes) the source domain, and a failed or cancelled job cleans
        up the destination. Wait for that, so that the next command finds the domain in one
        place and free of libvirt's job."""
        waits: list[asyncio.Future[Any]] = []
        mig = self._migrate
        if (
            mig is not None
            and not mig.done.done()
            and self._status.get("src") in ("completed", "cancelled", "failed")
        ):
            waits.append(mig.done)
        stopped: asyncio.Future[Any] | None = None
        if self._status.get("src") == "completed" and not self._src_stopped.is_set():
            stopped = asyncio.ensure_future(self._src_stopped.wait())
            waits.append(stopped)
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=JOB_END_WAIT_S)
        if stopped is not None:
            stopped.cancel()
        if pending:
            self.log.warning("libvirt's job did not end %gs after QEMU's", JOB_END_WAIT_S)

    # -- commands ------------------------------------------------------------
    def refuse(self, options: MigrationOptions, allows_postcopy: bool) -> None:
        """Raise for what libvirt cannot express or would lose the VM (pure: nothing changes)."""
        if options.preempt:
            raise UnsupportedError(
                "postcopy-preempt", "libvirt (9.0 to 11.3) has no flag for QEMU's postcopy-preempt channel: "
                "drop --preempt (the qemu backend has it)",
            )  # fmt: skip
        if options.tls_dirs is not None:
            raise UsageError(
                "with libvirt, TLS is the daemons' own (migrate_tls in qemu.conf); give --tls only"
            )
        qemu = tuple(int(x) for x in self.version.split("."))
        if options.multifd and allows_postcopy and qemu < MULTIFD_POSTCOPY_MIN:
            raise UnsafeCombination(
                f"multifd with post-copy loses the VM on QEMU {self.version} (the destination aborts at "
                "the switch); use one or the other"
            )

    async def prepare(self, options: MigrationOptions, allows_postcopy: bool) -> Negotiated:
        self.refuse(options, allows_postcopy)
        flags = self._flags
        if allows_postcopy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        if options.tls:
            flags |= libvirt.VIR_MIGRATE_TLS
        if options.multifd:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
        params = dict(self._params)
        if options.max_bandwidth:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = _mib(options.max_bandwidth)
        if options.postcopy_bandwidth and allows_postcopy:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = _mib(options.postcopy_bandwidth)
        self._flags, self._params = flags, params
        self._downtime = options.downtime_limit_ms
        caps = {"postcopy-ram": allows_postcopy, "postcopy-preempt": False, "multifd": options.multifd}
        return Negotiated(
            self.migrate_uri or self.peer_uri, caps, tls=options.tls,
            parameters={"flags": self._flags, **{k: v for k, v in params.items() if k != "migrate_uri"}},
        )  # fmt: skip

    def _run_migrate(self, extra: int, name: str) -> _Call:
        flags, params = self._flags | extra, dict(self._params)
        return _Call(self._loop, name, lambda: self.dom.migrateToURI3(self.peer_uri, params, flags))

    async def start(self) -> None:
        """Start the job; a refusal before QEMU begins (libvirt's own checks: storage, CPU,
        machine, an unreachable peer) is raised here, with nothing changed."""
        self._migrate = mig = self._run_migrate(0, "migrateToURI3")
        seen: asyncio.Future[Any] = asyncio.ensure_future(self._seen_status.wait())
        await asyncio.wait([seen, mig.done], return_when=asyncio.FIRST_COMPLETED)
        seen.cancel()
        if (err := mig.error()) is not None and not self._seen_status.is_set():
            raise UsageError(f"libvirt refused the migration: {err.message}")
        mig.done.add_done_callback(self._migrate_ended)
        if self._downtime is not None:
            await self.tune(downtime_limit_ms=self._downtime)

    def _migrate_ended(self, fut: asyncio.Future[None]) -> None:
        """The job's call returned. Its outcome reaches the core as QEMU's status events;
        only an error that QEMU never reported (libvirt's own, after the stream) becomes a
        ``failed`` status here."""
        if fut.cancelled() or (exc := fut.exception()) is None:
            return
        st = self._status.get("src")
        self.log.info("the migration call ended: %s (source status %s)", exc, st)
        if st in (None, "setup", "active", "device", "pre-switchover"):
            self._failure = str(exc)
            self._push(BackendEvent(EventKind.STATUS, "src", time.time(), None, status="failed"))

    async def switch(self) -> None:
        await call("migrateStartPostCopy", self.dom.migrateStartPostCopy, 0)

    async def cancel(self) -> None:
        await call("abortJob", self.dom.abortJob)

    async def pause(self, side: Side) -> None:
        if side == "dst":
            # The destination daemon holds the domain's job until its stream fails
            # (Finish3): a pause there waits 30 s for the lock. It pauses by itself when the
            # source's shutdown reaches it.
            self.log.info("pause: libvirt pauses only the source; the destination follows")
            return
        await call("abortJobFlags", self.dom.abortJobFlags, libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY)

    async def recover(self, timeout: float) -> None:
        """``VIR_MIGRATE_POSTCOPY_RESUME``, once the failed job's call has returned (the
        destination noticed the outage); confirmed by status events."""
        prev = self._migrate
        if prev is not None and not prev.done.done():
            done, _ = await asyncio.wait({prev.done}, timeout=timeout)
            if not done and prev.name == "resume":
                await self._resume_pending(prev)  # raises: why it has not returned
            if not done:
                raise MigrationFailed("libvirt's job has not failed yet (the destination has not noticed)")
        self._migrate = mig = self._run_migrate(libvirt.VIR_MIGRATE_POSTCOPY_RESUME, "resume")
        done, _ = await asyncio.wait({mig.done}, timeout=REFUSAL_WAIT_S)
        if done and (err := mig.error()) is not None:
            raise MigrationFailed(f"post-copy resume refused: {err.message}")

    async def _resume_pending(self, prev: _Call) -> None:
        """An earlier attempt's resume call has not returned: raise why. If it has been
        pending for ``RESUME_PENDING_S``, ask the destination's daemon for something that
        needs the domain's job (memory statistics): libvirt gives up after 30 s naming the
        job's holder, and a Prepare step that holds it that long is waiting for QEMU's
        monitor, for good (:class:`RecoveryBlocked`). Seen on TCG: the vCPU, delivering an
        interrupt with QEMU's lock held, waits for a stack page that only the recovery
        brings, and QEMU's main loop waits for that lock. libvirt sends ``migrate-recover``
        in band; the out-of-band command that would get through (the qemu backend's) is
        not libvirt's to send."""
        pending = time.time() - prev.started
        dom = await self._dst_domain() if pending >= RESUME_PENDING_S else None
        if dom is not None:
            try:
                await call("memoryStats", dom.memoryStats)
            except LibvirtCallError as exc:
                if exc.code == libvirt.VIR_ERR_OPERATION_TIMEOUT and "Prepare" in exc.message:
                    raise RecoveryBlocked(
                        f"the destination's QEMU has not answered libvirt for {time.time() - prev.started:.0f}s "
                        f"({exc.message}): libvirt's resume cannot start there, and libvirt sends QEMU's "
                        "migrate-recover in band only (a QEMU thread holding its lock waits for a page "
                        "that only the recovery would bring)"
                    ) from exc
                self.log.info("the destination's daemon: %s", exc)
        raise MigrationFailed(f"libvirt's resume from {pending:.0f}s ago has not returned")

    async def abort_resume(self) -> bool:
        """libvirt's resume call owns its connection: nothing to withdraw from outside."""
        return False

    async def tune(
        self,
        *,
        downtime_limit_ms: int | None = None,
        max_bandwidth: int | None = None,
        postcopy_bandwidth: int | None = None,
    ) -> None:
        if downtime_limit_ms is not None:
            await call("migrateSetMaxDowntime", self.dom.migrateSetMaxDowntime, downtime_limit_ms, 0)
        if max_bandwidth is not None:
            await call("migrateSetMaxSpeed", self.dom.migrateSetMaxSpeed, _mib(max_bandwidth), 0)
        if postcopy_bandwidth is not None:
            await call("migrateSetMaxSpeed", self.dom.migrateSetMaxSpeed, _mib(postcopy_bandwidth),
                       libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)  # fmt: skip

    async def _dst_domain(self) -> libvirt.virDomain | None:
        return await find_domain(self.conns["dst"], self.uuid, by="uuid")

    async def progress(self, side: Side = "src") -> MigrationInfo:
        status = self._status.get(side, "none")
        if side == "src" and status == "completed" and not self._job_done.is_set():
            # QEMU completed; libvirt's JOB_COMPLETED (its final figures) follows with its
            # Confirm phase, after which a transient domain has no job statistics left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._job_done.wait(), JOB_END_WAIT_S)
        if side in self._completed:
            return parse_job_stats(self._completed[side], status, completed=True)
        dom = self.dom if side == "src" else await self._dst_domain()
        if dom is None:
            return MigrationInfo(status)
        try:
            stats = await call("jobStats", dom.jobStats)
        except LibvirtCallError as exc:
            if exc.code == libvirt.VIR_ERR_NO_DOMAIN:  # a transient domain that left
                return MigrationInfo(status)
            if status != "completed":
                raise
            # the job ended (after a resume, libvirt may send no JOB_COMPLETED): its last figures
            stats = await call("jobStats", dom.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            return parse_job_stats(stats, status, completed=True)
        return parse_job_stats(stats, status, error=self._failure if side == "src" else None)

    async def destination_running(self) -> tuple[bool, str]:
        dom = await self._dst_domain()
        if dom is None:
            return False, "no domain"
        state, reason = await call("state", dom.state)
        return state == RUNNING, "running" if state == RUNNING else f"state {state} (reason {reason})"

    async def attach(self) -> AttachView:
        state, reason = await call("state", self.dom.state)
        job = await call("jobInfo", self.dom.jobInfo)
        src = status_from_state("src", state, reason, job[0] != libvirt.VIR_DOMAIN_JOB_NONE)
        dst_dom = await self._dst_domain()
        dst, running = "none", False
        if dst_dom is not None:
            dstate, dreason = await call("state", dst_dom.state)
            dst, running = status_from_state("dst", dstate, dreason, True), dstate == RUNNING
        self._status.update({"src": src, "dst": dst})
        info = await self.progress("src")
        flags = self._flags | libvirt.VIR_MIGRATE_POSTCOPY  # a job taken over may switch
        self._flags = flags
        return AttachView(src, dst, {"postcopy-ram": True}, info, running)
