"""The one way livemig's sync wrappers run its async core: ``asyncio.run`` outside an
event loop; inside one they refuse, naming the coroutine function to await instead."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    name = getattr(coro, "__qualname__", "the async version")
    coro.close()
    raise RuntimeError(f"a blocking call inside a running event loop: await {name}() instead")
