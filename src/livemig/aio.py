"""The one way livemig's sync wrappers run its async core: ``asyncio.run`` outside an
event loop; inside one they refuse, naming the coroutine function to await instead. And
:func:`teardown`, the one way a closing step whose failure changes nothing is awaited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

__all__ = ["run_sync", "teardown"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    name = getattr(coro, "__qualname__", "the async version")
    coro.close()
    raise RuntimeError(f"a blocking call inside a running event loop: await {name}() instead")


async def teardown(step: Awaitable[Any], log: logging.Logger, what: str) -> None:
    """Await a closing step (a task just cancelled, a connection to a peer that may be
    gone): its cancellation is expected, and any failure is logged at debug level and not
    raised, since nothing is left to act on."""
    try:
        await step
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # noqa: BLE001 - the peer went first: a close has nothing left to do
        log.debug("%s: %s", what, exc)
