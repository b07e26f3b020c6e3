"""The backend-neutral core against a backend double: every policy's walk, recovery,
cancel and a refused switch, with no QMP in sight. The double answers commands as a
hypervisor would (a switch brings postcopy-active, STOP and RESUME; a pause brings
postcopy-paused) and the test pushes the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from livemig.core import (
    Backend,
    BackendEvent,
    EventKind,
    Migration,
    MigrationInfo,
    MigrationOptions,
    Negotiated,
)
from livemig.core.backend import AttachView, EventSink, Side
from livemig.core.report import MigrationReport
from livemig.core.state import MigrationState
from livemig.errors import MigrationFailed, QMPCommandError, RecoveryBlocked, StateError
from livemig.policy import parse_policy

S = MigrationState


@dataclass
class DoubleBackend:
    name: str = "vm"
    hypervisor: str = "double"
    version: str = "1.0"
    accel: str = "none"
    commands: list[str] = field(default_factory=list)
    frozen: bool = False  # progress stops (a dead link)
    dst_hung: bool = False  # the destination does not resume at the switch (a hung QEMU)
    refuse_switch: bool = False
    refuse_recover: int = 0  # recover attempts that fail first
    blocked: str | None = None  # recover raises RecoveryBlocked with this after those
    connecting: bool = False  # a resume only connects (a cut link: SYNs retried for minutes)
    abortable: bool = False  # abort_resume() takes such a resume back
    refuse_abort: int = 0  # abort_resume() calls that fail first
    view: AttachView | None = None  # what attach() finds
    silent_start: bool = False  # start pushes no events (the test pushes them)
    forgets: bool = False  # once cancelled, report no figures (as QEMU does)
    src_status: str = "none"
    transferred: int = 0
    sink: EventSink | None = None
    _lost: dict[str, asyncio.Event] = field(default_factory=dict)

    def lost(self, side: Side) -> asyncio.Event:
        return self._lost.setdefault(side, asyncio.Event())

    async def push(
        self, kind: EventKind, side: Side, status: str | None = None, n: int | None = None
    ) -> None:
        if kind is EventKind.STATUS and side == "src" and status is not None:
            self.src_status = status
        assert self.sink is not None
        await self.sink(BackendEvent(kind, side, time.time(), time.time() - 0.001, status, n))

    async def open(self, sink: EventSink) -> None:
        self.commands.append("open")
        self.sink = sink

    async def prepare(self, options: Any, allows_postcopy: bool) -> Negotiated:
        self.commands.append(f"prepare postcopy={allows_postcopy} bw={options.max_bandwidth}")
        return Negotiated("double:1", {"postcopy-ram": allows_postcopy})

    async def start(self) -> None:
        self.commands.append("start")
        if self.silent_start:
            return
        await self.push(EventKind.STATUS, "src", "setup")
        await self.push(EventKind.STATUS, "src", "active")
        await self.push(EventKind.PASS, "src", n=1)

    async def switch(self) -> None:
        self.commands.append("switch")
        if self.refuse_switch:
            raise QMPCommandError("vm", "switch", "GenericError", "refused")
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._switched()))

    async def _switched(self) -> None:
        await self.push(EventKind.STATUS, "src", "postcopy-active")
        await self.push(EventKind.STOPPED, "src")
        if self.dst_hung:
            return
        await self.push(EventKind.STATUS, "dst", "postcopy-active")
        await self.push(EventKind.RESUMED, "dst")

    async def cancel(self) -> None:
        self.commands.append("cancel")
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.push(EventKind.STATUS, "src", "cancelled"))
        )

    async def pause(self, side: Side) -> None:
        self.commands.append(f"pause {side}")
        await self.push(EventKind.STATUS, side, "postcopy-paused")

    async def recover(self, timeout: float) -> None:
        self.commands.append("recover")
        if self.refuse_recover:
            self.refuse_recover -= 1
            raise MigrationFailed("no listener yet")
        if self.blocked is not None:
            raise RecoveryBlocked(self.blocked)
        if self.connecting:
            await self.push(EventKind.STATUS, "src", "postcopy-recover-setup")
            return
        self.frozen = False
        await self.push(EventKind.STATUS, "dst", "postcopy-active")
        await self.push(EventKind.STATUS, "src", "postcopy-active")

    async def abort_resume(self) -> bool:
        self.commands.append("abort-resume")
        if not self.abortable or self.refuse_abort:
            self.refuse_abort = max(self.refuse_abort - 1, 0)
            return False
        await self.push(EventKind.STATUS, "src", "postcopy-paused")
        return True

    async def tune(
        self,
        *,
        downtime_limit_ms: int | None = None,
        max_bandwidth: int | None = None,
        postcopy_bandwidth: int | None = None,
    ) -> None:
        self.commands.append(f"tune downtime={downtime_limit_ms} bw={max_bandwidth} pc={postcopy_bandwidth}")

    async def progress(self, side: Side = "src") -> MigrationInfo:
        if self.forgets and self.src_status == "cancelled":
            return MigrationInfo(self.src_status)
        if not self.frozen:
            self.transferred += 1 << 20
        return MigrationInfo(
            self.src_status, transferred=self.transferred, remaining=1 << 20, total_time_ms=5.0
        )

    async def destination_running(self) -> tuple[bool, str]:
        return True, "running"

    async def attach(self) -> AttachView:
        assert self.view is not None
        self.src_status = self.view.src_status
        return self.view

    async def close(self) -> None:
        self.commands.append("close")

    async def complete(self) -> None:
        await self.push(EventKind.STATUS, "src", "completed")
        await self.push(EventKind.STATUS, "dst", "completed")


def fast(policy: str, **kw: Any) -> MigrationOptions:
    return MigrationOptions(policy=parse_policy(policy), tick_s=0.02, stall_timeout_s=0.2, **kw)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def begin(policy: str, **kw: Any) -> tuple[DoubleBackend, Migration, asyncio.Task[MigrationReport]]:
    be = DoubleBackend()
    backend: Backend = be  # the double satisfies the protocol
    mig = Migration(backend, fast(policy, **kw))
    task = asyncio.create_task(mig.run())
    await until(lambda: "start" in be.commands)
    await until(lambda: mig.state in (S.PRECOPY, S.POSTCOPY))
    return be, mig, task


@pytest.mark.parametrize(
    ("policy", "passes_before_end", "switched_at"),
    [("precopy", 3, None), ("postcopy-now", 0, 0), ("postcopy-after:1", 1, 1), ("postcopy-after:3", 3, 3)],
)
def test_every_policy_walks_to_completion(
    policy: str, passes_before_end: int, switched_at: int | None
) -> None:
    async def main() -> None:
        be, mig, task = await begin(policy)
        for n in range(2, passes_before_end + 2):
            if mig.state is S.POSTCOPY:
                break
            await be.push(EventKind.PASS, "src", n=n)
        if switched_at is not None:
            await until(lambda: mig.state is S.POSTCOPY)
        else:
            await be.push(EventKind.STOPPED, "src")
            await be.push(EventKind.RESUMED, "dst")
        await be.complete()
        report = await asyncio.wait_for(task, 3)
        assert report.status == "completed"
        assert report.switched_at_pass == switched_at
        assert ("switch" in be.commands) is (switched_at is not None)
        if switched_at is not None:  # when livemig was asked, before it published the request
            req = next(e for e in report.events if e["name"] == "postcopy-requested")
            assert 0 < req["data"]["requested_ts"] <= req["delivered_ts"]
        assert be.commands[0] == "open" and be.commands[-1] == "close"
        names = [e["name"] for e in report.events]
        assert names[0] == "setup" and names[-1] == "completed"
        assert report.blackout_ms is not None and report.blackout_ms >= 0
        assert mig.bus.closed

    asyncio.run(main())


@pytest.mark.parametrize(
    ("policy", "asked", "sent"),
    [("postcopy-now", None, 1 << 20), ("postcopy-now", 50 << 20, 50 << 20),
     ("postcopy-after:1", None, None), ("precopy", None, None), ("manual", None, None)],
)  # fmt: skip
def test_only_a_switch_at_once_caps_precopy_before_it(
    policy: str, asked: int | None, sent: int | None
) -> None:
    """postcopy-now's pre-copy bytes would only queue ahead of the switch: the backend is
    asked for 1 MiB/s unless a bandwidth was given; the report keeps what was given."""

    async def main() -> None:
        be, mig, task = await begin(policy, max_bandwidth=asked)
        assert f"prepare postcopy={policy != 'precopy'} bw={sent}" in be.commands
        if policy == "postcopy-now":
            await until(lambda: mig.state is S.POSTCOPY)
            await be.complete()
        else:
            await mig.cancel()
        report = await asyncio.wait_for(task, 3)
        assert report.options["max_bandwidth_Bps"] == asked

    asyncio.run(main())


def test_manual_switches_only_when_asked() -> None:
    async def main() -> None:
        be, mig, task = await begin("manual")
        for n in (2, 3, 4):
            await be.push(EventKind.PASS, "src", n=n)
        await asyncio.sleep(0.1)
        assert "switch" not in be.commands
        await mig.start_postcopy("a test asked")
        assert mig.state is S.POSTCOPY
        await be.complete()
        report = await asyncio.wait_for(task, 3)
        assert report.switched_at_pass == 3 and report.switch_reason == "a test asked"

    asyncio.run(main())


def test_a_stalled_postcopy_is_paused_recovered_with_backoff_and_completes() -> None:
    async def main() -> None:
        be, mig, task = await begin("postcopy-now", recover_deadline_s=10.0)
        await until(lambda: mig.state is S.POSTCOPY)
        be.refuse_recover = 1
        be.frozen = True  # the link died
        await until(lambda: be.commands.count("recover") == 2 and mig.state is S.POSTCOPY, 6)
        assert be.commands.count("pause src") == 1 and be.commands.count("pause dst") == 1
        await be.complete()
        report = await asyncio.wait_for(task, 3)
        assert report.status == "completed"
        assert report.recovery is not None
        assert report.recovery["pauses"] == 1 and report.recovery["attempts"] == 2
        assert report.recovery["recovered"] == 1
        names = [e["name"] for e in report.events]
        assert names.index("postcopy-paused") < names.index("postcopy-recovered") < names.index("completed")

    asyncio.run(main())


def test_cancel_in_precopy_keeps_the_vm_on_the_source_and_is_refused_after_the_switch() -> None:
    async def main() -> None:
        _be, mig, task = await begin("manual")
        await mig.cancel()
        report = await asyncio.wait_for(task, 3)
        assert report.status == "cancelled" and report.error is None

        be2, mig2, task2 = await begin("postcopy-now")
        await until(lambda: mig2.state is S.POSTCOPY)
        with pytest.raises(StateError):
            await mig2.cancel()
        await be2.complete()
        assert (await asyncio.wait_for(task2, 3)).status == "completed"

    asyncio.run(main())


def test_a_cancelled_run_still_reports_the_bytes_and_time_it_spent() -> None:
    async def main() -> MigrationReport:
        be = DoubleBackend(forgets=True)
        mig = Migration(be, fast("manual"))
        task = asyncio.create_task(mig.run())
        await until(lambda: len(mig.loop.timeline) >= 3)
        await mig.cancel()
        return await asyncio.wait_for(task, 3)

    report = asyncio.run(main())
    assert report.status == "cancelled"
    sent = report.timeline[-1]["transferred"]
    assert sent > 0 and report.bytes_transferred == sent  # the hypervisor forgot; the samples did not
    assert report.total_time_ms is not None and report.total_time_ms > 0


def test_a_refused_switch_is_logged_published_and_ends_the_migration_on_the_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> MigrationReport:
        be = DoubleBackend(refuse_switch=True)
        mig = Migration(be, fast("postcopy-after:1"))
        task = asyncio.create_task(mig.run())
        await until(lambda: mig.state is S.PRECOPY)
        await be.push(EventKind.PASS, "src", n=2)
        return await asyncio.wait_for(task, 3)

    with caplog.at_level(logging.ERROR):
        report = asyncio.run(main())
    assert report.status == "failed"
    assert report.error is not None and "the switch to post-copy failed" in report.error
    assert any("switch to post-copy failed" in r.getMessage() for r in caplog.records)
    failed = [e for e in report.events if e["name"] == "postcopy-requested" and "failed" in e["data"]]
    assert failed and "refused" in failed[0]["data"]["failed"]


def test_precopy_timeout_cancels_with_its_reason() -> None:
    async def main() -> MigrationReport:
        be = DoubleBackend()
        mig = Migration(be, fast("precopy:timeout=1"))
        return await asyncio.wait_for(mig.run(), 5)

    report = asyncio.run(main())
    assert report.status == "cancelled"
    assert report.error is not None and "has not converged" in report.error


def test_a_lost_destination_after_the_switch_fails_with_the_reason() -> None:
    async def main() -> MigrationReport:
        be, mig, task = await begin("postcopy-now")
        await until(lambda: mig.state is S.POSTCOPY)
        be.lost("dst").set()
        return await asyncio.wait_for(task, 3)

    report = asyncio.run(main())
    assert report.status == "failed"
    assert report.error is not None and "destination double died" in report.error


def test_one_paused_and_one_recovered_event_per_outage_and_one_start() -> None:
    async def main() -> MigrationReport:
        be, mig, task = await begin("postcopy-now", recover_deadline_s=10.0)
        await until(lambda: mig.state is S.POSTCOPY)
        for outage in (1, 2):
            be.frozen = True  # the link died; the watchdog pauses both sides, both report paused
            await until(lambda o=outage: be.commands.count("recover") == o and mig.state is S.POSTCOPY, 6)  # type: ignore[misc]
        await be.complete()
        return await asyncio.wait_for(task, 3)

    report = asyncio.run(main())
    names = [e["name"] for e in report.events]
    assert names.count("postcopy-started") == 1, names
    assert names.count("postcopy-paused") == 2 and names.count("postcopy-recovered") == 2, names
    paused = [e["data"] for e in report.events if e["name"] == "postcopy-paused"]
    recovered = [e["data"] for e in report.events if e["name"] == "postcopy-recovered"]
    assert [p["outage"] for p in paused] == [1, 2] and [r["outage"] for r in recovered] == [1, 2]
    assert all(r["attempts"] == 1 for r in recovered)
    assert report.recovery == {"outages": 2, "pauses": 2, "attempts": 2, "recovered": 2,
                               "last_reason": report.recovery["last_reason"],
                               "last_recovery_ms": report.recovery["last_recovery_ms"]}  # fmt: skip


def test_a_status_that_skips_one_walks_the_legal_path() -> None:
    """postcopy-active before active (found by the hostile-QEMU property test): the state
    walks setup -> precopy -> postcopy instead of failing on an illegal transition."""

    async def main() -> MigrationReport:
        be = DoubleBackend(silent_start=True)
        mig = Migration(be, fast("manual"))
        task = asyncio.create_task(mig.run())
        await until(lambda: "start" in be.commands)
        assert mig.state is S.SETUP
        await be.push(EventKind.STATUS, "src", "postcopy-active")
        assert mig.state is S.POSTCOPY
        await be.push(EventKind.RESUMED, "dst")
        await be.complete()
        return await asyncio.wait_for(task, 3)

    report = asyncio.run(main())
    assert report.status == "completed" and report.error is None


def test_a_bound_of_a_few_bytes_is_no_ratio() -> None:
    """A run cancelled right after its start sent a few bytes: its bound rounds to 0 ms."""
    r = MigrationReport(
        "vm", "cancelled", "manual", "10.0.2", "tcg", False, total_time_ms=900.0, bytes_transferred=4
    )
    r.set_bound(100_000_000)
    assert r.physical_bound_ms == 0.0 and r.time_vs_bound is None


@pytest.mark.parametrize("comes_back", [True, False], ids=["dst-resumes", "dst-never-resumes"])
def test_a_stall_before_the_destination_resumed_is_waited_out_not_paused(comes_back: bool) -> None:
    """A destination that hangs at the switch (SIGSTOP) is still loading the devices'
    state: a pause would break that load, and QEMU cannot recover it. livemig waits up to
    switch_stall_s; if the destination resumes, nothing was paused; if not, it pauses."""

    async def main() -> tuple[MigrationReport, DoubleBackend, float]:
        be = DoubleBackend(dst_hung=True, frozen=True)
        mig = Migration(be, fast("postcopy-now", switch_stall_s=1.5, recover=False))
        task = asyncio.create_task(mig.run())
        await until(lambda: mig.state is S.POSTCOPY)
        t0 = time.monotonic()
        await asyncio.sleep(1.0)  # five stall timeouts of 0.2 s
        assert not [c for c in be.commands if c.startswith("pause")], be.commands
        if comes_back:
            be.frozen = False
            await be.push(EventKind.STATUS, "dst", "postcopy-active")
            await be.push(EventKind.RESUMED, "dst")
            await asyncio.sleep(0.3)
            await be.complete()
        else:
            await until(lambda: any(c.startswith("pause") for c in be.commands), 5)
        waited = time.monotonic() - t0
        if not comes_back:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return MigrationReport("vm", "paused", "postcopy-now", "", "tcg", False), be, waited
        return await asyncio.wait_for(task, 5), be, waited

    report, be, waited = asyncio.run(main())
    paused = [c for c in be.commands if c.startswith("pause")]
    if comes_back:
        assert report.status == "completed" and not paused
    else:
        assert paused and waited >= 1.5 - 0.3  # the pause came only once the wait was over


def test_a_blocked_recovery_stops_retrying_before_the_deadline_and_says_why() -> None:
    """A backend that finds no attempt can succeed (libvirt: the destination's QEMU
    answers no command) ends the retries at once: both sides stay paused, and the
    report's recovery says why, long before the deadline."""

    async def main() -> tuple[MigrationReport, DoubleBackend, float]:
        be, mig, task = await begin("postcopy-now", recover_deadline_s=30.0, recover_attempt_s=0.2)
        await until(lambda: mig.state is S.POSTCOPY)
        be.frozen, be.refuse_recover, be.blocked = True, 2, "its monitor is stuck"
        t0 = time.monotonic()
        report = await asyncio.wait_for(task, 10)
        return report, be, time.monotonic() - t0

    report, be, took = asyncio.run(main())
    assert report.status == "postcopy-paused" and be.src_status == "postcopy-paused"
    assert report.recovery is not None and report.recovery["blocked"] == "its monitor is stuck"
    assert report.recovery["attempts"] == be.commands.count("recover") == 3
    assert report.recovery["recovered"] == 0 and took < 10


