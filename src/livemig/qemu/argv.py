"""QEMU's argv, built from a validated VMSpec (pure: no I/O).

The destination's argv is the source's plus ``-incoming defer``; nothing else
differs but the instance's own sockets and files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from livemig.spec import VMSpec

__all__ = ["InstancePaths", "build_argv", "tap_name"]


def tap_name(instance_id: str, index: int) -> str:
    """The tap of NIC ``index`` of one QEMU instance (unique per host: 15 chars max)."""
    return f"lmt{instance_id[:8]}n{index}"


@dataclass(frozen=True)
class InstancePaths:
    """Files of one QEMU instance, all inside its private directory."""

    dir: Path

    @property
    def qmp(self) -> Path:
        """The manager's monitor."""
        return self.dir / "qmp.sock"

    @property
    def qmp_aux(self) -> Path:
        """A second monitor, for `livemig events`, other tools and reattaching."""
        return self.dir / "qmp-aux.sock"

    @property
    def heartbeat(self) -> Path:
        return self.dir / "hb.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    def manager_args(self) -> list[str]:
        """livemig's two QMP monitors and the pidfile (ids that a foreign argv will not use)."""
        return [
            "-chardev", f"socket,id=lmqmp,path={self.qmp},server=on,wait=off",
            "-mon", "chardev=lmqmp,mode=control",
            "-chardev", f"socket,id=lmqmpaux,path={self.qmp_aux},server=on,wait=off",
            "-mon", "chardev=lmqmpaux,mode=control",
            "-pidfile", str(self.pidfile),
        ]  # fmt: skip

    @property
    def sockets(self) -> tuple[Path, ...]:
        return (self.qmp, self.qmp_aux, self.heartbeat)


def build_argv(
    qemu: Path, spec: VMSpec, accel: str, paths: InstancePaths, incoming: bool, instance_id: str = "0"
) -> list[str]:
    argv = [
        str(qemu),
        "-name", f"{spec.name},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-machine", spec.machine,
        "-accel", accel,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
    ]  # fmt: skip
    if spec.firmware is None:
        assert spec.kernel is not None and spec.initrd is not None
        argv += ["-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.kernel_cmdline]
    for i, d in enumerate(spec.disks):
        ro = ",readonly=on" if d.readonly else ""
        argv += [
            "-drive", f"file={d.path},format={d.format},if=none,id=disk{i},cache={d.cache}{ro}",
            "-device", f"virtio-blk-pci,drive=disk{i},id=vd{i}" + (",bootindex=0" if i == 0 and spec.firmware else ""),
        ]  # fmt: skip
    for i, n in enumerate(spec.nics):
        if n.bridge is None:
            argv += ["-netdev", f"user,id=net{i}"]
        else:  # QEMU creates the tap (it goes away with QEMU); livemig puts it on the bridge
            argv += ["-netdev", f"tap,id=net{i},ifname={tap_name(instance_id, i)},script=no,downscript=no"]
        argv += ["-device", f"{n.model},netdev=net{i},mac={n.mac},id=nic{i}"]
    argv += ["-serial", f"file:{paths.console}"]
    if spec.heartbeat:
        argv += [
            "-chardev", f"socket,id=hb,path={paths.heartbeat},server=on,wait=off",
            "-serial", "chardev:hb",
        ]  # fmt: skip
    argv += [*paths.manager_args(), "-no-reboot", *spec.extra_args]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv
