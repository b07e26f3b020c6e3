"""Orchestrator mode: migrate a pair of QEMUs that another program started.

The source runs; the destination waits with ``-incoming defer``. livemig connects to
both QMP sockets, checks that the pair can migrate (before it changes anything), sets
capabilities and parameters, runs ``migrate-incoming`` and ``migrate``, applies the
policy, publishes events (also to other processes, through the control socket named
after the VM), recovers post-copy after a link failure and reports. It never starts,
stops or kills either QEMU: the caller owns them.

    pair = QemuPair(Path("/run/src.qmp"), Path("/run/dst.qmp"), "tcp:192.0.2.2:4444")
    report = await PairMigration(pair, MigrationOptions()).run()
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from livemig.adopt import peer_pid
from livemig.aio import communicate
from livemig.backends.qemu import Endpoint, QemuBackend
from livemig.control import ControlServer, request
from livemig.core.bus import EventBus
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LivemigError, MigrationError, QemuDied, UsageError
from livemig.handle import MigrationHandle
from livemig.observe.heartbeat import HeartbeatReader, guest_view
from livemig.qemu.monitor import Monitor
from livemig.registry import Registry
from livemig.spec import is_vm_name

__all__ = ["PairMigration", "QemuPair", "QemuView", "inspect"]

log = logging.getLogger(__name__)

BIND_CHECK_S = 10.0  # the destination's bind check (nsenter + a Python that binds) answers within this
STALL_GRACE_S = 0.3  # after completion, wait for the guest's next beats before measuring
_TCP_URI = re.compile(r"^tcp:(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d{1,5})$")
MIGRATING = frozenset({"setup", "active", "device", "pre-switchover", "postcopy-active", "postcopy-paused",
                       "postcopy-recover-setup", "postcopy-recover", "cancelling", "wait-unplug"})  # fmt: skip


@dataclass(frozen=True)
class QemuPair:
    """Where to reach the two QEMUs, and where the destination should listen."""

    src_qmp: Path
    dst_qmp: Path
    uri: str
    name: str | None = None  # default: the source's -name
    src_heartbeat: Path | None = None  # a heartbeat chardev's UNIX socket, if the guest has one
    dst_heartbeat: Path | None = None

    def __post_init__(self) -> None:
        m = _TCP_URI.match(self.uri)
        if m is None or not 1 <= int(m.group(2)) <= 65535:
            raise UsageError(f"--uri {self.uri!r}: expected tcp:HOST:PORT with a port from 1 to 65535")
        if (self.src_heartbeat is None) != (self.dst_heartbeat is None):
            raise UsageError("give both --src-heartbeat and --dst-heartbeat, or neither")
        if self.src_qmp == self.dst_qmp:
            raise UsageError("--src-qmp and --dst-qmp are the same socket")
        for flag, path in (("--src-qmp", self.src_qmp), ("--dst-qmp", self.dst_qmp)):
            if not path.exists():
                raise UsageError(f"{flag} {path}: no such socket")
            if not path.is_socket():
                raise UsageError(f"{flag} {path}: not a UNIX socket")


@dataclass(frozen=True)
class QemuView:
    """What one QEMU says of itself over QMP."""

    version: tuple[int, int, int]
    machine: str
    accel: str
    name: str
    runstate: str
    migration: str


async def inspect(mon: Monitor) -> QemuView:
    """Ask a connected monitor who it is (read-only commands only)."""
    ver = (await mon.execute("query-version"))["qemu"]
    machine = await mon.execute("qom-get", {"path": "/machine", "property": "type"})
    kvm = await mon.execute("query-kvm")
    name = (await mon.execute("query-name")).get("name") or ""
    status = await mon.execute("query-status")
    mig = await mon.execute("query-migrate")
    return QemuView(
        (int(ver["major"]), int(ver["minor"]), int(ver["micro"])),
        str(machine).removesuffix("-machine"),
        "kvm" if kvm.get("enabled") else "tcg",
        str(name),
        str(status.get("status")),
        str(mig.get("status", "none")),
    )


_BIND = (
    "import socket, sys\n"
    "host, port = sys.argv[1].strip('[]'), int(sys.argv[2])\n"
    "s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "try:\n    s.bind((host, port))\nexcept OSError as e:\n    sys.exit(e.strerror or str(e))\n"
)


def _pid_of(qmp: Path) -> int | None:
    """The QEMU behind ``qmp``, or None (then a stuck resume is waited for, not withdrawn)."""
    try:
        return peer_pid(qmp)
    except OSError as exc:
        log.info("the PID behind %s is unknown: %s", qmp, exc)
        return None


async def probe_bind(qmp: Path, uri: str) -> None:
    """Refuse, before anything changes, a URI that the destination cannot bind: a QEMU
    whose migrate-incoming failed cannot try again. The bind is tried in the destination
    QEMU's own network namespace (its PID from the QMP socket's peer credentials)."""
    _, host, port = uri.rsplit(":", 2) if uri.count(":") >= 2 else ("", "", "0")
    pid = peer_pid(qmp)
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", _BIND, host, port]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        log.info("nsenter not found: the destination's bind is not checked in advance")
        return
    try:
        _, err = await communicate(proc, BIND_CHECK_S)
    except TimeoutError:
        log.info("the destination's bind check did not answer in %gs: not checked in advance", BIND_CHECK_S)
        return
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or ["cannot bind"]
        raise UsageError(f"the destination cannot listen on {uri}: {why[0]}")


def check_pair(src: QemuView, dst: QemuView) -> None:
    """Refuse, before anything changes, a pair that cannot migrate (pure)."""
    if dst.runstate != "inmigrate":
        raise UsageError(
            f"the destination QEMU is not waiting for an incoming migration (its run state is "
            f"{dst.runstate!r}); start it with -incoming defer"
        )
    if dst.migration not in ("none", "setup"):  # setup: also after a migrate-incoming that failed
        raise UsageError(
            f"the destination QEMU's incoming migration is already {dst.migration!r}; "
            "start it with -incoming defer and let livemig set it up"
        )
    if src.runstate == "inmigrate":
        raise UsageError("the source QEMU is itself waiting for an incoming migration")
    if src.migration in MIGRATING:
        raise UsageError(f"the source QEMU is already migrating (status {src.migration!r})")
    if src.version != dst.version:
        v = ".".join
        raise UsageError(
            f"QEMU versions differ: source {v(map(str, src.version))}, destination {v(map(str, dst.version))}"
        )
    if src.machine != dst.machine:
        raise UsageError(f"machine types differ: source {src.machine}, destination {dst.machine}")
    if src.accel != dst.accel:
        raise UsageError(f"accelerators differ: source {src.accel}, destination {dst.accel}")


class PairMigration(MigrationHandle):
    """One migration of a :class:`QemuPair`. Async API: ``await run()``, and concurrently
    ``start_postcopy()``, ``cancel()``, ``events()``; other processes reach it through the
    control socket of its name (``livemig postcopy NAME``)."""

    def __init__(
        self,
        pair: QemuPair,
        options: MigrationOptions | None = None,
        registry: Registry | None = None,
        control: bool = True,
    ) -> None:
        self.pair = pair
        self.options = options or MigrationOptions()
        self.registry = registry or Registry()
        self.control = control
        self.name = pair.name or "?"
        self.migration: Migration | None = None
        self.report: MigrationReport | None = None
        self.bus = EventBus(log)  # the migration's events, subscribable before it starts
        self.log = log

    def __repr__(self) -> str:
        state = self.migration.state if self.migration else "not started"
        return f"<PairMigration {self.name} {state} {self.pair.src_qmp} -> {self.pair.dst_qmp}>"

    async def _connect(self, path: Path, side: str) -> Monitor:
        flag = f"--{side}-qmp"
        mon = Monitor(self.pair.name or side, side, path, self.log.getChild(side))
        try:
            await mon.connect(timeout=3.0)
        except QemuDied as exc:
            raise UsageError(
                f"{flag} {path}: no QMP greeting (not a QMP socket, or another client holds it: "
                "a QMP socket serves one client at a time)"
            ) from exc
        return mon

    def _name(self, src: QemuView) -> str:
        name = self.pair.name or src.name
        if not name:
            raise UsageError("the source QEMU has no -name: give --name")
        if not is_vm_name(name):
            raise UsageError(f"--name {name!r}: letters, digits, '-', '_' and '.' only")
        if self.registry.exists(name):
            raise UsageError(
                f"{name} is a VM livemig manages: `livemig migrate {name}` moves it, or give --name"
            )
        ctl = self.registry.control_socket(name)
        if ctl.exists():
            try:
                request(ctl, name, "status", timeout=2.0)
            except LivemigError:
                ctl.unlink(missing_ok=True)  # left by a livemig that died
            else:
                raise MigrationError(f"{name} is already migrating (another livemig owns {ctl})")
        return name

    async def run(self, attach: bool = False) -> MigrationReport:
        """Check the pair, migrate it, and report. Neither QEMU is started or killed.
        ``attach``: take over the pair's migration that a livemig which died left."""
        src_mon = await self._connect(self.pair.src_qmp, "src")
        dst_mon: Monitor | None = None
        readers: list[HeartbeatReader] = []
        server: ControlServer | None = None
        try:
            dst_mon = await self._connect(self.pair.dst_qmp, "dst")
            src, dst = await asyncio.gather(inspect(src_mon), inspect(dst_mon))
            if not attach:
                check_pair(src, dst)
                await probe_bind(self.pair.dst_qmp, self.pair.uri)
            self.name = self._name(src)
            self.log = log.getChild(self.name)
            if self.pair.src_heartbeat is not None and self.pair.dst_heartbeat is not None:
                readers = [HeartbeatReader(self.pair.src_heartbeat, "src", self.log),
                           HeartbeatReader(self.pair.dst_heartbeat, "dst", self.log)]  # fmt: skip
            for r in readers:
                try:
                    await r.start(timeout=2.0)
                except OSError as exc:
                    raise UsageError(f"heartbeat socket {r.path}: {exc}") from exc
            backend = QemuBackend(
                self.name, Endpoint("src", src_mon, src.version, src.accel, _pid_of(self.pair.src_qmp)),
                Endpoint("dst", dst_mon, dst.version, dst.accel), uri=self.pair.uri,
            )  # fmt: skip
            host = self.pair.uri.split(":")[1].strip("[]")
            hosts = {"src": f"QMP {self.pair.src_qmp}", "dst": f"QMP {self.pair.dst_qmp}"}
            mig = Migration(backend, replace(self.options, address=host, port=0), self.bus, hosts)
            self.migration = mig
            if self.control:
                server = ControlServer(
                    self.registry.control_socket(self.name), self.name, lambda: self.migration
                )
                await server.start()
            t0 = time.time()
            report = await (mig.attach() if attach else mig.run())
            if report.status == "completed" and readers:
                await asyncio.sleep(STALL_GRACE_S)
            self._finish(report, readers, t0)
        finally:
            if server is not None:
                await server.stop()
            for r in readers:
                await r.stop()
            await src_mon.close()
            if dst_mon is not None:
                await dst_mon.close()
        self.report = report
        return report

    def _finish(self, report: MigrationReport, readers: list[HeartbeatReader], t0: float) -> None:
        report.guest = guest_view(readers, t0, report.last_event_ts)
        if not readers:
            report.guest["note"] = "unknown: no --src-heartbeat/--dst-heartbeat given"
        rate = self.options.max_bandwidth
        report.set_bound(rate)
        src, dst = self.pair.src_qmp, self.pair.dst_qmp
        report.hosts = {"source": f"QMP {src}", "destination": f"QMP {dst}"}
        if report.status == "completed":
            report.where = f"destination (QMP {dst}); the source QEMU is stopped and left to its owner"
        elif report.switched_at_pass is None:
            report.where = f"source (QMP {src}); the destination still waits and is left to its owner"
        else:
            report.where = (
                f"split: the destination (QMP {dst}) holds the vCPUs, the source (QMP {src}) the pages "
                f"not yet sent; `livemig migrate --src-qmp {src} --dst-qmp {dst} --uri ... --attach` "
                "takes it over"
            )
