"""VMSpec: the validated description of a VM, and the single source of truth for
both the source QEMU and the destination's ``-incoming defer`` QEMU."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from livemig.errors import SpecError
from livemig.guest.workload import Workload, parse_workload

__all__ = ["ACCELS", "VMSpec", "is_vm_name", "parse_size_mib"]

ACCELS: Final = ("auto", "tcg", "kvm")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([MmGg]i?[Bb]?)?\s*$")


def is_vm_name(name: str) -> bool:
    """A VM name: 1-40 letters, digits, '.', '_', '-', not starting with a dot (it is a file name)."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def parse_size_mib(value: str | int, field_name: str = "memory") -> int:
    """``512``, ``512M``, ``2G``, ``2GiB`` -> MiB. Plain numbers are MiB."""
    if isinstance(value, bool):
        raise SpecError(field_name, f"{value!r} is not a size")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise SpecError(field_name, f"{value!r} is not a size in MiB (e.g. 512, 512M, 2G)")
    number, unit = int(m.group(1)), (m.group(2) or "M")[0].upper()
    return number * 1024 if unit == "G" else number


@dataclass(frozen=True)
class VMSpec:
    """A VM. Construct it, then call :meth:`validated` (the CLI always does)."""

    name: str
    memory_mib: int = 256
    vcpus: int = 1
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    workload: Workload = field(default_factory=Workload)
    accel: str = "auto"

    def validated(self) -> VMSpec:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError(
                "name", f"{self.name!r} must be 1-40 characters of letters, digits, '.', '_', '-'"
            )
        if not isinstance(self.memory_mib, int) or isinstance(self.memory_mib, bool):
            raise SpecError("memory", f"{self.memory_mib!r} is not a whole number of MiB")
        if not 64 <= self.memory_mib <= 65536:
            raise SpecError("memory", f"{self.memory_mib} MiB is out of range [64, 65536]")
        if not isinstance(self.vcpus, int) or not 1 <= self.vcpus <= 64:
            raise SpecError("vcpus", f"{self.vcpus!r} is out of range [1, 64]")
        if self.accel not in ACCELS:
            raise SpecError("accel", f"{self.accel!r} is not one of {', '.join(ACCELS)}")
        for key in ("kernel", "initrd"):
            path = getattr(self, key)
            if path is None:
                raise SpecError(key, "is required")
            if not Path(path).is_file():
                raise SpecError(key, f"{path} does not exist or is not a file")
        if "\n" in self.cmdline or "\0" in self.cmdline:
            raise SpecError("cmdline", "must be one line")
        if self.workload.footprint_mib > self.memory_mib - 64:
            raise SpecError(
                "workload",
                f"{self.workload} needs {self.workload.footprint_mib} MiB, "
                f"more than fits in {self.memory_mib} MiB (leave 64 MiB for the kernel)",
            )
        return self

    @property
    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0", "quiet", f"livemig.workload={self.workload}"]
        if self.cmdline:
            parts.append(self.cmdline)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel"] = str(self.kernel) if self.kernel else None
        d["initrd"] = str(self.initrd) if self.initrd else None
        d["workload"] = str(self.workload)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VMSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise SpecError(sorted(unknown)[0], "unknown field")
        d = dict(d)
        if d.get("kernel") is not None:
            d["kernel"] = Path(d["kernel"])
        if d.get("initrd") is not None:
            d["initrd"] = Path(d["initrd"])
        if "workload" in d:
            d["workload"] = parse_workload(str(d["workload"]))
        if "memory_mib" in d:
            d["memory_mib"] = parse_size_mib(d["memory_mib"])
        return cls(**d)

    def with_changes(self, **changes: Any) -> VMSpec:
        return replace(self, **changes)
