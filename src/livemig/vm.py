"""VM lifecycle: start a VM from a spec (QEMU detached, recorded), stop it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from livemig.aio import run_sync
from livemig.errors import LivemigError, VMExists
from livemig.guest import find_image
from livemig.lab import Lab
from livemig.qemu.accel import resolve_accel
from livemig.qemu.binary import find_qemu
from livemig.qemu.instance import QemuInstance, spawn_owned
from livemig.qemu.monitor import Monitor
from livemig.registry import Registry, VMRecord
from livemig.spec import VMSpec

__all__ = ["astart_vm", "astop_vm", "fill_image", "start_vm", "stop_vm"]

log = logging.getLogger(__name__)


def fill_image(spec: VMSpec) -> VMSpec:
    """Default kernel/initrd to the built guest image (unless the VM boots from firmware)."""
    if spec.firmware is not None or (spec.kernel is not None and spec.initrd is not None):
        return spec
    img = find_image()
    return spec.with_changes(kernel=spec.kernel or img.kernel, initrd=spec.initrd or img.initrd)


def start_vm(
    spec: VMSpec, registry: Registry | None = None, host: str | None = None, wait: bool = True
) -> VMRecord:
    """Blocking :func:`astart_vm` (refused inside a running event loop)."""
    return run_sync(astart_vm(spec, registry, host, wait))


def stop_vm(name: str, registry: Registry | None = None) -> VMRecord:
    """Blocking :func:`astop_vm` (refused inside a running event loop)."""
    return run_sync(astop_vm(name, registry))


async def astart_vm(
    spec: VMSpec, registry: Registry | None = None, host: str | None = None, wait: bool = True
) -> VMRecord:
    """Validate ``spec``, start its QEMU in the background and record it; with
    ``wait``, return once the guest has booted (a QEMU that fails is ended)."""
    reg = registry or Registry()
    spec = fill_image(spec.validated(boot=False)).validated()  # bad input first, then the image
    qemu = find_qemu()
    accel = await asyncio.to_thread(resolve_accel, spec.accel, qemu, spec)
    with reg.lock(spec.name):
        if reg.exists(spec.name):
            old = reg.load(spec.name)
            if old.instance.alive():
                raise VMExists(
                    spec.name, f"a VM named {spec.name!r} is already running (pid {old.instance.pid})"
                )
            old.instance.remove_files()
        netns = Lab.load(reg.root).host(host).netns if host is not None else None
        inst = await spawn_owned(QemuInstance.spawn, qemu, spec, accel, reg.root, False, netns)
        try:  # until it is recorded, nobody else can end it (^C, SIGTERM may strike here)
            rec = VMRecord(spec.name, spec, inst, host=host)
            reg.create(rec)
        except BaseException:
            inst.kill()
            raise
    if wait and spec.heartbeat:  # only livemig's guest image says when it is ready
        try:
            await asyncio.to_thread(inst.wait_guest_ready)
        except BaseException:
            await astop_vm(spec.name, reg)
            raise
    log.getChild(spec.name).info("started %r", inst)
    return rec


async def _quit(path: Path, name: str) -> None:
    mon = Monitor(name, "ctl", path)
    try:
        await mon.connect(timeout=2.0)
        await mon.execute("quit")
    finally:
        await mon.close()


async def astop_vm(name: str, registry: Registry | None = None) -> VMRecord:
    """Quit the VM's QEMU (QMP quit, then its PID) and forget it."""
    reg = registry or Registry()
    with reg.lock(name):
        rec = reg.load(name)
        inst = rec.instance
        if inst.alive():
            try:
                await asyncio.wait_for(_quit(inst.paths.qmp_aux, name), 5)
            except (LivemigError, TimeoutError) as exc:
                log.debug("QMP quit of %s failed (%s); ending pid %d", name, exc, inst.pid)
            if not await asyncio.to_thread(inst.wait_exit, 5.0):
                inst.kill()
        inst.remove_files()
        if rec.migration is not None and rec.migration.dst is not None:
            rec.migration.dst.kill()
        reg.remove(name)
    return rec
