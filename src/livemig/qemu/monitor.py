"""A QMP monitor of one QEMU, over the qemu.qmp library.

Maps qemu.qmp's errors onto livemig's (QMPCommandError, QemuDied), keeps
long-lived event listeners registered for the whole connection, and notices a
lost connection (a dead QEMU) without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError
from qemu.qmp.events import ListenerError
from qemu.qmp.protocol import ConnectError, Runstate
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from livemig.aio import teardown
from livemig.errors import QemuDied, QMPCommandError

__all__ = ["Monitor"]


class Monitor:
    def __init__(self, vm: str, side: str, path: Path, logger: logging.Logger | None = None) -> None:
        self.vm = vm
        self.side = side
        self.path = path
        self.log = logger or logging.getLogger(__name__).getChild(f"{vm}.{side}")
        self._client = QMPClient(f"{vm}-{side}")
        self.lost = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Monitor {self.vm}/{self.side} {self.path.name} {self._client.runstate.name.lower()}>"

    @property
    def oob(self) -> bool:
        g = self._client.greeting
        return bool(g and "oob" in g.QMP.capabilities)

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect, retrying while the socket is not there yet; a peer that does not speak
        QMP (no greeting, or a wrong one) is not retried."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                    await self._client.connect(str(self.path))
                break
            except (QMPError, TimeoutError) as exc:
                cause = exc.exc if isinstance(exc, ConnectError) else exc
                not_qmp = isinstance(cause, (GreetingError, NegotiationError, TimeoutError))
                if not_qmp or time.monotonic() > deadline:
                    with contextlib.suppress(QMPError, OSError):
                        await self._client.disconnect()
                    what = "no QMP greeting" if not_qmp else str(exc)
                    raise QemuDied(
                        self.vm, f"{self.vm} ({self.side}): cannot connect to QMP at {self.path}: {what}"
                    ) from exc
                await asyncio.sleep(0.05)
        self._watch = asyncio.create_task(self._watch_runstate(), name=f"qmp-watch-{self.vm}-{self.side}")

    async def _watch_runstate(self) -> None:
        while True:
            state = await self._client.runstate_changed()
            if state in (Runstate.DISCONNECTING, Runstate.IDLE):
                self.log.debug("QMP connection lost (%s)", state.name)
                self.lost.set()
                return

    async def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, oob: bool = False
    ) -> Any:
        if self.lost.is_set():
            raise QemuDied(self.vm, f"{self.vm} ({self.side}): QEMU is gone; cannot {command}")
        try:
            result = await self._client.execute(command, arguments, oob=oob and self.oob)
        except ExecuteError as exc:
            raise QMPCommandError(self.vm, command, exc.error_class, exc.error.error.desc) from exc
        except (ExecInterruptedError, QMPError, EOFError, OSError) as exc:
            self.lost.set()
            raise QemuDied(self.vm, f"{self.vm} ({self.side}): QEMU went away during {command}") from exc
        self.log.debug("%s %s -> %s", command, dict(arguments or {}), result)
        return result

    def listener(self, names: tuple[str, ...] | None = None) -> EventListener:
        """A listener registered for the life of the connection (see NOTES: not a `with`)."""
        lst = EventListener(list(names) if names else None)
        self._client.register_listener(lst)
        return lst

    def remove_listener(self, lst: EventListener) -> None:
        try:
            self._client.remove_listener(lst)
        except ListenerError as exc:  # never registered, or already removed: nothing to undo
            self.log.debug("listener: %s", exc)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await teardown(self._watch, self.log, "QMP watch")
        await teardown(self._client.disconnect(), self.log, "QMP disconnect")
