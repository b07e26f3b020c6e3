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
from typing import Any, TypeVar

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
    """An event loop running in its own daemon thread."""

    def __init__(self, name: str = "livemig-portal") -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def __repr__(self) -> str:
        return f"<Portal {self._thread.name} {'running' if self._loop.is_running() else 'stopped'}>"

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._started.set)
        self._loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("this call blocks; it cannot be made from the portal's own event-loop thread")
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("portal is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

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
        if policy is not None:  # else the options' policy (postcopy-after:1 by default)
            pol = parse_policy(policy) if isinstance(policy, str) else policy
            opts = MigrationOptions(**{**opts.__dict__, "policy": pol})
        self._own_portal = portal is None
        self.portal = portal or Portal()
        self._job_ready = threading.Event()
        self._job: MigrationJob | None = None
        self._args = (name, opts, registry, to_host)
        self._callbacks: list[tuple[str | None, Callable[[MigrationEvent], None]]] = []
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
        self._callbacks.append((name, callback))

    def _dispatch(self, ev: MigrationEvent) -> None:
        for name, cb in self._callbacks:
            if name is None or name == ev.name:
                cb(ev)

    async def _make_job(self) -> MigrationJob:
        name, opts, registry, to_host = self._args
        job = MigrationJob(name, opts, registry, to_host)
        job.on_event(self._dispatch)
        return job

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