def test_a_deadline_that_leaves_a_resume_connecting_says_so() -> None:
    async def main() -> MigrationReport:
        be, mig, task = await begin("postcopy-now", recover_deadline_s=1.0, recover_attempt_s=0.3)
        await until(lambda: mig.state is S.POSTCOPY)
        be.frozen = be.connecting = True
        return await asyncio.wait_for(task, 6)

    report = asyncio.run(main())
    assert report.status == "postcopy-paused"
    assert report.recovery is not None and report.recovery.get("left_connecting") is True


@pytest.mark.parametrize(
    ("previous", "src", "detached"),
    [("postcopy-paused", "postcopy-active", True), ("postcopy-paused", "completed", True),
     ("postcopy-paused", "postcopy-paused", False),
     (None, "postcopy-active", False), ("postcopy", "postcopy-active", False)],
)  # fmt: skip
def test_attach_tells_a_recovery_made_while_detached(previous: str | None, src: str, detached: bool) -> None:
    async def main() -> MigrationReport:
        be = DoubleBackend(view=AttachView(src, src, {"postcopy-ram": True}, MigrationInfo(src), True))
        mig = Migration(be, fast("postcopy-now", recover_deadline_s=5.0))
        task = asyncio.create_task(mig.attach(previous))
        await until(lambda: mig.state in (S.POSTCOPY, S.COMPLETED))
        if src != "completed":
            await be.complete()
        return await asyncio.wait_for(task, 6)

    report = asyncio.run(main())
    recovered = [e["data"] for e in report.events if e["name"] == "postcopy-recovered"]
    assert report.status == "completed"
    assert "postcopy-requested" not in [e["name"] for e in report.events], "it had switched already"
    assert [r.get("detached") for r in recovered] == ([True] if detached else [None] * len(recovered))
    assert bool(report.recovery and report.recovery.get("recovered_while_detached")) is detached


