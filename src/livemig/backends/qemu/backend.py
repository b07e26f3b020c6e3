"""The QEMU backend: a source and a destination QEMU, each behind a QMP monitor.

QMP events (MIGRATION, MIGRATION_PASS, STOP, RESUME) are parsed once (:mod:`.models`)
and pushed to the core; commands are QMP commands. ``migrate-pause`` and
``migrate-recover`` go out of band: a paused destination's main loop may be blocked on
a page fault, so nothing in-band is sent to it while it is paused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from qemu.qmp import EventListener

from livemig.backends.qemu.connects import abort_connects
from livemig.backends.qemu.models import (
    WATCHED,
    parse_capabilities,
    parse_event,
    parse_migration_info,
    parse_run_state,
)
from livemig.backends.qemu.negotiate import negotiate
from livemig.core.backend import AttachView, EventSink, MigrationInfo, Negotiated, Side
from livemig.core.options import MigrationOptions
from livemig.errors import MigrationFailed, QMPCommandError
from livemig.qemu.binary import require_live_precopy
from livemig.qemu.monitor import Monitor

__all__ = ["Endpoint", "QemuBackend"]

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """One side: the monitor livemig holds, and what it knows of that QEMU."""

    side: Side
    monitor: Monitor
    version: tuple[int, int, int]
    accel: str = "tcg"
    pid: int | None = None  # the QEMU's process, when known: lets a stuck resume be withdrawn

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.side} {self.monitor!r} {'.'.join(map(str, self.version))} {self.accel}"
            f" pid={self.pid}>"
        )


def _free_port_hint() -> int:
    """A port for the destination's recovery listener: a random one of the dynamic range
    (on a clash migrate-recover fails and the next attempt draws another)."""
    return secrets.choice(range(49152, 65535))


class QemuBackend:
    """Implements :class:`livemig.core.backend.Backend` for two QEMUs over QMP. ``uri``:
    where the destination listens (default ``tcp:ADDRESS:PORT`` from the options)."""

    hypervisor = "QEMU"

    def __init__(self, name: str, src: Endpoint, dst: Endpoint, uri: str | None = None) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.uri = uri
        self.version = ".".join(map(str, src.version))
        self.accel = src.accel
        self.log = log.getChild(name)
        self._recover_port: int | None = None  # the destination's recovery listener, once up
        self._resume_to: tuple[str, int] | None = None  # where the source's last resume connects
        self._listeners: list[tuple[Monitor, EventListener]] = []
        self._pumps: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<QemuBackend {self.name} {self.src!r} -> {self.dst!r} uri={self.uri}>"

    def _ep(self, side: Side) -> Endpoint:
        return self.src if side == "src" else self.dst

    def lost(self, side: Side) -> asyncio.Event:
        return self._ep(side).monitor.lost

    # -- events ------------------------------------------------------------
    async def open(self, sink: EventSink) -> None:
        for ep in (self.src, self.dst):
            lst = ep.monitor.listener(WATCHED)
            self._listeners.append((ep.monitor, lst))
            self._pumps.append(
                asyncio.create_task(self._pump(ep, lst, sink), name=f"pump-{self.name}-{ep.side}")
            )

    async def _pump(self, ep: Endpoint, lst: EventListener, sink: EventSink) -> None:
        async for msg in lst:
            ev = parse_event(ep.side, msg)
            if ev is None:
                self.log.debug("%s: ignored %s", ep.side, msg)
                continue
            await sink(ev)

    async def close(self) -> None:
        for t in self._pumps:
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps.clear()
        for mon, lst in self._listeners:
            mon.remove_listener(lst)
        self._listeners.clear()

    # -- commands ----------------------------------------------------------
    async def prepare(self, options: MigrationOptions, allows_postcopy: bool) -> Negotiated:
        # Every policy runs some live pre-copy: refuse QEMUs whose dirty bitmap misses TCG writes.
        require_live_precopy(self.src.version, self.accel)
        neg = await negotiate(
            self.src.monitor, self.dst.monitor, options, allows_postcopy, self.src.version, self.uri
        )
        self.uri = neg.uri
        return neg

    async def start(self) -> None:
        await self.src.monitor.execute("migrate", {"uri": self.uri})

    async def switch(self) -> None:
        await self.src.monitor.execute("migrate-start-postcopy")

    async def cancel(self) -> None:
        await self.src.monitor.execute("migrate_cancel")

    async def pause(self, side: Side) -> None:
        await self._ep(side).monitor.execute("migrate-pause", oob=True)

    async def recover(self, timeout: float) -> None:
        """A recovery listener on the destination (out of band), then the source's resume.
        livemig picks the port: an in-band query to a paused destination can hang."""
        if self.uri is None or not self.uri.startswith("tcp:"):
            raise MigrationFailed(f"cannot recover a migration over {self.uri}: only tcp: URIs")
        port = self._recover_port or _free_port_hint()
        base = self.uri.rsplit(":", 1)[0]  # tcp:HOST
        uri = f"{base}:{port}"
        try:
            await asyncio.wait_for(
                self.dst.monitor.execute("migrate-recover", {"uri": uri}, oob=True), timeout
            )
            self._recover_port = port
        except QMPCommandError as exc:
            if self._recover_port is None:  # the port is taken: another one next attempt
                raise MigrationFailed(f"migrate-recover on {uri}: {exc.desc}") from exc
            # a listener from an earlier attempt is still up: resume into it
            self.log.info("migrate-recover: %s; reusing the destination's listener on %s", exc.desc, uri)
        except TimeoutError:
            raise MigrationFailed("migrate-recover got no answer") from None
        self.log.info("recovery: resuming over %s", uri)
        self._resume_to = (base.split(":", 1)[1], port)
        await self.src.monitor.execute("migrate", {"uri": uri, "resume": True})

    async def abort_resume(self) -> bool:
        """Withdraw the source's resume while its connect is unanswered (a dead link): the
        source goes back to postcopy-paused. False when the source's process is unknown."""
        if self.src.pid is None or self._resume_to is None:
            return False
        host, port = self._resume_to
        killed = await abort_connects(self.src.pid, host, port)
        self.log.info("recovery: withdrew the resume to %s:%d (%d unanswered connect(s))", host, port, killed)
        return killed > 0

    async def tune(
        self,
        *,
        downtime_limit_ms: int | None = None,
        max_bandwidth: int | None = None,
        postcopy_bandwidth: int | None = None,
    ) -> None:
        wanted = {"downtime-limit": downtime_limit_ms, "max-bandwidth": max_bandwidth,
                  "max-postcopy-bandwidth": postcopy_bandwidth}  # fmt: skip
        params = {k: v for k, v in wanted.items() if v is not None}
        if params:  # QEMU applies these live
            await self.src.monitor.execute("migrate-set-parameters", params)

    async def progress(self, side: Side = "src") -> MigrationInfo:
        return parse_migration_info(await self._ep(side).monitor.execute("query-migrate"))

    async def destination_running(self) -> tuple[bool, str]:
        return parse_run_state(await self.dst.monitor.execute("query-status"))

    async def attach(self) -> AttachView:
        caps = parse_capabilities(await self.src.monitor.execute("query-migrate-capabilities"))
        src = await self.progress("src")
        dst = await self.progress("dst")
        running, _ = await self.destination_running()
        on = {name: True for name, state in caps.items() if state}
        return AttachView(src.status, dst.status, on, src, running)
