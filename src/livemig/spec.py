"""VMSpec: the validated description of a VM, and the single source of truth for
both the source QEMU and the destination's ``-incoming defer`` QEMU.

Pure (no I/O but ``Path.is_file`` checks): TOML files are read and written by
:mod:`livemig.specfile`; argv is built by :mod:`livemig.qemu.argv`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from livemig.errors import SpecError
from livemig.guest.workload import Workload, parse_workload

__all__ = [
    "ACCELS",
    "CACHE_MODES",
    "DISK_FORMATS",
    "NIC_MODELS",
    "Disk",
    "Nic",
    "VMSpec",
    "is_vm_name",
    "parse_size_mib",
]

ACCELS: Final = ("auto", "tcg", "kvm")
DISK_FORMATS: Final = ("raw", "qcow2")
CACHE_MODES: Final = ("none", "writeback", "writethrough", "directsync", "unsafe")
NIC_MODELS: Final = ("virtio-net-pci", "e1000", "e1000e", "rtl8139")
FIRMWARES: Final = ("bios",)
MACHINES: Final = ("pc", "q35")
_MAC_RE: Final = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Options that livemig itself sets (or that would break the destination's -incoming):
OWNED_OPTIONS: Final = frozenset({
    "-incoming", "-qmp", "-qmp-pretty", "-monitor", "-mon", "-daemonize", "-pidfile", "-name",
    "-serial", "-kernel", "-initrd", "-append", "-m", "-smp", "-accel", "-enable-kvm", "-machine",
    "-M", "-add-fd", "-S", "-snapshot",
})  # fmt: skip
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
class Disk:
    """A disk image on shared storage: the source and the destination open the same path."""

    path: Path
    format: str = "raw"
    readonly: bool = False
    cache: str = "none"

    def validated(self, where: str) -> Disk:
        if not isinstance(self.path, Path) or not str(self.path):
            raise SpecError(f"{where}.path", "is required")
        if not self.path.is_absolute():
            raise SpecError(f"{where}.path", f"{self.path} must be an absolute path (both hosts open it)")
        if any(c in str(self.path) for c in ",\n\0"):
            raise SpecError(f"{where}.path", f"{str(self.path)!r} must not contain ',' or control characters")
        if not self.path.is_file():
            raise SpecError(f"{where}.path", f"{self.path} does not exist or is not a file")
        if self.format not in DISK_FORMATS:
            raise SpecError(f"{where}.format", f"{self.format!r} is not one of {', '.join(DISK_FORMATS)}")
        if not isinstance(self.readonly, bool):
            raise SpecError(f"{where}.readonly", f"{self.readonly!r} is not true or false")
        if self.cache not in CACHE_MODES:
            raise SpecError(f"{where}.cache", f"{self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        return self


@dataclass(frozen=True)
class Nic:
    """A network card. ``network`` is ``user`` (QEMU's NAT) or ``bridge:NAME``: a tap on
    bridge NAME of the host the VM runs on (the lab's hosts each have ``lmbr0``). ``ip`` is
    the guest's address: livemig's guest image configures it from the kernel command
    line, and the network probe pings it."""

    network: str = "user"
    model: str = "virtio-net-pci"
    mac: str | None = None
    ip: str | None = None

    @property
    def bridge(self) -> str | None:
        return self.network.split(":", 1)[1] if self.network.startswith("bridge:") else None

    @property
    def address(self) -> str | None:
        """The guest's IP without its prefix length."""
        return str(ipaddress.ip_interface(self.ip).ip) if self.ip else None

    def validated(self, where: str) -> Nic:
        if self.network != "user" and not (
            self.network.startswith("bridge:") and _IFNAME_RE.match(self.network[len("bridge:") :])
        ):
            raise SpecError(f"{where}.network", f"{self.network!r} is not 'user' or 'bridge:NAME'")
        if self.model not in NIC_MODELS:
            raise SpecError(f"{where}.model", f"{self.model!r} is not one of {', '.join(NIC_MODELS)}")
        if self.mac is not None:
            if not isinstance(self.mac, str) or not _MAC_RE.match(self.mac):
                raise SpecError(f"{where}.mac", f"{self.mac!r} is not a MAC like 52:54:00:12:34:56")
            if int(self.mac[:2], 16) & 1:
                raise SpecError(f"{where}.mac", f"{self.mac} is a multicast address")
        if self.ip is not None:
            try:
                iface = ipaddress.ip_interface(self.ip)
            except ValueError:
                raise SpecError(
                    f"{where}.ip", f"{self.ip!r} is not an address like 198.51.100.10/24"
                ) from None
            if iface.version != 4 or "/" not in self.ip:
                raise SpecError(f"{where}.ip", f"{self.ip!r}: give an IPv4 address with its prefix, e.g. /24")
            if self.network == "user":
                raise SpecError(f"{where}.ip", "a static address needs a bridge network, not 'user'")
        return self


def default_mac(vm: str, index: int) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) from the VM's name."""
    h = hashlib.sha256(f"{vm}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


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
    machine: str = "pc"
    firmware: str | None = None  # "bios": boot from disk[0] instead of kernel/initrd
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    heartbeat: bool = True  # the guest runs livemig's image: heartbeat serial port, ready marker
    extra_args: tuple[str, ...] = ()

    def _check_boot(self, boot: bool) -> None:
        if self.firmware is not None:
            if self.firmware not in FIRMWARES:
                raise SpecError("boot.firmware", f"{self.firmware!r} is not one of {', '.join(FIRMWARES)}")
            if self.kernel is not None or self.initrd is not None:
                raise SpecError("boot.firmware", "give either a kernel and initrd, or firmware, not both")
            if not self.disks:
                raise SpecError("boot.firmware", "booting from firmware needs a disk (disk[0] is booted)")
            return
        for key in ("kernel", "initrd"):
            path = getattr(self, key)
            if path is None and not boot:
                continue  # the guest image's, looked up next
            if path is None:
                raise SpecError(f"boot.{key}", "is required (or boot.firmware with a disk)")
            if not Path(path).is_file():
                raise SpecError(f"boot.{key}", f"{path} does not exist or is not a file")

    def validated(self, boot: bool = True) -> VMSpec:
        """This spec, checked field by field; ``boot=False`` leaves a kernel or initrd
        that is not given unchecked (they may come from the guest image, looked up after the
        rest is known good)."""
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
        if self.machine not in MACHINES:
            raise SpecError("machine", f"{self.machine!r} is not one of {', '.join(MACHINES)}")
        self._check_boot(boot)
        if "\n" in self.cmdline or "\0" in self.cmdline:
            raise SpecError("boot.cmdline", "must be one line")
        disks = tuple(d.validated(f"disk[{i}]") for i, d in enumerate(self.disks))
        seen: dict[Path, int] = {}
        for i, d in enumerate(disks):
            if d.path in seen:
                raise SpecError(f"disk[{i}].path", f"{d.path} is already disk[{seen[d.path]}]")
            seen[d.path] = i
        nics = tuple(
            replace(n.validated(f"nic[{i}]"), mac=n.mac or default_mac(self.name, i))
            for i, n in enumerate(self.nics)
        )
        macs: dict[str, int] = {}
        for i, n in enumerate(nics):
            assert n.mac is not None
            if n.mac in macs:
                raise SpecError(f"nic[{i}].mac", f"{n.mac} duplicates nic[{macs[n.mac]}].mac")
            macs[n.mac] = i
        if not isinstance(self.heartbeat, bool):
            raise SpecError("serial.heartbeat", f"{self.heartbeat!r} is not true or false")
        for i, arg in enumerate(self.extra_args):
            if not isinstance(arg, str) or "\0" in arg:
                raise SpecError(f"extra_args[{i}]", f"{arg!r} is not a string")
            if arg in OWNED_OPTIONS:
                raise SpecError(
                    f"extra_args[{i}]",
                    f"{arg} is set by livemig (or breaks migration); use the spec's own fields",
                )
            if any(bad in arg for bad in ("fd=", "fds=", "vhost-user", "vfio-pci")):
                raise SpecError(
                    f"extra_args[{i}]", f"{arg!r}: fd-passing, vhost-user and VFIO cannot migrate"
                )
        if self.workload.footprint_mib > self.memory_mib - 64:
            raise SpecError(
                "workload",
                f"{self.workload} needs {self.workload.footprint_mib} MiB, "
                f"more than fits in {self.memory_mib} MiB (leave 64 MiB for the kernel)",
            )
        return replace(self, disks=disks, nics=nics)

    @property
    def kernel_cmdline(self) -> str:
        parts = ["console=ttyS0", "quiet", f"livemig.workload={self.workload}"]
        # livemig's guest image configures eth<i> from livemig.net=eth<i>:ADDR/LEN
        parts += [f"livemig.net=eth{i}:{n.ip}" for i, n in enumerate(self.nics) if n.ip]
        if self.cmdline:
            parts.append(self.cmdline)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel"] = str(self.kernel) if self.kernel else None
        d["initrd"] = str(self.initrd) if self.initrd else None
        d["workload"] = str(self.workload)
        d["disks"] = [{**asdict(x), "path": str(x.path)} for x in self.disks]
        d["nics"] = [asdict(n) for n in self.nics]
        d["extra_args"] = list(self.extra_args)
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
        if "disks" in d:
            d["disks"] = tuple(Disk(**{**x, "path": Path(x["path"])}) for x in d["disks"])
        if "nics" in d:
            d["nics"] = tuple(Nic(**n) for n in d["nics"])
        if "extra_args" in d:
            d["extra_args"] = tuple(d["extra_args"])
        return cls(**d)

    def with_changes(self, **changes: Any) -> VMSpec:
        return replace(self, **changes)