def test_an_unanswered_resume_is_withdrawn_and_retried_until_the_link_returns() -> None:
    async def main() -> tuple[MigrationReport, DoubleBackend]:
        be, mig, task = await begin("postcopy-now", recover_deadline_s=30.0, recover_connect_s=0.2)
        await until(lambda: mig.state is S.POSTCOPY)
        be.frozen = be.connecting = be.abortable = True  # a dead link: connects are never answered
        await until(lambda: be.commands.count("abort-resume") >= 2, 10)
        be.connecting = False  # the link is back: the next resume connects
        await until(lambda: mig.state is S.POSTCOPY and be.commands.count("recover") >= 3, 10)
        await be.complete()
        return await asyncio.wait_for(task, 3), be

    report, be = asyncio.run(main())
    assert report.status == "completed"
    assert report.recovery is not None and report.recovery["recovered"] == 1
    assert report.recovery["attempts"] == be.commands.count("recover") >= 3
    assert "left_connecting" not in report.recovery


def test_a_deadline_withdraws_a_resume_still_connecting_so_both_stay_paused() -> None:
    async def main() -> tuple[MigrationReport, DoubleBackend]:
        be, mig, task = await begin(
            "postcopy-now", recover_deadline_s=1.0, recover_attempt_s=1.0, recover_connect_s=0.5
        )
        await until(lambda: mig.state is S.POSTCOPY)
        # the attempt's own withdrawal fails; the one at the deadline takes
        be.frozen = be.connecting = be.abortable = True
        be.refuse_abort = 1
        return await asyncio.wait_for(task, 10), be

    report, be = asyncio.run(main())
    assert report.status == "postcopy-paused" and be.src_status == "postcopy-paused"
    assert report.recovery is not None and "left_connecting" not in report.recovery
    assert be.commands.count("recover") == 1 and be.commands.count("abort-resume") == 2
