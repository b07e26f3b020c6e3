"""``livemig adopt``: take over a running QEMU that livemig did not start.

Reads its command line (``/proc/PID/cmdline``) and QMP's view of it (name, status,
machine, block devices, chardevs, migration capabilities), derives the destination's
command line (:mod:`livemig.qemu.adopt`), refuses what cannot be recreated, and records
the VM as if livemig had started it. The running VM is never changed: adopt only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any

from livemig.aio import run_sync
from livemig.errors import AdoptRefused, LivemigError, MigrationError, UsageError, VMExists
from livemig.lab import Lab
from livemig.lab.bridge import bridge_of, netns_of_pid
from livemig.paths import ensure_private_dir
from livemig.qemu.adopt import Derived, Refusal, derive_incoming, parse_argv, split_opts
from livemig.qemu.argv import InstancePaths
from livemig.qemu.binary import find_qemu
from livemig.qemu.instance import Launch, QemuInstance, proc_start_ticks
from livemig.qemu.monitor import Monitor
from livemig.registry import AdoptedRecord, Registry, VMRecord
from livemig.spec import VMSpec, is_vm_name
from livemig.storage import check_disks

__all__ = ["adopt_vm", "adopted_launch", "peer_pid"]

log = logging.getLogger(__name__)
OK_STATUS = ("running", "paused")
IDLE_MIGRATION = (None, "none", "completed", "failed", "cancelled")


def peer_pid(path: Path) -> int:
    """The PID of the process serving the UNIX socket ``path`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


def _cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [a.decode() for a in raw.split(b"\0")[:-1]]


async def _qmp_view(name: str, qmp: Path) -> dict[str, Any]:
    mon = Monitor(name, "adopt", qmp)
    await mon.connect(timeout=5.0)
    try:
        view: dict[str, Any] = {}
        for cmd, args in (
            ("query-name", None), ("query-status", None), ("query-migrate", None), ("query-target", None),
            ("query-block", None), ("query-chardev", None), ("query-migrate-capabilities", None),
            ("query-kvm", None), ("query-memory-size-summary", None), ("query-version", None),
            ("qom-get", {"path": "/machine", "property": "type"}),
        ):  # fmt: skip
            view[cmd] = await mon.execute(cmd, args)
        return view
    finally:
        await mon.close()


def _block_files(view: dict[str, Any]) -> list[str]:
    """The image files QMP says the VM has open (top images and their backing chain)."""
    files = []
    for dev in view.get("query-block") or []:
        image = (dev.get("inserted") or {}).get("image")
        while image:
            if image.get("filename"):
                files.append(str(image["filename"]))
            image = image.get("backing-image")
    return files


def _chardev_socket(view: dict[str, Any], cid: str) -> Path | None:
    for c in view.get("query-chardev") or []:
        filename = str(c.get("filename", "")).removeprefix("disconnected:")
        if c.get("label") == cid and filename.startswith("unix:"):
            return Path(filename[5:].split(",")[0])
    return None


def adopt_vm(
    name: str,
    qmp: Path,
    pid: int | None = None,
    heartbeat: str | None = None,
    registry: Registry | None = None,
) -> VMRecord:
    """Blocking :func:`aadopt_vm` (refused inside a running event loop)."""
    return run_sync(aadopt_vm(name, qmp, pid, heartbeat, registry))


async def aadopt_vm(
    name: str,
    qmp: Path,
    pid: int | None = None,
    heartbeat: str | None = None,
    registry: Registry | None = None,
) -> VMRecord:
    """Record the QEMU serving ``qmp`` as VM ``name``; raises :class:`AdoptRefused`
    (naming what and why) and touches nothing when it cannot be migrated safely."""
    reg = registry or Registry()
    if not is_vm_name(name):
        raise UsageError(f"NAME {name!r}: 1-40 characters of letters, digits, '.', '_', '-'")
    qmp = qmp.absolute()
    if not qmp.is_socket():
        raise UsageError(f"--qmp {qmp}: no such UNIX socket")
    try:
        served_by = peer_pid(qmp)
    except OSError as exc:
        raise UsageError(f"--qmp {qmp}: cannot connect: {exc.strerror or exc}") from None
    if pid is not None and pid != served_by:
        raise UsageError(f"--pid {pid}: the QMP socket {qmp} is served by pid {served_by}")
    pid = served_by
    try:
        argv = _cmdline(pid)
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError as exc:
        raise UsageError(f"pid {pid}: cannot read its command line: {exc.strerror}") from None
    if not exe.name.startswith("qemu-system-"):
        raise AdoptRefused(name, "pid", f"pid {pid} runs {exe.name}, not QEMU")
    view = await asyncio.wait_for(_qmp_view(name, qmp), 30)  # read-only
    # The rest reads /proc and netlink (pyroute2 runs its own loop): in a thread.
    return await asyncio.to_thread(_record, reg, name, qmp, pid, argv, heartbeat, view)


def _record(
    reg: Registry,
    name: str,
    qmp: Path,
    pid: int,
    argv: list[str],
    heartbeat: str | None,
    view: dict[str, Any],
) -> VMRecord:
    """Refuse what cannot be recreated, else record the VM (under its lock)."""
    with reg.lock(name):
        if reg.exists(name) and reg.load(name).instance.alive():
            raise VMExists(name, f"a VM named {name!r} is already recorded and running")
        for other in reg.all():
            if other.instance.pid == pid and other.instance.alive():
                raise VMExists(name, f"pid {pid} is already livemig's VM {other.name!r}")
        lab = Lab.current(reg.root)
        host, netns = _placement(name, pid, lab)
        derived, machine_type, taps = _derive(argv, view, netns, heartbeat)
        qemu = find_qemu()
        version = view["query-version"]["qemu"]
        running = (int(version["major"]), int(version["minor"]), int(version["micro"]))
        if running != qemu.version:
            derived.refusals.append(Refusal(
                "qemu", f"it runs QEMU {'.'.join(map(str, running))}, livemig's destination would be "
                f"{qemu.version_str}: the same version on both sides, please",
            ))  # fmt: skip
        _check_storage(pid, derived, view, host, lab)
        if derived.refusals:
            raise AdoptRefused(name, derived.refusals[0].what, "; ".join(map(str, derived.refusals)))
        hb_path = _chardev_socket(view, heartbeat) if heartbeat else None
        inst = _record_instance(reg, name, pid, qmp, hb_path, view, netns)
        memory = int(view["query-memory-size-summary"]["base-memory"]) // (1 << 20)
        smp = split_opts(next(iter(parse_argv(argv).values("-smp")), "1"))
        vcpus = int(smp[0] or smp[1].get("cpus", "1"))
        spec = VMSpec(name, memory_mib=memory, vcpus=vcpus, accel=inst.accel, heartbeat=hb_path is not None)
        rec = VMRecord(name, spec, inst, host=host)
        rec.adopted = AdoptedRecord(
            argv,
            taps,
            str(qmp),
            heartbeat,
            machine_type,
            list(derived.disks),
            {c["capability"]: c["state"] for c in view["query-migrate-capabilities"]},
        )
        reg.save(rec)
    log.getChild(name).info("adopted %r from %s", inst, qmp)
    return rec


def _placement(name: str, pid: int, lab: Lab | None) -> tuple[str | None, str | None]:
    """The lab host whose namespace the QEMU runs in (None: this host's own namespace)."""
    hosts = lab.plan.hosts if lab else ()
    netns = netns_of_pid(pid, [h.netns for h in hosts])
    if netns is not None:
        return next(h.name for h in hosts if h.netns == netns), netns
    with contextlib.suppress(OSError):
        if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
            raise AdoptRefused(
                name, "netns", f"pid {pid} runs in a network namespace that is not a lab host's"
            )
    return None, None


def _derive(
    argv: list[str], view: dict[str, Any], netns: str | None, heartbeat: str | None
) -> tuple[Derived, str, dict[str, str | None]]:
    status = view["query-status"].get("status")
    refusals = []
    if status not in OK_STATUS:
        refusals.append(Refusal("status", f"the VM is {status}; only a running or paused VM can migrate"))
    mig = view["query-migrate"].get("status")
    if mig not in IDLE_MIGRATION:
        refusals.append(Refusal("migration", f"a migration is already {mig}"))
    arch = view["query-target"].get("arch")
    if arch != "x86_64":
        refusals.append(Refusal("target", f"{arch} guests: livemig runs qemu-system-x86_64"))
    if heartbeat and _chardev_socket(view, heartbeat) is None:
        refusals.append(Refusal("--heartbeat", f"no chardev {heartbeat!r} on a UNIX socket"))
    machine_type = str(view["qom-get"]).removesuffix("-machine")
    taps: dict[str, str | None] = {}
    for val in parse_argv(argv).values("-netdev"):
        kind, kv = split_opts(val)
        if kind == "tap" and "ifname" in kv:
            taps[kv["ifname"]] = bridge_of(netns, kv["ifname"])
    derived = derive_incoming(
        argv, InstancePaths(Path("/adopt-check")), "00000000", taps, machine_type, heartbeat
    )
    derived.refusals[:0] = refusals
    return derived, machine_type, taps


def _check_storage(
    pid: int, derived: Derived, view: dict[str, Any], host: str | None, lab: Lab | None
) -> None:
    """Every disk QMP reports must come from the command line (nothing hot-plugged), and
    be the same file for the QEMU as for livemig (not local to its mount namespace)."""
    known = {os.path.realpath(d) for d in derived.disks}
    for f in _block_files(view):
        if f.startswith(("json:", "/dev/fdset")):
            derived.refusals.append(Refusal(f"disk {f[:60]}", "opened through a form livemig cannot map"))
        elif os.path.realpath(f) not in known:
            derived.refusals.append(
                Refusal(f"disk {f}", "not on the command line (hot-plugged?): cannot be derived")
            )
    for f in derived.disks:
        path = Path(f)
        if not path.is_absolute():
            derived.refusals.append(Refusal(f"disk {f}", "a relative path: give QEMU absolute disk paths"))
            continue
        if lab is not None and host is not None and lab.owner_of(path) == host:
            derived.refusals.append(
                Refusal(f"disk {f}", f"on {host}'s local storage: no other host can open it")
            )
            continue
        try:
            check_disks([(f"disk {f}", path, True)], pid, None, None)
        except LivemigError as exc:
            derived.refusals.append(Refusal(f"disk {f}", f"local-only: {exc}"))


def _record_instance(
    reg: Registry, name: str, pid: int, qmp: Path, hb: Path | None, view: dict[str, Any], netns: str | None
) -> QemuInstance:
    """A private directory whose sockets are links to the adopted QEMU's own."""
    iid = secrets.token_hex(4)
    idir = ensure_private_dir(ensure_private_dir(reg.root / "qemu") / f"{name}-{iid}")
    paths = InstancePaths(idir)
    paths.qmp.symlink_to(qmp)
    paths.qmp_aux.symlink_to(qmp)  # one QMP socket: `vm stop` uses it while no migration runs
    if hb is not None:
        paths.heartbeat.symlink_to(hb)
    accel = "kvm" if view["query-kvm"].get("enabled") else "tcg"
    return QemuInstance(name, iid, idir, pid, accel, False, netns, proc_start_ticks(pid))


def adopted_launch(rec: VMRecord) -> Launch:
    """How to start the destination of an adopted VM: derived from its argv again."""
    adopted = rec.adopted
    assert adopted is not None
    qemu = str(find_qemu().path)

    def launch(paths: InstancePaths, iid: str) -> tuple[list[str], list[tuple[str, str]], bool]:
        d = derive_incoming(
            adopted.argv, paths, iid, adopted.taps, adopted.machine_type, adopted.heartbeat_chardev, qemu
        )
        if d.refusals:
            reasons = "; ".join(map(str, d.refusals))
            raise MigrationError(f"{rec.name}: cannot derive the destination's command line: {reasons}")
        return d.argv, d.taps, d.heartbeat

    return launch


def after_migration(rec: VMRecord, dst: QemuInstance) -> None:
    """The destination is the VM now: derive the next migration from its command line."""
    if rec.adopted is None:
        return
    try:
        argv = _cmdline(dst.pid)
    except OSError:
        return
    if argv[-2:] == ["-incoming", "defer"]:
        argv = argv[:-2]
    rec.adopted = dataclasses.replace(rec.adopted, argv=argv, taps=dict(dst.taps))
