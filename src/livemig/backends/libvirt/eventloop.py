"""libvirt's event loop: libvirtaio on one asyncio loop in its own thread, once per process.

libvirt accepts one event-loop implementation per process, for the process's life, so
it cannot belong to a caller's loop (``asyncio.run`` may be called many times). The
loop lives in a daemon thread; libvirt's callbacks run there, and each backend forwards
them to its own loop with ``call_soon_threadsafe``.

libvirtaio expects every libvirt call to come from its loop's thread: when a call from
another thread arms a timer (libvirt does so to dispatch a received event), the loop is
not woken and the event waits for the loop's next wake-up (measured: a source's events
up to 1.5 s late while ``migrateToURI3`` blocked in a worker thread). livemig makes its
calls from worker threads, so :class:`_ThreadSafeImpl` wakes the loop after every change
made from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import libvirt
import libvirtaio

__all__ = ["ensure_event_loop"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_running: dict[str, asyncio.AbstractEventLoop] = {}  # "loop": the one loop, once started


class _ThreadSafeImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    """libvirtaio's implementation, woken after a change from a thread other than its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        super().__init__(loop=loop)
        self._thread = thread

    def _wake(self) -> None:
        if threading.get_ident() != self._thread:
            self.loop.call_soon_threadsafe(_noop)

    def _add_handle(self, *args: Any) -> int:
        iden: int = super()._add_handle(*args)
        self._wake()
        return iden

    def _update_handle(self, *args: Any) -> None:
        super()._update_handle(*args)
        self._wake()

    def _remove_handle(self, *args: Any) -> int:
        rc: int = super()._remove_handle(*args)
        self._wake()
        return rc

    def _add_timeout(self, *args: Any) -> int:
        iden: int = super()._add_timeout(*args)
        self._wake()
        return iden

    def _update_timeout(self, *args: Any) -> None:
        super()._update_timeout(*args)
        self._wake()

    def _remove_timeout(self, *args: Any) -> int:
        rc: int = super()._remove_timeout(*args)
        self._wake()
        return rc


def _noop() -> None:
    pass


def _run(ready: threading.Event) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _ThreadSafeImpl(loop, threading.get_ident()).register()
    _running["loop"] = loop
    ready.set()
    loop.run_forever()


def _quiet(_ctx: Any, err: Any) -> None:
    """libvirt prints every error to stderr by default; livemig raises them instead."""
    log.debug("libvirt: %s", err)


def ensure_event_loop() -> asyncio.AbstractEventLoop:
    """Start libvirt's event thread if it is not running; returns its loop."""
    with _lock:
        if "loop" not in _running:
            libvirt.registerErrorHandler(_quiet, None)
            ready = threading.Event()
            threading.Thread(target=_run, args=(ready,), name="libvirt-events", daemon=True).start()
            ready.wait()
        return _running["loop"]
