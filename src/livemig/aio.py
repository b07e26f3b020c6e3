"""The one way livemig's sync wrappers run its async core: ``asyncio.run`` outside an
event loop; inside one they refuse, naming the coroutine function to await instead. And
:func:`teardown`, the one way a closing step whose failure changes nothing is awaited,
and :func:`reap` for a helper task: neither absorbs a cancellation of its caller.
:func:`communicate` waits for a helper process, and kills and reaps it past a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

__all__ = ["communicate", "reap", "run_sync", "teardown"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    name = getattr(coro, "__qualname__", "the async version")
    coro.close()
    raise RuntimeError(f"a blocking call inside a running event loop: await {name}() instead")


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


async def teardown(step: Awaitable[Any], log: logging.Logger, what: str) -> None:
    """Await a closing step (a task just cancelled, a connection to a peer that may be
    gone): its cancellation is expected, and any failure is logged at debug level and not
    raised, since nothing is left to act on. A cancellation of the caller itself while it
    waits (^C, SIGTERM) is not the step's, and goes on."""
    asked = _cancel_requests()
    try:
        await step
    except asyncio.CancelledError:
        if _cancel_requests() > asked:
            raise
    except Exception as exc:  # noqa: BLE001 - the peer went first: a close has nothing left to do
        log.debug("%s: %s", what, exc)


async def reap(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended. Its cancellation is absorbed, its failure
    is raised, and a cancellation of the caller while it waits goes on."""
    asked = _cancel_requests()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if _cancel_requests() > asked:
            raise


async def communicate(proc: asyncio.subprocess.Process, limit_s: float) -> tuple[bytes, bytes]:
    """``proc.communicate()`` within ``limit_s``; past it the process is killed and reaped
    (nothing is left behind), and TimeoutError raised."""
    try:
        async with asyncio.timeout(limit_s):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return out or b"", err or b""
