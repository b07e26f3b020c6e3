"""One live migration, driven by a backend's pushed events (backend-neutral).

Phase changes come only from pushed events (a side's status, a pass, the source
stopping, the destination resuming). :meth:`Backend.progress` is used for progress
figures (the policy's snapshot, the timeline, the watchdog) and the final report,
never to detect a phase. The policy decides at each pass and on each progress tick;
post-copy trouble is recovered by pausing both sides and reconnecting them.

Why this module is over 500 lines: it is one class, the state machine's driver, whose
methods share one condition variable and one state; everything that can stand alone
already does (events.py and bus.py, sides.py, policyloop.py, recovery.py, report.py,
state.py); what is left is the sequencing of those against one backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from livemig.core.backend import Backend, BackendEvent, EventKind, MigrationInfo, Negotiated, Side
from livemig.core.bus import EventBus
from livemig.core.events import MigrationEvent, translate
from livemig.core.options import MigrationOptions
from livemig.core.policyloop import PolicyLoop
from livemig.core.recovery import RESUMING, RUNNING_AGAIN, Backoff, Reconnect, RecoveryStats, Watchdog
from livemig.core.report import MigrationReport, Switch, build_report
from livemig.core.sides import WHO, Sides
from livemig.core.state import (
    TERMINAL,
    MigrationState,
    StateMachine,
    path,
    require,
    status_transition,
)
from livemig.errors import (
    LivemigError,
    MigrationFailed,
    RecoveryBlocked,
    StateError,
    UnsafeCombination,
    UnsupportedError,
    UsageError,
)
from livemig.policy import Action, Decision, Progress
from livemig.policy.auto import QEMU_DEFAULT_LIMIT_MS

__all__ = ["ATTACH_STATE", "Migration"]

log = logging.getLogger(__name__)
S = MigrationState
# The source's migration status when livemig reattaches -> the state to resume in.
ATTACH_STATE: dict[str, MigrationState] = {
    "setup": S.SETUP, "active": S.PRECOPY, "device": S.PRECOPY, "pre-switchover": S.PRECOPY,
    "completed": S.PRECOPY, "postcopy-active": S.POSTCOPY, "postcopy-paused": S.POSTCOPY_PAUSED,
    "postcopy-recover-setup": S.POSTCOPY_PAUSED, "postcopy-recover": S.POSTCOPY_PAUSED,
    "failed": S.FAILED, "cancelling": S.CANCELLED, "cancelled": S.CANCELLED,
}  # fmt: skip


@dataclass
class _Timing:
    stop_ts: float | None = None  # the source's STOP, hypervisor time
    resume_ts: float | None = None  # the destination's RESUME, hypervisor time
    switch: Switch = field(default_factory=Switch)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version() -> str | None:
    try:
        return metadata.version("livemig")
    except metadata.PackageNotFoundError:
        return None


class Migration:
    """Migrates through ``backend`` (a source and a destination waiting for it).

    Use :meth:`run` (or :meth:`attach`) from the event loop; :meth:`start_postcopy` and
    :meth:`cancel` may be awaited concurrently (from other tasks, or from other threads
    through :mod:`livemig.sync`). Events: :attr:`bus`.
    """

    def __init__(
        self,
        backend: Backend,
        options: MigrationOptions | None = None,
        bus: EventBus | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.hosts = dict(hosts or {})  # each side's host name, for the events' data
        self.options = options or MigrationOptions()
        self.policy = self.options.policy
        self.name = backend.name
        self.log = log.getChild(self.name)
        self.bus = bus or EventBus(self.log)  # a caller's bus keeps its callbacks from before the run
        self.negotiated: Negotiated | None = None
        self.recovery: RecoveryStats | None = None
        self._sm = StateMachine()
        self._changed = asyncio.Condition()
        self._timing = _Timing()
        self._passes = 0
        self._src_completed: BackendEvent | None = None  # the source's "completed", held back
        self.sides = Sides(self._changed, lambda: self._sm.terminal, self.log)
        self._watchdog = Watchdog(self.options.stall_timeout_s)
        self._cancel_is_failure = False
        self._cancel_sent = False  # then the destination's "failed" (its stream ended) is expected
        self._reconnect = Reconnect(
            backend, self.sides, self.log, self.options.recover_attempt_s, self.options.recover_connect_s
        )
        self._dst_resumed = False
        self._switch_stall_since: float | None = None  # a stall between the switch and the resume
        self._failure: str | None = None
        self._state_callbacks: list[Callable[[MigrationState, str], None]] = []
        self._failure_phase: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tunings: list[dict[str, Any]] = []  # operators' changes while it ran
        self._cost = (0.0, 0.0)  # process CPU time and monotonic time when the drive began
        self.loop = PolicyLoop(self.policy, self.options.downtime_limit_ms or QEMU_DEFAULT_LIMIT_MS)
        self._migrate_issued = asyncio.Event()
        self._postcopy_requested = False
        self._started = False  # postcopy-started was published
        self._switched_before_attach = False  # attach() found the migration in post-copy

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
    def uri(self) -> str | None:
        return self.negotiated.uri if self.negotiated else None

    @property
    def caps(self) -> dict[str, bool]:
        return dict(self.negotiated.caps) if self.negotiated else {}

    @property
    def preempt(self) -> bool:
        return self.negotiated.preempt if self.negotiated else False

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def src_completed(self) -> bool:
        return self._src_completed is not None

    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest progress figures (from the sampler), for displays."""
        if not self.loop.timeline:
            return None
        return {**self.loop.timeline[-1].to_dict(), "passes": self._passes}

    @property
    def events_so_far(self) -> list[MigrationEvent]:
        return list(self.bus.history)

    def on_event(self, callback: Callable[[MigrationEvent], None]) -> None:
        """Call ``callback(event)`` for every later event (in the event loop's thread)."""
        self.bus.on(callback)

    def on_state(self, callback: Callable[[MigrationState, str], None]) -> None:
        """Call ``callback(state, why)`` after every change of state (in the event loop's
        thread): a caller's record of where the migration stands follows it exactly."""
        self._state_callbacks.append(callback)

    def events(self) -> AsyncIterator[MigrationEvent]:
        """Every event from the start (history first), then live ones, until the end."""
        return self.bus.subscribe()

    async def wait_state(self, *states: MigrationState, timeout: float | None = None) -> MigrationState:
        async with asyncio.timeout(timeout):
            await self._wait_for(lambda: self.state in states or self._sm.terminal)
        return self.state

    # -- state -------------------------------------------------------------
    async def _wait_for(self, cond: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(cond)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _set_state(self, new: MigrationState, why: str) -> None:
        if self._sm.to(new, why):
            self.log.info("state %s (%s)", new, why)
            for callback in self._state_callbacks:
                try:
                    callback(new, why)
                except Exception:
                    self.log.exception("a state callback failed")
        if new in TERMINAL:
            self.bus.close()
        await self._notify()

    async def _fail(self, why: str, level: int = logging.WARNING) -> None:
        if self._sm.terminal:
            return
        if self._failure is None:
            self._failure, self._failure_phase = why, str(self.state)
        self.log.log(level, "failure in %s: %s", self.state, why)
        if self._sm.can(S.FAILED):
            self.bus.publish(MigrationEvent("failed", {"reason": why, "phase": self._failure_phase}))
            await self._set_state(S.FAILED, why)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A task of this migration: cancelled at its end; an exception it raises is logged."""
        task = asyncio.create_task(coro, name=f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    # -- events in ---------------------------------------------------------
    async def _on_backend_event(self, ev: BackendEvent) -> None:
        """The backend's sink: one event at a time, in order per side."""
        try:
            await self._handle(ev)
        except Exception as exc:
            self.log.exception("handling %s from %s", ev.kind.value, ev.side)
            await self._fail(f"internal error handling {ev.kind.value} from {ev.side}: {exc!r}")

    async def _handle(self, ev: BackendEvent) -> None:
        self.log.debug("backend %s", ev)
        if ev.kind is EventKind.STOPPED and ev.side == "src":
            self._timing.stop_ts = ev.ts
        elif ev.kind is EventKind.RESUMED and ev.side == "dst":
            self._timing.resume_ts = ev.ts
            self._dst_resumed = True
        elif ev.kind is EventKind.PASS and ev.side == "src" and ev.n is not None:
            self._passes = max(self._passes, ev.n)
        elif ev.kind is EventKind.STATUS and ev.status is not None:
            self.sides.update(ev.side, ev.status)
        published = self._once(translate(ev, hosts=self.hosts))
        if published is not None and not self.bus.closed:
            self.bus.publish(published)
        if ev.kind is EventKind.STATUS and ev.status is not None:
            await self._on_status(ev)
        elif ev.kind is EventKind.PASS and ev.side == "src" and ev.n is not None:
            if not self.policy.adaptive:  # an adaptive policy decides on the pass's figures
                self._evaluate(f"pass {ev.n}")
            if ev.n >= 2 and self.state in (S.SETUP, S.PRECOPY):
                self._spawn(self._record_pass(ev.n), f"pass-{ev.n}")
        await self._notify()

    def _once(self, ev: MigrationEvent | None) -> MigrationEvent | None:
        """The event contract: each phase's start once (``postcopy-started`` is not repeated
        after a recovery), one ``postcopy-paused`` per outage (the first side to report it;
        the other side and the recovery attempts' own pauses are data, not events), and
        ``completed`` only once the destination is confirmed running."""
        if ev is None or ev.name == "completed":
            return None
        if ev.name == "postcopy-started":
            if self._started:
                return None
            self._started = True
        if ev.name == "postcopy-paused":
            if self.state is not S.POSTCOPY:  # this outage was published already
                return None
            stats = self.recovery = self.recovery or RecoveryStats()
            stats.outages += 1
            return replace(ev, data={**ev.data, "outage": stats.outages})
        return ev

    async def _on_status(self, ev: BackendEvent) -> None:
        side, status = ev.side, str(ev.status)
        new = status_transition(side, status, self.state)
        if new is not None:  # by the legal walk: a status may skip one (postcopy-active before active)
            for step in path(self.state, new):
                await self._set_state(step, f"{WHO[side]} reports {status}")
        elif side == "src" and status == "completed":
            self._src_completed = ev
        elif status == "failed" and self._cancelling:
            self.log.info("%s reports failed: expected, its stream was cancelled", side)
            if side == "src":  # the source's "failed" ends the cancel as "cancelled" would
                await self._cancelled()
        elif status == "failed":
            await self._fail(
                f"{WHO[side]} {self.backend.hypervisor} reports failed{await self._error_desc(side)}"
            )
        elif side == "src" and status == "cancelled" and self.state in (S.SETUP, S.PRECOPY):
            await self._cancelled()

    async def _cancelled(self) -> None:
        if self._cancel_is_failure:
            await self._fail(self._failure or "cancelled after a failure")
        elif self.state in (S.SETUP, S.PRECOPY):
            await self._set_state(S.CANCELLED, "source reports cancelled")

    @property
    def _cancelling(self) -> bool:
        """A cancel was sent, and nothing switched. QEMU 10.0 then races the cancel against
        the stream: the destination may report "failed" or exit ("load of migration failed"),
        and the source may end "failed" instead of "cancelled". All of these end the cancel;
        nothing was switched, so the VM keeps running on the source."""
        return self._cancel_sent and self.state not in (S.POSTCOPY, S.POSTCOPY_PAUSED)

    async def _error_desc(self, side: Side) -> str:
        """The hypervisor's own reason for a failed migration, as ': ...'."""
        if self._sm.terminal or self.backend.lost(side).is_set():
            return ""
        # Not wait_for: a command to a hypervisor that is going away may not end when
        # cancelled (a cancel test hung there). Leave it behind after 2 s instead.
        query = asyncio.ensure_future(self.backend.progress(side))
        done, _ = await asyncio.wait({query}, timeout=2.0)
        if not done:
            query.add_done_callback(lambda t: t.cancelled() or t.exception())
            return ""
        try:
            desc = query.result().error_desc
        except LivemigError as exc:
            self.log.info("no error description from the %s: %s", WHO[side], exc)
            return ""
        return f": {desc}" if desc else ""

    async def _watch_lost(self, side: Side) -> None:
        await self.backend.lost(side).wait()
        if self._sm.terminal or (side == "src" and self.src_completed):
            return
        if side == "dst" and self._cancelling:
            self.log.info("destination exited: expected, its stream was cancelled")
            return
        await self._fail(self._lost_reason(side))

    def _lost_reason(self, side: Side) -> str:
        hv = self.backend.hypervisor
        if self.state not in (S.POSTCOPY, S.POSTCOPY_PAUSED):
            return f"the {WHO[side]} {hv} went away (connection lost) during {self.state}"
        if side == "src":
            return (f"the source {hv} died during {self.state}: the pages it had not sent are gone, "
                    "so the VM cannot be recovered; the destination is left paused for inspection")  # fmt: skip
        return (f"the destination {hv} died during {self.state}, after the switch: the VM's running "
                "state is lost and the source holds only a stale copy")  # fmt: skip

    # -- commands ----------------------------------------------------------
    @require(S.SETUP, S.PRECOPY, S.POSTCOPY, why="post-copy can start only while pre-copy runs")
    async def start_postcopy(self, reason: str = "requested by caller") -> None:
        """Switch to post-copy and return once the source confirms (``postcopy-active``),
        or once pre-copy completed first (then nothing switched: see the report)."""
        asked = time.time()
        if not self.policy.allows_postcopy:
            raise StateError(
                "start-postcopy", self.state, (S.SETUP, S.PRECOPY),
                f"policy {self.policy} did not enable post-copy for this migration",
            )  # fmt: skip
        if self.state is not S.POSTCOPY and not self._postcopy_requested:
            await self._migrate_issued.wait()
            self._postcopy_requested = True
            self._timing.switch = Switch(max(self._passes - 1, 0), reason)
            self.bus.publish(
                MigrationEvent(
                    "postcopy-requested", {"reason": reason, "pass": self._passes, "requested_ts": asked}
                )
            )
            await self.backend.switch()
        await self._wait_for(lambda: self.state not in (S.SETUP, S.PRECOPY) or self.src_completed)
        if self.state in (S.FAILED, S.CANCELLED):
            raise MigrationFailed(f"migration {self.state} before post-copy started", self.state)

    @require(S.SETUP, S.PRECOPY, why="after the switch the VM runs on the destination and "
             "cancelling would lose it; let it complete or recover")  # fmt: skip
    async def cancel(self, reason: str = "cancelled by caller") -> None:
        """Cancel during pre-copy; the VM keeps running on the source."""
        self.log.info("cancel: %s", reason)
        await self._migrate_issued.wait()
        if (await self.backend.progress()).postcopy:
            raise StateError("cancel", S.POSTCOPY, (S.SETUP, S.PRECOPY), "post-copy started first")
        self._cancel_sent = True
        await self.backend.cancel()
        await self._wait_for(lambda: self._sm.terminal or self.state is S.POSTCOPY)
        if self.state is S.POSTCOPY:
            raise StateError("cancel", self.state, (S.SETUP, S.PRECOPY), "post-copy started first")

    @require(S.SETUP, S.PRECOPY, S.POSTCOPY, why="there is no running migration to tune")
    async def tune(
        self,
        *,
        max_bandwidth: int | None = None,
        downtime_limit_ms: int | None = None,
        postcopy_bandwidth: int | None = None,
        who: str = "caller",
    ) -> None:
        """Change the bandwidth cap (bytes/s), the downtime limit (ms) or the post-copy
        background cap while the migration runs; the report records each change."""
        if downtime_limit_ms is not None and self.state is S.POSTCOPY:
            raise StateError("set the downtime limit", self.state, (S.SETUP, S.PRECOPY), "pre-copy's limit")
        await self.backend.tune(
            downtime_limit_ms=downtime_limit_ms,
            max_bandwidth=max_bandwidth,
            postcopy_bandwidth=postcopy_bandwidth,
        )
        if downtime_limit_ms is not None:
            self.loop.limit_ms = downtime_limit_ms
        changed = {"max_bandwidth_Bps": max_bandwidth, "downtime_limit_ms": downtime_limit_ms,
                   "postcopy_bandwidth_Bps": postcopy_bandwidth}  # fmt: skip
        self._tunings.append({"t_s": round(self.loop.elapsed_s, 3), "by": who,
                              **{k: v for k, v in changed.items() if v is not None}})  # fmt: skip
        self.log.info("tuned by %s: %s", who, {k: v for k, v in changed.items() if v is not None})

    def jobinfo(self) -> dict[str, Any]:
        """What ``livemig jobinfo`` shows (like ``virsh domjobinfo``): phase, pass, elapsed,
        bytes, rates, and the policy's current decision with its reason."""
        last = self.loop.last
        decision = self.loop.decisions[-1] if self.loop.decisions else None
        started = self.loop.started
        return {
            "vm": self.name, "phase": str(self.state), "policy": str(self.policy), "pass": self._passes,
            "elapsed_s": round(time.time() - started, 3) if started else None,
            "transferred_bytes": last.transferred if last else None,
            "remaining_bytes": last.remaining if last else None,
            "throughput_Bps": round(last.mbps * 1e6 / 8) if last else None,
            "dirty_rate_Bps": round(d) if last and (d := last.measured_dirty_rate_Bps) is not None else None,
            "downtime_limit_ms": self.loop.limit_ms,
            "decision": {"action": decision["action"], "reason": decision["reason"]} if decision else None,
            "tunings": list(self._tunings),
        }  # fmt: skip

    async def _abort_precopy(self, reason: str, failure: bool = True) -> None:
        """End a pre-copy that cannot go on (as a failure, or as the policy's cancel); the
        source keeps the whole VM."""
        if (await self.backend.progress()).postcopy:
            return  # switched meanwhile: never cancel after the switch
        # the policy's own give-up is an outcome the report states, not a warning
        self.log.log(
            logging.WARNING if failure else logging.INFO, "%s: cancelling, the VM stays on the source", reason
        )
        if self._failure is None:
            self._failure, self._failure_phase = reason, str(self.state)
        self._cancel_is_failure = failure
        self._cancel_sent = True
        await self.backend.cancel()

    # -- the run -----------------------------------------------------------
    @require(S.IDLE, why="a Migration runs once")
    async def run(self) -> MigrationReport:
        """Negotiate both sides, start the migration, and drive it to its end."""
        return await self._drive(self._start)

    @require(S.IDLE, why="a Migration runs once")
    async def attach(self, previous: str | None = None) -> MigrationReport:
        """Take over a migration that went on without its manager (livemig was killed):
        learn where each side is, then drive it to its end from there. ``previous`` is
        the state its last manager left it in, if known: a post-copy left paused that is
        found running again recovered meanwhile, and gets its ``postcopy-recovered``."""
        return await self._drive(lambda: self._adopt(previous))

    async def _open(self) -> None:
        await self.backend.open(self._on_backend_event)
        for side in ("src", "dst"):
            self._spawn(self._watch_lost(side), f"lost-{side}")

    async def _start(self) -> None:
        await self._set_state(S.SETUP, "run() called")
        await self._open()
        options = self.options.for_start()
        if options.max_bandwidth != self.options.max_bandwidth:
            self.log.info("pre-copy at %d bytes/s until the switch (%s)", options.max_bandwidth, self.policy)
        self.negotiated = await self.backend.prepare(options, self.policy.allows_postcopy)
        self.loop.started = time.time()
        await self.backend.start()

    async def _adopt(self, previous: str | None) -> None:
        await self._open()
        view = await self.backend.attach()
        self.negotiated = Negotiated("", view.caps)
        self.sides.update("src", view.src_status)
        self.sides.update("dst", view.dst_status)
        self._passes = view.info.dirty_sync_count
        total = view.info.total_time_ms
        self.loop.started = time.time() - (total / 1000 if total else 0.0)
        target = ATTACH_STATE.get(view.src_status)
        if view.src_status == "completed" and previous in (S.POSTCOPY.value, S.POSTCOPY_PAUSED.value):
            target = S.POSTCOPY  # it had switched: it completed in post-copy, not pre-copy
        if target is None:
            raise MigrationFailed(
                f"cannot take over: the source's migration is {view.src_status!r}", self.state
            )
        self.bus.publish(
            MigrationEvent("attached", {"source": view.src_status, "destination": view.dst_status})
        )
        if previous == S.POSTCOPY_PAUSED.value and view.src_status in RUNNING_AGAIN:
            # A resume issued before the last deadline connected once the link came back.
            self.recovery = RecoveryStats(outages=1, recovered=1, recovered_while_detached=True)
            self.bus.publish(
                MigrationEvent("postcopy-recovered", {"outage": 1, "attempts": 0, "detached": True})
            )
        for step in path(self.state, target):
            await self._set_state(step, f"attached: source {view.src_status}, destination {view.dst_status}")
        if target in (S.POSTCOPY, S.POSTCOPY_PAUSED):
            self._postcopy_requested = self._started = self._switched_before_attach = True
            self._timing.switch = Switch(None, "switched before livemig reattached")
        self._dst_resumed = view.dst_running or self._dst_resumed
        if view.src_status == "completed":
            self._src_completed = BackendEvent(EventKind.STATUS, "src", time.time(), None, "completed")

    async def _drive(self, begin: Callable[[], Awaitable[None]]) -> MigrationReport:
        self._cost = (time.process_time(), time.monotonic())
        try:
            await begin()
            self._migrate_issued.set()
            if not self._sm.terminal:
                self._spawn(self._sampler(), "sampler")
                self._evaluate("start")
                await self._wait_end()
        except LivemigError as exc:
            self._migrate_issued.set()
            await self._fail(str(exc), logging.INFO)  # the caller gets it, in the report or raised
            if isinstance(exc, (UnsupportedError, UnsafeCombination, UsageError)):
                await self._stop_tasks()
                raise
        try:
            return await self._report()
        finally:
            await self._stop_tasks()

    async def _wait_end(self) -> None:
        while True:
            await self._wait_for(
                lambda: self._sm.terminal or self.src_completed or self.state is S.POSTCOPY_PAUSED
            )
            if self.state is S.POSTCOPY_PAUSED and not self.src_completed:
                if self.options.recover and await self._recover():
                    continue
                return  # both sides stay paused; `livemig recover NAME` tries again
            break
        if self.src_completed and not self._sm.terminal:
            await self._confirm_destination()

    async def _confirm_destination(self) -> None:
        """Success means the destination runs, not just that the source says completed."""
        deadline = self.options.confirm_timeout_s
        try:
            async with asyncio.timeout(deadline):
                await self._wait_for(lambda: self._dst_resumed or self._sm.terminal)
        except TimeoutError:
            await self._fail(f"source completed but the destination did not resume within {deadline:g}s")
            return
        if self._sm.terminal:
            return
        running, status = await self.backend.destination_running()
        if not running:
            await self._fail(f"source completed but the destination is {status}")
            return
        src = self._src_completed
        assert src is not None
        # Delivered now, when callers get it: the destination was confirmed running.
        self.bus.publish(MigrationEvent(
            "completed", {"destination": "running", "source_arrived_ts": src.arrived}, src.ts, time.time(),
        ))  # fmt: skip
        await self._set_state(S.COMPLETED, "destination confirmed running")

    async def _stop_tasks(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                self.log.error("task ended with %r", result)
        await self.backend.close()

    async def _report(self) -> MigrationReport:
        base = MigrationReport(
            vm=self.name, status=str(self.state), policy=str(self.policy), qemu_version=self.backend.version,
            accel=self.backend.accel, preempt=False, passes=self._passes,
            events=[e.to_dict() for e in self.bus.history], decisions=list(self.loop.decisions), tunings=list(self._tunings),
            timeline=[s.to_dict() for s in self.loop.timeline], error=self._failure, phase=self._failure_phase,
            recovery=self.recovery.to_dict() if self.recovery else None,
        )  # fmt: skip
        t = self._timing
        took = (
            self.state in (S.POSTCOPY, S.POSTCOPY_PAUSED)
            or self._switched_before_attach
            or (self._postcopy_requested and any(e.name == "postcopy-started" for e in self.bus.history))
        )
        switch = Switch(t.switch.requested_at_pass, t.switch.reason, took)
        cpu0, wall0 = self._cost
        cpu, wall = (time.process_time() - cpu0) * 1000, (time.monotonic() - wall0) * 1000
        base.started_at, base.ended_at = _iso(time.time() - wall / 1000), _iso(time.time())
        base.livemig_version, base.options = _version(), self.options.summary()
        base.manager_cpu_ms, base.manager_cpu_share = round(cpu, 1), round(cpu / wall, 4) if wall else None
        src = self._with_spent(await self._final_info("src"))
        blocktime = self.negotiated is not None and self.negotiated.caps.get("postcopy-blocktime")
        dst = await self._final_info("dst") if blocktime else None
        return build_report(base, switch, self.negotiated, (t.stop_ts, t.resume_ts), src, dst)

    def _with_spent(self, src: MigrationInfo | None) -> MigrationInfo | None:
        """A migration that did not complete still cost bytes and time: QEMU keeps no
        figures after a cancel (nor a lost source any), so take the last sample's bytes and
        the time from the start to now."""
        last = self.loop.last
        if self.state is S.COMPLETED or last is None or (src is not None and src.transferred):
            return src
        elapsed = (time.time() - self.loop.started) * 1000 if self.loop.started else None
        base = src or MigrationInfo(str(self.state))
        return replace(base, transferred=last.transferred, remaining=last.remaining,
                       total_time_ms=base.total_time_ms or (round(elapsed, 1) if elapsed else None))  # fmt: skip

    async def _final_info(self, side: Side) -> MigrationInfo | None:
        if self.backend.lost(side).is_set():
            return None
        try:
            return await self.backend.progress(side)
        except LivemigError as exc:
            self.log.info("no final figures from the %s: %s", WHO[side], exc)
            return None

    # -- policy ------------------------------------------------------------
    def snapshot(self) -> Progress:
        return self.loop.snapshot(max(self._passes - 1, 0))

    async def _record_pass(self, n: int) -> None:
        """The source's figures as pass ``n`` begins, then let an adaptive policy decide."""
        try:
            info = await self.backend.progress()
        except LivemigError as exc:
            self.log.info("no figures for pass %d: %s", n, exc)
            return
        self.loop.record_pass(n, info)
        if self.policy.adaptive:
            self._evaluate(f"pass {n} figures")

    def _evaluate(self, trigger: str) -> None:
        if self.state not in (S.SETUP, S.PRECOPY) or self._postcopy_requested:
            return
        before = self.loop.limit_ms
        decision = self.loop.decide(trigger, max(self._passes - 1, 0))
        if decision is None:
            return
        self.log.info("policy %s at %s: %s", self.policy, trigger, decision)
        if self.loop.limit_ms != before:
            self._spawn(self._tune(self.loop.limit_ms), "tune")
        if decision.action is Action.SWITCH:
            self._spawn(self._policy_switch(decision), "policy-switch")
        elif decision.action is Action.ABORT:
            self._spawn(self._abort_precopy(decision.reason, failure=False), "policy-abort")

    async def _tune(self, downtime_limit_ms: int) -> None:
        try:
            await self.backend.tune(downtime_limit_ms=downtime_limit_ms)
        except LivemigError as exc:
            self.log.warning("could not set the downtime limit to %d ms: %s", downtime_limit_ms, exc)

    async def _policy_switch(self, decision: Decision) -> None:
        try:
            await self.start_postcopy(reason=f"policy {self.policy}: {decision.reason}")
        except StateError as exc:
            self.log.info("policy switch not made: %s", exc)  # the migration moved on meanwhile
        except LivemigError as exc:
            # The switch was refused: QEMU stays in pre-copy with the whole VM on the source.
            why = f"the switch to post-copy failed: {exc}"
            self.log.error("%s", why)
            self.bus.publish(
                MigrationEvent("postcopy-requested", {"failed": str(exc), "requested_ts": time.time()})
            )
            await self._abort_precopy(why)

    async def _sampler(self) -> None:
        """Progress figures for the policy, the timeline and the watchdog (never phases)."""
        while not self._sm.terminal and not self.src_completed:
            try:
                info = await self.backend.progress()
            except LivemigError as exc:
                self.log.debug("progress query failed: %s", exc)
            else:
                self.loop.sample(info)
                self._check_stall(info)
                self._evaluate("tick")
            await asyncio.sleep(self.options.tick_s)

    # -- reliability ---------------------------------------------------------
    def _check_stall(self, info: MigrationInfo) -> None:
        stalled = self._watchdog.feed(info.transferred)
        if stalled is None:
            return
        reason = f"no migration progress for {stalled:.1f}s in {self.state} (is the link down?)"
        if self.state in (S.SETUP, S.PRECOPY):
            self._spawn(self._abort_precopy(reason), "abort-precopy")
        elif self.state is S.POSTCOPY and not self._still_switching(stalled):
            self._spawn(self._pause(reason), "pause")

    def _still_switching(self, stalled: float) -> bool:
        """True while a stall after the switch is waited out rather than paused: until the
        destination has resumed it is still loading the devices' state, and a broken load
        cannot be recovered (see ``MigrationOptions.switch_stall_s``)."""
        if self._dst_resumed:
            return False
        now = time.time()
        if self._switch_stall_since is None:
            self._switch_stall_since = now - stalled
            self.log.warning(
                "no migration progress for %.1fs before the destination resumed: waiting up to %gs "
                "(a pause now would break its load of the devices' state)", stalled, self.options.switch_stall_s,
            )  # fmt: skip
        if now - self._switch_stall_since >= self.options.switch_stall_s:
            return False
        self._watchdog.reset(now)  # asked again after another stall timeout
        return True

    async def _pause(self, reason: str) -> None:
        """Pause post-copy on both sides."""
        self.log.warning("%s: pausing both sides to recover", reason)
        self.recovery = self.recovery or RecoveryStats()
        self.recovery.pauses += 1
        self.recovery.last_reason = reason
        for side in ("src", "dst"):
            await self._reconnect.pause_side(side)

    async def _recover(self, deadline_s: float | None = None) -> bool:
        """Retry recovery with backoff until the deadline; True once post-copy runs again."""
        backoff = Backoff(deadline_s if deadline_s is not None else self.options.recover_deadline_s)
        stats = self.recovery = self.recovery or RecoveryStats(outages=1)
        started, attempts_before = time.time(), stats.attempts
        for wait in backoff.waits():
            if time.time() + wait - started > backoff.deadline_s or self._sm.terminal:
                break
            await asyncio.sleep(wait)
            for side in ("src", "dst"):
                if self.backend.lost(side).is_set():
                    await self._fail(self._lost_reason(side))
                    return False
            stats.attempts += 1
            try:
                ok = await self._reconnect.attempt()
            except RecoveryBlocked as exc:
                stats.blocked = str(exc)
                self.log.warning("recovery attempt %d: %s; both sides stay paused", stats.attempts, exc)
                return False
            except LivemigError as exc:
                self.log.info("recovery attempt %d: %s", stats.attempts, exc)
                continue
            if ok:
                took = round((time.time() - started) * 1000, 1)
                stats.recovered += 1
                stats.last_recovery_ms = took
                self.bus.publish(MigrationEvent(
                    "postcopy-recovered",
                    {"outage": stats.outages, "attempts": stats.attempts - attempts_before, "paused_ms": took},
                ))  # fmt: skip
                await self._set_state(S.POSTCOPY, "recovered")
                self._watchdog.reset()
                self._reconnect.asked.clear()
                return True
        if self.sides.get("src") in RESUMING and not await self._reconnect.withdraw():
            stats.left_connecting = True
            self.log.warning(
                "recovery deadline (%gs) passed with the source's resume still connecting: "
                "QEMU completes it by itself if the link returns", backoff.deadline_s,
            )  # fmt: skip
        else:
            self.log.warning("recovery deadline (%gs) passed: both sides stay paused", backoff.deadline_s)
        return False
