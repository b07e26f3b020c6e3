"""The QEMU layer: binary and version, accelerator choice, argv, processes, QMP."""

from livemig.qemu.accel import resolve_accel
from livemig.qemu.argv import InstancePaths, build_argv
from livemig.qemu.binary import QemuBinary, find_qemu
from livemig.qemu.instance import QemuInstance
from livemig.qemu.monitor import Monitor

__all__ = [
    "InstancePaths",
    "Monitor",
    "QemuBinary",
    "QemuInstance",
    "build_argv",
    "find_qemu",
    "resolve_accel",
]
