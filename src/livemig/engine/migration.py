"""One live migration between two QEMU processes, driven by pushed QMP events.

Phase changes come only from QEMU's events (MIGRATION, MIGRATION_PASS, STOP,
RESUME) on both monitors. ``query-migrate`` is used for progress figures (the
policy's snapshot, the timeline) and the final report, never to detect a phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from qemu.qmp import EventListener

from livemig.engine.events import MigrationEvent, Side, qemu_timestamp, translate
from livemig.engine.recovery import Backoff
from livemig.engine.report import MigrationReport
from livemig.engine.state import TERMINAL, MigrationState, StateMachine, path, require
from livemig.errors import (
    LivemigError,
    MigrationFailed,
    QMPCommandError,
    StateError,
    UnsafeCombination,
    UnsupportedError,
)
from livemig.policy import DEFAULT_POLICY, Action, Decision, Policy, Progress
from livemig.qemu.binary import MULTIFD_POSTCOPY_MIN, QemuBinary
from livemig.qemu.instance import QemuInstance
from livemig.qemu.monitor import Monitor

__all__ = ["Endpoint", "Migration", "MigrationOptions"]

log = logging.getLogger(__name__)
S = MigrationState
PAGE = 4096
WATCHED = ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME")
MANAGED_CAPS = ("postcopy-ram", "postcopy-preempt", "postcopy-blocktime", "multifd")
# Parameters a QEMU keeps from an earlier migration are reset to QEMU's defaults unless asked for.
DEFAULT_PARAMS: dict[str, Any] = {
    "max-bandwidth": 128 << 20, "downtime-limit": 300, "max-postcopy-bandwidth": 0, "tls-creds": "",
}  # fmt: skip
# QEMU's defaults are 50/550/5/100 ms: the first RARP 50 ms after the VM resumes. Clients of
# the VM are cut off until the switches learn its new port, so announce sooner and often.
DEFAULT_ANNOUNCE: dict[str, int] = {"initial": 10, "max": 250, "rounds": 6, "step": 50}
RESUMING: Final = frozenset({"postcopy-recover-setup", "postcopy-recover"})
# The source QEMU's migration status when livemig reattaches -> the state to resume in.
ATTACH_STATE: dict[str, MigrationState] = {
    "setup": S.SETUP, "active": S.PRECOPY, "device": S.PRECOPY, "pre-switchover": S.PRECOPY,
    "completed": S.PRECOPY, "postcopy-active": S.POSTCOPY, "postcopy-paused": S.POSTCOPY_PAUSED,
    "postcopy-recover-setup": S.POSTCOPY_PAUSED, "postcopy-recover": S.POSTCOPY_PAUSED,
    "failed": S.FAILED, "cancelling": S.CANCELLED, "cancelled": S.CANCELLED,
}  # fmt: skip


def _free_port_hint() -> int:
    """A port for the destination's recovery listener: a random one of the dynamic range
    (on a clash migrate-recover fails and the next attempt draws another)."""
    return secrets.choice(range(49152, 65535))


@dataclass(frozen=True)
class MigrationOptions:
    policy: Policy = DEFAULT_POLICY
    preempt: bool | None = None  # None: on whenever post-copy is allowed and supported
    max_bandwidth: int | None = None  # bytes/s; None keeps QEMU's default
    downtime_limit_ms: int | None = None
    postcopy_bandwidth: int | None = None  # bytes/s of the background stream in post-copy
    blocktime: bool = True
    multifd: bool = False
    address: str = "127.0.0.1"
    port: int = 0  # 0: the destination picks a free port
    tick_s: float = 0.25
    confirm_timeout_s: float = 30.0
    # Reliability: no bytes moved for stall_timeout_s means the link is gone. In pre-copy
    # the migration is cancelled (the VM stays on the source); in post-copy both sides
    # are paused and recovery is retried with backoff until recover_deadline_s.
    # TLS: (source dir, destination dir) of x509 credentials; covers every channel.
    tls_dirs: tuple[str, str] | None = None
    tls: bool = False  # ask for TLS; the job fills tls_dirs (the lab's PKI) or refuses
    stall_timeout_s: float = 5.0
    recover: bool = True
    recover_deadline_s: float = 120.0
    recover_attempt_s: float = 10.0
    # Self-announce of the destination (RARPs from each NIC's MAC, so that switches learn
    # the VM's new port): QEMU's migration parameters, set on the destination.
    announce: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ANNOUNCE))


@dataclass
class Endpoint:
    """One side of a migration: its QEMU and the monitor livemig holds."""

    side: Side
    instance: QemuInstance
    monitor: Monitor
    qemu: QemuBinary

    def __repr__(self) -> str:
        return f"<Endpoint {self.side} {self.instance!r}>"


@dataclass
class _Sample:
    t: float
    status: str
    remaining: int
    transferred: int
    dirty_rate_bps: float
    mbps: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 4),
            "status": self.status,
            "remaining": self.remaining,
            "transferred": self.transferred,
            "dirty_rate_bps": self.dirty_rate_bps,
            "mbps": self.mbps,
        }


@dataclass
class _Timing:
    migrate_ts: float | None = None
    stop_qemu_ts: float | None = None
    resume_qemu_ts: float | None = None
    postcopy_requested_at_pass: int | None = None
    switch_reason: str | None = None


class Migration:
    """Migrates ``src`` to ``dst`` (a QEMU started with ``-incoming defer``).

    Use :meth:`run` from the event loop; :meth:`start_postcopy` and
    :meth:`cancel` may be awaited concurrently (from other tasks, or from other
    threads through :mod:`livemig.sync`).
    """

    def __init__(self, src: Endpoint, dst: Endpoint, options: MigrationOptions | None = None) -> None:
        self.src = src
        self.dst = dst
        self.options = options or MigrationOptions()
        self.policy = self.options.policy
        self.name = src.instance.name
        self.log = log.getChild(self.name)
        self._sm = StateMachine()
        self._events: list[MigrationEvent] = []
        self._raw: list[tuple[Side, dict[str, Any]]] = []
        self._subscribers: list[asyncio.Queue[MigrationEvent | None]] = []
        self._callbacks: list[Callable[[MigrationEvent], None]] = []
        self._changed = asyncio.Condition()
        self._timing = _Timing()
        self._passes = 0
        self._last: _Sample | None = None
        self._timeline: list[_Sample] = []
        self._decisions: list[dict[str, Any]] = []
        self._src_completed = False
        self._src_completed_delivered: float | None = None
        self._side_status: dict[str, str] = {}  # each QEMU's latest MIGRATION status (pushed)
        self._status_seq = 0
        self._progress_at: float | None = None
        self._watchdog_fired = False
        self._cancel_is_failure = False
        self._cancel_sent = False  # then the destination's "failed" (its stream ended) is expected
        self._recover_port: int | None = None  # the destination's recovery listener, once up
        self._recovery: dict[str, Any] | None = None
        self._pause_asked: set[str] = set()  # sides sent migrate-pause since the last recovery
        self._dst_resumed = False
        self._dst_running_confirmed = False
        self._failure: str | None = None
        self._failure_phase: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._listeners: list[tuple[Monitor, EventListener]] = []
        self._migrate_issued = asyncio.Event()
        self._postcopy_requested = False
        self.uri: str | None = None
        self.caps: dict[str, bool] = {}
        self.preempt = False
        self.qemu_version = src.qemu.version_str

    def __repr__(self) -> str:
        return (
            f"<Migration {self.name} {self._sm.state} policy={self.policy} "
            f"passes={self._passes} uri={self.uri}>"
        )

    # -- public state ------------------------------------------------------
    @property
    def state(self) -> MigrationState:
        return self._sm.state

    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest progress figures (from the sampler's ``query-migrate``), for displays."""
        if self._last is None:
            return None
        return {**self._last.to_dict(), "passes": self._passes}

    @property
    def events_so_far(self) -> list[MigrationEvent]:
        return list(self._events)

    def on_event(self, callback: Callable[[MigrationEvent], None]) -> None:
        """Call ``callback(event)`` for every event (in the event loop's thread)."""
        self._callbacks.append(callback)

    async def events(self) -> AsyncIterator[MigrationEvent]:
        """Every event from the start (history first), then live ones, until the end."""
        queue: asyncio.Queue[MigrationEvent | None] = asyncio.Queue()
        for ev in self._events:
            queue.put_nowait(ev)
        if self._sm.terminal:
            queue.put_nowait(None)
        else:
            self._subscribers.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(queue)

    # -- publishing --------------------------------------------------------
    def _publish(self, ev: MigrationEvent) -> None:
        self._events.append(ev)
        lat = f" latency={ev.latency_ms:.3f}ms" if ev.latency_ms is not None else ""
        self.log.info("event %s %s%s", ev.name, dict(ev.data), lat)
        for q in self._subscribers:
            q.put_nowait(ev)
        for cb in self._callbacks:
            try:
                cb(ev)
            except Exception:
                self.log.exception("event callback %r failed", cb)

    async def _set_state(self, new: MigrationState, why: str) -> None:
        if self._sm.to(new, why):
            self.log.info("state %s (%s)", new, why)
        if new in TERMINAL:
            for q in self._subscribers:
                q.put_nowait(None)
        async with self._changed:
            self._changed.notify_all()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- negotiation -------------------------------------------------------
    async def _capabilities(self, ep: Endpoint) -> set[str]:
        caps = await ep.monitor.execute("query-migrate-capabilities")
        return {c["capability"] for c in caps}

    def _wanted_caps(self, src_caps: set[str], dst_caps: set[str]) -> dict[str, bool]:
        common = src_caps & dst_caps
        pc = self.policy.allows_postcopy
        if pc and "postcopy-ram" not in common:
            raise UnsupportedError(
                "postcopy-ram",
                f"policy {self.policy} needs post-copy, but this QEMU lacks postcopy-ram "
                "(query-migrate-capabilities); use --policy precopy",
            )
        if "events" not in common:
            raise UnsupportedError("events", "QEMU lacks the 'events' migration capability")
        wanted: dict[str, bool] = {"events": True}
        if pc:
            wanted["postcopy-ram"] = True
            preempt = self.options.preempt
            if preempt is None:
                preempt = "postcopy-preempt" in common
            elif preempt and "postcopy-preempt" not in common:
                raise UnsupportedError("postcopy-preempt", "QEMU lacks postcopy-preempt")
            if preempt:
                wanted["postcopy-preempt"] = True
            if self.options.blocktime and "postcopy-blocktime" in common:
                wanted["postcopy-blocktime"] = True
        # A QEMU keeps its capabilities from one migration to the next (a destination that
        # took a post-copy migration still has postcopy-ram on when it migrates out), and
        # a mismatch fails the stream: so every capability livemig manages is set, on or off.
        for cap in MANAGED_CAPS:
            if cap in common:
                wanted.setdefault(cap, False)
        if self.options.multifd:
            if pc and self.src.qemu.version < MULTIFD_POSTCOPY_MIN:
                raise UnsafeCombination(
                    f"multifd with post-copy loses the VM on QEMU {self.src.qemu.version_str} "
                    "(the destination aborts at the switch); use one or the other, or QEMU >= 10.1"
                )
            wanted["multifd"] = True
        return wanted

    async def _negotiate(self) -> None:
        # Every policy runs some live pre-copy: refuse QEMUs whose dirty bitmap misses TCG writes.
        self.src.qemu.require_live_precopy(self.src.instance.accel)
        src_caps, dst_caps = await asyncio.gather(self._capabilities(self.src), self._capabilities(self.dst))
        self.caps = self._wanted_caps(src_caps, dst_caps)
        self.preempt = self.caps.get("postcopy-preempt", False)
        arg = {"capabilities": [{"capability": k, "state": v} for k, v in self.caps.items()]}
        # Order matters (NOTES): destination capabilities, then migrate-incoming; then source.
        await self.dst.monitor.execute("migrate-set-capabilities", arg)
        announce = {f"announce-{k}": v for k, v in self.options.announce.items()}
        if announce:
            await self.dst.monitor.execute("migrate-set-parameters", announce)
        tls_params = await self._tls()
        for ep in (self.src, self.dst):
            self._listen(ep)
        port = self.options.port
        uri = f"tcp:{self.options.address}:{port}"
        try:
            await self.dst.monitor.execute("migrate-incoming", {"uri": uri})
        except QMPCommandError as exc:
            raise MigrationFailed(
                f"destination cannot listen on {uri}: {exc.desc}", self.state, "setup"
            ) from exc
        if port == 0:
            info = await self.dst.monitor.execute("query-migrate")
            addrs = info.get("socket-address") or []
            if not addrs:
                raise MigrationFailed("destination did not report its listening port", self.state, "setup")
            port = int(addrs[0]["port"])
        self.uri = f"tcp:{self.options.address}:{port}"
        await self.src.monitor.execute("migrate-set-capabilities", arg)
        params: dict[str, Any] = {**DEFAULT_PARAMS, **tls_params}
        if self.options.max_bandwidth is not None:
            params["max-bandwidth"] = self.options.max_bandwidth
        if self.options.downtime_limit_ms is not None:
            params["downtime-limit"] = self.options.downtime_limit_ms
        if self.options.postcopy_bandwidth is not None and self.policy.allows_postcopy:
            params["max-postcopy-bandwidth"] = self.options.postcopy_bandwidth
        if params:
            await self.src.monitor.execute("migrate-set-parameters", params)
        self.params = {**params, **{f"destination {k}": v for k, v in announce.items()}}

    async def _tls(self) -> dict[str, Any]:
        """x509 credentials on both sides (a fresh id each time); the destination's are set
        before it listens. Returns the source's parameters."""
        if self.options.tls_dirs is None:
            return {}
        cid = f"lm-tls-{secrets.token_hex(3)}"
        src_dir, dst_dir = self.options.tls_dirs
        for ep, d, role in ((self.dst, dst_dir, "server"), (self.src, src_dir, "client")):
            await ep.monitor.execute(
                "object-add",
                {"qom-type": "tls-creds-x509", "id": cid, "dir": d, "endpoint": role, "verify-peer": True},
            )
        await self.dst.monitor.execute("migrate-set-parameters", {"tls-creds": cid})
        return {"tls-creds": cid, "tls-hostname": self.options.address}

    def _listen(self, ep: Endpoint) -> None:
        lst = ep.monitor.listener(WATCHED)
        self._listeners.append((ep.monitor, lst))
        self._tasks.append(asyncio.create_task(self._pump(ep, lst), name=f"pump-{ep.side}"))
        self._tasks.append(asyncio.create_task(self._watch_lost(ep), name=f"lost-{ep.side}"))

    # -- event handling ----------------------------------------------------
    async def _pump(self, ep: Endpoint, lst: EventListener) -> None:
        async for msg in lst:
            try:
                await self._on_qmp(ep.side, dict(msg))
            except Exception as exc:
                self.log.exception("handling %s from %s", msg.get("event"), ep.side)
                await self._fail(f"internal error handling {msg.get('event')}: {exc}")

    async def _on_qmp(self, side: Side, msg: dict[str, Any]) -> None:
        now = time.time()
        self._raw.append((side, msg))
        name = msg.get("event")
        status = (msg.get("data") or {}).get("status")
        self.log.debug("qmp %s %s %s", side, name, msg.get("data"))
        ev = translate(side, msg, now)
        if name == "STOP" and side == "src":
            self._timing.stop_qemu_ts = qemu_timestamp(msg)
        if name == "RESUME" and side == "dst":
            self._timing.resume_qemu_ts = qemu_timestamp(msg)
            self._dst_resumed = True
        if name == "MIGRATION_PASS" and side == "src":
            self._passes = max(self._passes, int(msg["data"]["pass"]))
        if name == "MIGRATION":
            self._side_status[side] = str(status)
            self._status_seq += 1
        if ev is not None and ev.name != "completed":
            self._publish(ev)
        if name == "MIGRATION":
            await self._on_status(side, str(status), now)
        elif name == "MIGRATION_PASS" and side == "src":
            await self._evaluate(f"pass {msg['data']['pass']}")
        await self._notify()

    async def _on_status(self, side: Side, status: str, now: float) -> None:
        st = self.state
        if side == "src" and status == "active" and st is S.SETUP:
            await self._set_state(S.PRECOPY, "source reports active")
        elif status == "postcopy-active" and side == "src" and st in (S.SETUP, S.PRECOPY):
            await self._set_state(S.POSTCOPY, "source reports postcopy-active")
        elif status == "completed" and side == "src":
            self._src_completed = True
            self._src_completed_delivered = now
        elif status == "failed" and self._cancelling:
            self.log.info("%s reports failed: expected, its stream was cancelled", side)
            if side == "src":  # the source's "failed" ends the cancel as "cancelled" would
                await self._on_status("src", "cancelled", now)
        elif status == "failed":
            who = "source" if side == "src" else "destination"
            await self._fail(f"{who} QEMU reports failed{await self._error_desc(side)}")
        elif status == "cancelled" and side == "src" and st in (S.SETUP, S.PRECOPY):
            if self._cancel_is_failure:
                await self._fail(self._failure or "cancelled after a failure")
            else:
                await self._set_state(S.CANCELLED, "source reports cancelled")
        elif status == "postcopy-paused" and st is S.POSTCOPY:
            await self._set_state(S.POSTCOPY_PAUSED, f"{side} reports postcopy-paused")

    @property
    def _cancelling(self) -> bool:
        """migrate_cancel was sent, and nothing switched. QEMU 10.0 then races the cancel against
        the stream: the destination may report "failed" or exit ("load of migration failed"),
        and the source may end "failed" instead of "cancelled". All of these end the cancel;
        nothing was switched, so the VM keeps running on the source."""
        return self._cancel_sent and self.state not in (S.POSTCOPY, S.POSTCOPY_PAUSED)

    async def _error_desc(self, side: Side) -> str:
        """QEMU's own reason for a failed migration (query-migrate's error-desc), as ': ...'."""
        ep = self.src if side == "src" else self.dst
        if self._sm.terminal or ep.monitor.lost.is_set():
            return ""
        # Not wait_for: a command to a QEMU that is going away may not end when cancelled
        # (a cancel test hung there). Leave it behind after 2 s instead.
        query = asyncio.ensure_future(ep.monitor.execute("query-migrate"))
        done, _ = await asyncio.wait({query}, timeout=2.0)
        if not done:
            query.add_done_callback(lambda t: t.cancelled() or t.exception())
            return ""
        try:
            info = query.result()
        except LivemigError:
            return ""
        desc = info.get("error-desc") if isinstance(info, dict) else None
        return f": {desc}" if desc else ""

    async def _watch_lost(self, ep: Endpoint) -> None:
        await ep.monitor.lost.wait()
        if self._sm.terminal or (ep.side == "src" and self._src_completed):
            return
        if ep.side == "dst" and self._cancelling:
            self.log.info("destination QEMU exited: expected, its stream was cancelled")
            return
        await self._fail(self._lost_reason(ep))

    def _lost_reason(self, ep: Endpoint) -> str:
        split = self.state in (S.POSTCOPY, S.POSTCOPY_PAUSED)
        if split and ep.side == "src":
            why = (f"the source QEMU died during {self.state}: the pages it had not sent are gone, "
                   "so the VM cannot be recovered; the destination is left paused for inspection")  # fmt: skip
        elif split:
            why = (f"the destination QEMU died during {self.state}, after the switch: the VM's running "
                   "state is lost and the source holds only a stale copy")  # fmt: skip
        else:
            who = "source" if ep.side == "src" else "destination"
            why = f"the {who} QEMU went away (QMP connection lost) during {self.state}"
        return why

    async def _fail(self, why: str) -> None:
        if self._sm.terminal:
            return
        if self._failure is None:
            self._failure = why
            self._failure_phase = str(self.state)
        self.log.warning("failure in %s: %s", self.state, why)
        if self._sm.can(S.FAILED):
            await self._set_state(S.FAILED, why)
            self._publish(MigrationEvent("failed", {"reason": why, "phase": self._failure_phase}))

    # -- policy ------------------------------------------------------------
    def snapshot(self) -> Progress:
        last = self._last
        started = self._timing.migrate_ts or time.time()
        return Progress(
            passes_done=max(self._passes - 1, 0),
            elapsed_s=time.time() - started,
            remaining_bytes=last.remaining if last else None,
            transferred_bytes=last.transferred if last else None,
            dirty_rate_bps=last.dirty_rate_bps if last else None,
            bandwidth_bps=last.mbps * 1e6 / 8 if last else None,
        )

    async def _evaluate(self, trigger: str) -> None:
        if self.state not in (S.SETUP, S.PRECOPY) or self._postcopy_requested:
            return
        snap = self.snapshot()
        decision = self.policy.decide(snap)
        if decision.action is Action.CONTINUE and trigger == "tick":
            return  # ticks only matter when they change something (timeouts)
        self._decisions.append(
            {"trigger": trigger, "passes_done": snap.passes_done, "elapsed_s": round(snap.elapsed_s, 3),
             "action": decision.action.value, "reason": decision.reason}
        )  # fmt: skip
        self.log.info("policy %s at %s: %s", self.policy, trigger, decision)
        if decision.action is Action.SWITCH:
            self._tasks.append(asyncio.create_task(self._policy_switch(decision)))
        elif decision.action is Action.ABORT:
            self._tasks.append(asyncio.create_task(self._policy_abort(decision)))

    async def _policy_switch(self, decision: Decision) -> None:
        with contextlib.suppress(StateError):
            await self.start_postcopy(reason=f"policy {self.policy}: {decision.reason}")

    async def _policy_abort(self, decision: Decision) -> None:
        self._failure = decision.reason
        self._failure_phase = str(self.state)
        with contextlib.suppress(StateError):
            await self.cancel(reason=decision.reason)

    async def _sampler(self) -> None:
        """Progress figures for the policy and the timeline (never phase detection)."""
        while not self._sm.terminal and not self._src_completed:
            with contextlib.suppress(LivemigError):
                info = await self.src.monitor.execute("query-migrate")
                ram = info.get("ram") or {}
                started = self._timing.migrate_ts or time.time()
                self._last = _Sample(
                    t=time.time() - started,
                    status=str(info.get("status")),
                    remaining=int(ram.get("remaining", 0)),
                    transferred=int(ram.get("transferred", 0)),
                    dirty_rate_bps=float(ram.get("dirty-pages-rate", 0)) * int(ram.get("page-size", PAGE)),
                    mbps=float(ram.get("mbps", 0.0)),
                )
                self._timeline.append(self._last)
                self._watchdog(self._last)
                await self._evaluate("tick")
            await asyncio.sleep(self.options.tick_s)

    # -- reliability ---------------------------------------------------------
    def _watchdog(self, sample: _Sample) -> None:
        """No bytes moved for ``stall_timeout_s``: the link is gone (a stalled TCP
        stream does not fail by itself for minutes)."""
        prev = self._timeline[-2].transferred if len(self._timeline) > 1 else None
        now = time.time()
        if prev is None or sample.transferred != prev or self._progress_at is None:
            self._progress_at = now
            self._watchdog_fired = False
            return
        stalled = now - self._progress_at
        if self._watchdog_fired or stalled < self.options.stall_timeout_s:
            return
        self._watchdog_fired = True
        if self.state in (S.SETUP, S.PRECOPY):
            reason = f"no migration progress for {stalled:.1f}s in {self.state} (is the link down?)"
            self._tasks.append(asyncio.create_task(self._abort_precopy(reason), name="abort-precopy"))
        elif self.state is S.POSTCOPY:
            reason = f"no migration progress for {stalled:.1f}s in post-copy (is the link down?)"
            self._tasks.append(asyncio.create_task(self._pause(reason), name="pause"))

    async def _abort_precopy(self, reason: str) -> None:
        """Cancel a pre-copy that cannot go on; the source keeps the whole VM."""
        info = await self.src.monitor.execute("query-migrate")
        if str(info.get("status")).startswith("postcopy"):
            return  # switched meanwhile: never cancel after the switch
        self.log.warning("%s: cancelling, the VM stays on the source", reason)
        self._failure, self._failure_phase = reason, str(self.state)
        self._cancel_is_failure = True
        self._cancel_sent = True
        await self.src.monitor.execute("migrate_cancel")

    async def _pause(self, reason: str) -> None:
        """Pause post-copy on both sides (out of band: it must get through a busy monitor)."""
        self.log.warning("%s: pausing both sides to recover", reason)
        self._recovery = self._recovery or {"pauses": 0, "attempts": 0, "recovered": 0}
        self._recovery["pauses"] += 1
        self._recovery["last_reason"] = reason
        for ep in (self.src, self.dst):
            await self._pause_side(ep)

    async def _pause_side(self, ep: Endpoint) -> None:
        """migrate-pause ``ep`` once, and only while it is postcopy-active. QEMU 10.0.2's
        destination segfaults (in its OOB monitor thread) on migrate-pause once a failed
        resume has left it recovering."""
        if self._side_status.get(ep.side) == "postcopy-active" and ep.side not in self._pause_asked:
            self._pause_asked.add(ep.side)
            with contextlib.suppress(QMPCommandError):
                await ep.monitor.execute("migrate-pause", oob=True)

    async def _wait_status(self, side: Side, ok: set[str], bad: set[str], timeout: float) -> str | None:
        """Wait for ``side``'s next pushed MIGRATION status in ``ok`` or ``bad``."""
        seq = self._status_seq
        want = ok | bad

        def reached() -> bool:
            st = self._side_status.get(side)
            return st in ok or (self._status_seq > seq and st in want) or self._sm.terminal

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(reached)
        return self._side_status.get(side)

    async def _recover(self, deadline_s: float | None = None) -> bool:
        """Retry recovery with backoff until the deadline; True once post-copy runs again."""
        backoff = Backoff(deadline_s if deadline_s is not None else self.options.recover_deadline_s)
        self._recovery = self._recovery or {"pauses": 1, "attempts": 0, "recovered": 0}
        started = time.time()
        self._publish(MigrationEvent("postcopy-paused", {"side": "livemig", "recovering": True}))
        for wait in backoff.waits():
            if time.time() + wait - started > backoff.deadline_s or self._sm.terminal:
                break
            await asyncio.sleep(wait)
            for ep in (self.src, self.dst):
                if ep.monitor.lost.is_set():  # a QEMU died while paused: nothing to recover
                    await self._fail(self._lost_reason(ep))
                    return False
            self._recovery["attempts"] += 1
            try:
                if await self._recover_once():
                    took = time.time() - started
                    self._recovery["recovered"] += 1
                    self._recovery["last_recovery_ms"] = round(took * 1000, 1)
                    self._publish(MigrationEvent(
                        "postcopy-recovered",
                        {"attempts": self._recovery["attempts"], "paused_ms": round(took * 1000, 1)},
                    ))  # fmt: skip
                    await self._set_state(S.POSTCOPY, "recovered")
                    self._progress_at, self._watchdog_fired = time.time(), False
                    self._pause_asked.clear()
                    return True
            except LivemigError as exc:
                self.log.info("recovery attempt %d: %s", self._recovery["attempts"], exc)
        self.log.warning("recovery deadline (%gs) passed: both QEMUs stay paused", backoff.deadline_s)
        return False

    async def _recover_once(self) -> bool:
        ok, paused = {"postcopy-active", "completed"}, {"postcopy-paused"}
        if self._side_status.get("src") in ok:
            return True  # an earlier attempt's connection went through after all
        if self._side_status.get("src") in RESUMING:
            # A resume is still connecting (a cut link: SYNs are retried for minutes). QEMU
            # cannot pause that, so wait for it to connect or to fail.
            st = await self._wait_status("src", ok, paused | {"failed"}, self.options.recover_attempt_s)
            if st in ok:
                return True
            if st not in paused:
                return False
        for ep in (self.src, self.dst):
            await self._pause_side(ep)
            if self._side_status.get(ep.side) not in paused:
                await self._wait_status(ep.side, paused, set(), 5.0)
        if self._side_status.get("src") not in paused:
            return False
        # Only out-of-band commands reach a paused destination for sure: its main loop may be
        # blocked on a page fault until the pages flow again (an in-band query-migrate hung
        # there). So livemig picks the recovery port itself rather than asking for it.
        port = self._recover_port or _free_port_hint()
        uri = f"tcp:{self.options.address}:{port}"
        try:
            await asyncio.wait_for(
                self.dst.monitor.execute("migrate-recover", {"uri": uri}, oob=True),
                self.options.recover_attempt_s,
            )
            self._recover_port = port
        except QMPCommandError as exc:
            if self._recover_port is None:  # the port is taken: another one next attempt
                raise MigrationFailed(f"migrate-recover on {uri}: {exc.desc}", self.state) from exc
            # a listener from an earlier attempt is still up: resume into it
            self.log.info("migrate-recover: %s; reusing the destination's listener on %s", exc.desc, uri)
        except TimeoutError:
            raise MigrationFailed("migrate-recover got no answer", self.state) from None
        self.log.info("recovery: resuming over %s", uri)
        await self.src.monitor.execute("migrate", {"uri": uri, "resume": True})
        st = await self._wait_status("src", ok, paused | {"failed"}, self.options.recover_attempt_s)
        return st in ok

    # -- commands ----------------------------------------------------------
    @require(S.SETUP, S.PRECOPY, S.POSTCOPY, why="post-copy can start only while pre-copy runs")
    async def start_postcopy(self, reason: str = "requested by caller") -> None:
        """Switch to post-copy and return once QEMU confirms (``postcopy-active``),
        or once pre-copy completed first (then nothing switched: see the report)."""
        if not self.policy.allows_postcopy:
            raise StateError(
                "start-postcopy", self.state, (S.SETUP, S.PRECOPY),
                f"policy {self.policy} did not enable postcopy-ram for this migration",
            )  # fmt: skip
        if self.state is not S.POSTCOPY and not self._postcopy_requested:
            await self._migrate_issued.wait()
            self._postcopy_requested = True
            self._timing.postcopy_requested_at_pass = max(self._passes - 1, 0)
            self._timing.switch_reason = reason
            self._publish(MigrationEvent("postcopy-requested", {"reason": reason, "pass": self._passes}))
            await self.src.monitor.execute("migrate-start-postcopy")
        async with self._changed:
            await self._changed.wait_for(
                lambda: (self.state is not S.SETUP and self.state is not S.PRECOPY) or self._src_completed
            )
        if self.state in (S.FAILED, S.CANCELLED):
            raise MigrationFailed(f"migration {self.state} before post-copy started", self.state)

    @require(S.SETUP, S.PRECOPY, why="after the switch the VM runs on the destination and "
             "cancelling would lose it (QEMU's migrate_cancel in post-copy); let it complete or recover")  # fmt: skip
    async def cancel(self, reason: str = "cancelled by caller") -> None:
        """Cancel during pre-copy; the VM keeps running on the source."""
        if self._failure is None and reason != "cancelled by caller":
            self._failure = reason
        self.log.info("cancel: %s", reason)
        await self._migrate_issued.wait()
        info = await self.src.monitor.execute("query-migrate")
        if str(info.get("status")).startswith("postcopy"):
            raise StateError("cancel", S.POSTCOPY, (S.SETUP, S.PRECOPY), "post-copy started first")
        self._cancel_sent = True
        await self.src.monitor.execute("migrate_cancel")
        async with self._changed:
            await self._changed.wait_for(lambda: self._sm.terminal or self.state is S.POSTCOPY)
        if self.state is S.POSTCOPY:
            raise StateError("cancel", self.state, (S.SETUP, S.PRECOPY), "post-copy started first")

    # -- the run -----------------------------------------------------------
    @require(S.IDLE, why="a Migration runs once")
    async def run(self) -> MigrationReport:
        """Negotiate both sides, start the migration, and drive it to its end."""
        return await self._drive(self._start)

    @require(S.IDLE, why="a Migration runs once")
    async def attach(self) -> MigrationReport:
        """Take over a migration that QEMU carried on without its manager (livemig was
        killed): learn where each QEMU is, then drive it to its end from there."""
        return await self._drive(self._adopt)

    async def _start(self) -> None:
        await self._set_state(S.SETUP, "run() called")
        await self._negotiate()
        self._timing.migrate_ts = time.time()
        await self.src.monitor.execute("migrate", {"uri": self.uri})

    async def _adopt(self) -> None:
        for ep in (self.src, self.dst):
            self._listen(ep)
        caps = await self.src.monitor.execute("query-migrate-capabilities")
        self.caps = {c["capability"]: True for c in caps if c["state"]}
        self.preempt = self.caps.get("postcopy-preempt", False)
        src_info = await self.src.monitor.execute("query-migrate")
        dst_info = await self.dst.monitor.execute("query-migrate")
        src_st, dst_st = str(src_info.get("status")), str(dst_info.get("status"))
        self._side_status.update(src=src_st, dst=dst_st)
        ram = src_info.get("ram") or {}
        self._passes = int(ram.get("dirty-sync-count", 0))
        total = src_info.get("total-time")
        self._timing.migrate_ts = time.time() - (float(total) / 1000 if total else 0.0)
        target = ATTACH_STATE.get(src_st)
        if target is None:
            raise MigrationFailed(f"cannot take over: the source QEMU's migration is {src_st!r}", self.state)
        self._publish(MigrationEvent("attached", {"source": src_st, "destination": dst_st}))
        for step in path(self.state, target):
            await self._set_state(step, f"attached: source {src_st}, destination {dst_st}")
        if target in (S.POSTCOPY, S.POSTCOPY_PAUSED):
            self._postcopy_requested = True
            self._timing.switch_reason = "switched before livemig reattached"
        status = await self.dst.monitor.execute("query-status")
        self._dst_resumed = bool(status.get("running")) or self._dst_resumed
        self._src_completed = src_st == "completed"

    async def _drive(self, begin: Callable[[], Any]) -> MigrationReport:
        try:
            await begin()
            self._migrate_issued.set()
            if not self._sm.terminal:
                self._tasks.append(asyncio.create_task(self._sampler(), name="sampler"))
                await self._evaluate("start")
                await self._wait_end()
        except LivemigError as exc:
            self._migrate_issued.set()
            if not self._sm.terminal:
                self._failure = self._failure or str(exc)
                self._failure_phase = self._failure_phase or str(self.state)
                if self._sm.can(S.FAILED):
                    await self._set_state(S.FAILED, str(exc))
                    self._publish(
                        MigrationEvent("failed", {"reason": str(exc), "phase": self._failure_phase})
                    )
            if isinstance(exc, (UnsupportedError, UnsafeCombination)) or self.state is S.IDLE:
                await self._stop_tasks()
                raise
        report = await self._report()
        await self._stop_tasks()
        return report

    async def _wait_end(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self._sm.terminal or self._src_completed or self.state is S.POSTCOPY_PAUSED
                )
            if self.state is S.POSTCOPY_PAUSED and not self._src_completed:
                if self.options.recover and await self._recover():
                    continue
                return  # both QEMUs stay paused; `livemig recover NAME` tries again
            break
        if self._src_completed and not self._sm.terminal:
            await self._confirm_destination()

    async def _confirm_destination(self) -> None:
        """Success means the destination runs, not just that the source says completed."""
        deadline = self.options.confirm_timeout_s
        try:
            async with asyncio.timeout(deadline):
                async with self._changed:
                    await self._changed.wait_for(lambda: self._dst_resumed or self._sm.terminal)
        except TimeoutError:
            await self._fail(f"source completed but the destination did not resume within {deadline:g}s")
            return
        if self._sm.terminal:
            return
        status = await self.dst.monitor.execute("query-status")
        if not status.get("running"):
            await self._fail(f"source completed but the destination is {status.get('status')}")
            return
        self._dst_running_confirmed = True
        ev = next(
            (translate("src", m) for s, m in self._raw if s == "src"
             and m.get("event") == "MIGRATION" and (m.get("data") or {}).get("status") == "completed"),
            None,
        )  # fmt: skip
        # Delivered when QEMU's event arrived; confirmed (destination running) a little later.
        confirmed = time.time()
        self._publish(
            MigrationEvent(
                "completed",
                {"destination": "running", "confirmed_ts": confirmed},
                ev.qemu_ts if ev else None,
                self._src_completed_delivered or confirmed,
            )
        )
        await self._set_state(S.COMPLETED, "destination confirmed running")

    async def _stop_tasks(self) -> None:
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        for t in self._tasks:
            if t is not me:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        for mon, lst in self._listeners:
            mon.remove_listener(lst)
        self._listeners.clear()

    async def _report(self) -> MigrationReport:
        t = self._timing
        r = MigrationReport(
            vm=self.name,
            status=str(self.state),
            policy=str(self.policy),
            qemu_version=self.qemu_version,
            accel=self.src.instance.accel,
            preempt=self.preempt,
            channels=[
                c + ("+tls" if self.options.tls_dirs else "")
                for c in ["main"] + (["postcopy-preempt"] if self.preempt else [])
            ],
            passes=self._passes,
            events=[e.to_dict() for e in self._events],
            decisions=list(self._decisions),
            timeline=[s.to_dict() for s in self._timeline],
            error=self._failure,
            phase=self._failure_phase,
            parameters=dict(getattr(self, "params", {})),
            recovery=dict(self._recovery) if self._recovery else None,
        )
        if (
            self.state is S.POSTCOPY
            or self.state is S.POSTCOPY_PAUSED
            or (self._postcopy_requested and any(e.name == "postcopy-started" for e in self._events))
        ):
            r.switched_at_pass = t.postcopy_requested_at_pass
            r.switch_reason = t.switch_reason
        elif self._postcopy_requested:
            r.switch_reason = (
                f"requested at pass {t.postcopy_requested_at_pass}, "
                "but pre-copy converged first: nothing switched"
            )
        if t.stop_qemu_ts is not None and t.resume_qemu_ts is not None:
            r.blackout_ms = round((t.resume_qemu_ts - t.stop_qemu_ts) * 1000.0, 3)
        if not self.src.monitor.lost.is_set():
            with contextlib.suppress(LivemigError):
                info = await self.src.monitor.execute("query-migrate")
                ram = info.get("ram") or {}
                r.downtime_ms = info.get("downtime")
                r.total_time_ms = info.get("total-time")
                r.setup_time_ms = info.get("setup-time")
                r.bytes_transferred = ram.get("transferred")
                r.precopy_bytes = ram.get("precopy-bytes")
                r.postcopy_bytes = ram.get("postcopy-bytes")
                r.postcopy_requests = ram.get("postcopy-requests")
        if self.caps.get("postcopy-blocktime") and not self.dst.monitor.lost.is_set():
            with contextlib.suppress(LivemigError):
                info = await self.dst.monitor.execute("query-migrate")
                bt = info.get("postcopy-blocktime")
                r.postcopy_blocktime_ms = float(bt) if bt is not None else None
        return r

    # -- helpers for drivers ----------------------------------------------
    async def wait_state(self, *states: MigrationState, timeout: float | None = None) -> MigrationState:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.state in states or self._sm.terminal)
        return self.state

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def src_completed(self) -> bool:
        return self._src_completed
