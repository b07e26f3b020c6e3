"""QEMU's argv, built from a validated VMSpec (pure: no I/O).

The destination's argv is the source's plus ``-incoming defer``; nothing else
differs but the instance's own sockets and files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from livemig.spec import VMSpec

__all__ = ["InstancePaths", "build_argv"]


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

    @property
    def sockets(self) -> tuple[Path, ...]:
        return (self.qmp, self.qmp_aux, self.heartbeat)


def build_argv(qemu: Path, spec: VMSpec, accel: str, paths: InstancePaths, incoming: bool) -> list[str]:
    assert spec.kernel is not None and spec.initrd is not None
    argv = [
        str(qemu),
        "-name", f"{spec.name},debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-machine", "pc",
        "-accel", accel,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", spec.kernel_cmdline,
        "-serial", f"file:{paths.console}",
        "-chardev", f"socket,id=hb,path={paths.heartbeat},server=on,wait=off",
        "-serial", "chardev:hb",
        "-chardev", f"socket,id=qmp,path={paths.qmp},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=qmpaux,path={paths.qmp_aux},server=on,wait=off",
        "-mon", "chardev=qmpaux,mode=control",
        "-pidfile", str(paths.pidfile),
        "-no-reboot",
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", "defer"]
    return argv
