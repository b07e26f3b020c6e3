"""The synchronous, thread-safe facade: one event-loop thread (a portal) and
``run_coroutine_threadsafe``. Any thread may call; the loop's own thread may not
(it would deadlock), and is refused.

    mig = SyncMigration("vm1", policy="manual")
    t = threading.Thread(target=mig.migrate); t.start()
    mig.start_postcopy()          # from this thread, while migrate() blocks there
    t.join(); print(mig.report.to_json())
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from livemig.core.bus import EventBus
from livemig.core.events import MigrationEvent
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import NotMigrating
from livemig.job import MigrationJob
from livemig.policy import Policy, parse_policy
from livemig.registry import Registry

__all__ = ["Portal", "SyncMigration"]

T = TypeVar("T")


class Portal:
    """An event loop in its own daemon thread, started on first use (as anyio's
    BlockingPortal). :meth:`call` cancels the coroutine's task when it times out;
    :meth:`close` cancels every task still running, then stops the loop."""

    def __init__(self, name: str = "livemig-portal") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        else:
            state = "running" if self._loop is not None and self._loop.is_running() else "not started"
        return f"<Portal {self.name} {state}>"

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("portal is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name=self.name, daemon=True)
                self._thread.start()
                started.wait()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("this call blocks; it cannot be made from the portal's own event-loop thread")
        try:
            loop = self._start()
        except RuntimeError:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` in the portal and wait for it; on a timeout its task is cancelled
        (and TimeoutError raised)."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()  # run_coroutine_threadsafe: cancelling the future cancels the task
            raise TimeoutError(f"no result within {timeout:g}s; the call was cancelled") from None

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._start().call_soon_threadsafe(fn)

    async def _cancel_all(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("a portal cannot be closed from its own event-loop thread")
        asyncio.run_coroutine_threadsafe(self._cancel_all(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()

    def __enter__(self) -> Portal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncMigration:
    """A blocking migration of a recorded VM, steerable from any thread."""

    def __init__(
        self,
        name: str,
        policy: str | Policy | None = None,
        options: MigrationOptions | None = None,
        registry: Registry | None = None,
        to_host: str | None = None,
        portal: Portal | None = None,
    ) -> None:
        opts = options or MigrationOptions()
        if policy is not None:  # else the options' policy (auto by default)
            pol = parse_policy(policy) if isinstance(policy, str) else policy
            opts = MigrationOptions(**{**opts.__dict__, "policy": pol})
        self._own_portal = portal is None
        self.portal = portal or Portal()
        self._job_ready = threading.Event()
        self._job: MigrationJob | None = None
        self._args = (name, opts, registry, to_host)
        self.bus = EventBus()  # callbacks registered before migrate() are kept
        self.report: MigrationReport | None = None

    def __repr__(self) -> str:
        return f"<SyncMigration {self._args[0]} {self.state}>"

    @property
    def state(self) -> str:
        job = self._job
        return str(job.migration.state) if job and job.migration else "idle"

    def on(self, name: str | None, callback: Callable[[MigrationEvent], None]) -> None:
        """Call ``callback(event)`` for events named ``name`` (None: all). Callbacks run in
        the portal's thread; they must not block, nor call this object's blocking methods."""
        self.bus.on(callback, None if name is None else [name])

    async def _make_job(self) -> MigrationJob:
        name, opts, registry, to_host = self._args
        return MigrationJob(name, opts, registry, to_host, bus=self.bus)

    def migrate(self) -> MigrationReport:
        """Run the migration; blocks until it ends. Returns (and keeps) the report."""
        try:
            self._job = self.portal.call(self._make_job())
            self._job_ready.set()
            self.report = self.portal.call(self._job.run())
            return self.report
        finally:
            self._job_ready.set()
            if self._own_portal:
                self.portal.close()

    def _job_or_raise(self, timeout: float) -> MigrationJob:
        if not self._job_ready.wait(timeout) or self._job is None:
            raise NotMigrating(f"{self._args[0]} is not migrating: call migrate() first")
        return self._job

    def start_postcopy(self, timeout: float = 60.0) -> None:
        """Switch to post-copy; returns once QEMU confirms. Callable from any thread."""
        job = self._job_or_raise(timeout)
        self.portal.call(job.start_postcopy(), timeout)

    def cancel(self, timeout: float = 60.0) -> None:
        """Cancel during pre-copy (the VM stays on the source). Refused after the switch."""
        job = self._job_or_raise(timeout)
        self.portal.call(job.cancel(), timeout)
