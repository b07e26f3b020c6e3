"""VM spec files (TOML): read with :mod:`tomllib`, written with ``tomli_w``; every error
names the field it is about (``disk[1].cache: 'fast' is not one of ...``).

The layout::

    name = "web"
    memory = "512M"
    vcpus = 1
    workload = "idle"              # livemig's guest image only
    extra_args = ["-rtc", "base=utc"]

    [boot]                         # kernel/initrd/cmdline, or firmware = "bios" (boots disk[0]);
    cmdline = ""                   # none of them: livemig's guest image

    [[disk]]
    path = "/srv/shared/web.raw"   # shared storage: the destination opens the same path
    format = "raw"                 # raw | qcow2
    readonly = false
    cache = "none"                 # none | writeback | writethrough | directsync | unsafe

    [[nic]]
    model = "virtio-net-pci"       # virtio-net-pci | e1000 | e1000e | rtl8139
    mac = "52:54:00:12:34:56"      # default: derived from the name
    network = "bridge:lmbr0"       # user | bridge:NAME
    ip = "198.51.100.10/24"        # the guest's address (livemig's image sets it; probes use it)

    [serial]
    heartbeat = true               # livemig's guest image: heartbeats and the ready marker
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

import tomli_w

from livemig.errors import SpecError
from livemig.guest.workload import parse_workload
from livemig.spec import Disk, Nic, VMSpec, parse_size_mib

__all__ = ["load_spec", "parse_spec", "spec_to_toml"]

_TOP: Final = ("name", "memory", "vcpus", "accel", "machine", "workload", "extra_args")
_BOOT: Final = ("kernel", "initrd", "cmdline", "firmware")
_DISK: Final = ("path", "format", "readonly", "cache")
_NIC: Final = ("model", "mac", "network", "ip")
_SERIAL: Final = ("heartbeat",)


def _check_keys(table: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SpecError(where, "must be a table")
    for key in table:
        if key not in known:
            field = f"{where}.{key}" if where else key
            raise SpecError(field, f"unknown field (known: {', '.join(known)})")
    return table


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"{where}{key}", f"{value!r} is not a {names}")
    return value


def _tables(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(key, f"must be an array of tables ([[{key}]])")
    return value


def parse_spec(text: str, source: str = "spec") -> VMSpec:
    """Parse spec TOML into a (not yet validated) VMSpec."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(source, f"not valid TOML: {exc}") from None
    _check_keys(doc, (*_TOP, "boot", "disk", "nic", "serial"), "")
    name = _typed(doc, "name", str, "")
    if name is None:
        raise SpecError("name", "is required")
    boot = _check_keys(doc.get("boot", {}), _BOOT, "boot")
    serial = _check_keys(doc.get("serial", {}), _SERIAL, "serial")
    extra = doc.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise SpecError("extra_args", "must be a list of strings (an argv list, never a shell line)")
    disks = []
    for i, d in enumerate(_tables(doc, "disk")):
        where = f"disk[{i}]"
        _check_keys(d, _DISK, where)
        path = _typed(d, "path", str, f"{where}.")
        if not path:
            raise SpecError(f"{where}.path", "is required")
        disks.append(
            Disk(
                Path(path),
                _typed(d, "format", str, f"{where}.") or "raw",
                bool(_typed(d, "readonly", bool, f"{where}.") or False),
                _typed(d, "cache", str, f"{where}.") or "none",
            )
        )
    nics = []
    for i, n in enumerate(_tables(doc, "nic")):
        where = f"nic[{i}]"
        _check_keys(n, _NIC, where)
        nics.append(
            Nic(
                network=_typed(n, "network", str, f"{where}.") or "user",
                model=_typed(n, "model", str, f"{where}.") or "virtio-net-pci",
                mac=(_typed(n, "mac", str, f"{where}.") or "").lower() or None,
                ip=_typed(n, "ip", str, f"{where}."),
            )
        )
    memory = doc.get("memory", 256)
    if not isinstance(memory, (int, str)) or isinstance(memory, bool):
        raise SpecError("memory", f"{memory!r} is not a size")
    kernel, initrd = _typed(boot, "kernel", str, "boot."), _typed(boot, "initrd", str, "boot.")
    heartbeat = serial.get("heartbeat", True)
    if not isinstance(heartbeat, bool):
        raise SpecError("serial.heartbeat", f"{heartbeat!r} is not true or false")
    return VMSpec(
        name=name,
        memory_mib=parse_size_mib(memory),
        vcpus=_typed(doc, "vcpus", int, "") or 1,
        kernel=Path(kernel) if kernel else None,
        initrd=Path(initrd) if initrd else None,
        cmdline=_typed(boot, "cmdline", str, "boot.") or "",
        workload=parse_workload(_typed(doc, "workload", str, "") or "idle"),
        accel=_typed(doc, "accel", str, "") or "auto",
        machine=_typed(doc, "machine", str, "") or "pc",
        firmware=_typed(boot, "firmware", str, "boot."),
        disks=tuple(disks),
        nics=tuple(nics),
        heartbeat=heartbeat,
        extra_args=tuple(extra),
    )


def load_spec(path: Path) -> VMSpec:
    """Read a spec file (not yet validated: :func:`livemig.vm.start_vm` validates)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(str(path), f"cannot read the spec: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(str(path), "not valid TOML: not UTF-8 text") from None
    return parse_spec(text, str(path))


def spec_to_toml(spec: VMSpec) -> str:
    """The TOML that reproduces ``spec`` (``parse_spec(spec_to_toml(s)) == s``)."""
    doc: dict[str, Any] = {
        "name": spec.name,
        "memory": f"{spec.memory_mib}M",
        "vcpus": spec.vcpus,
        "accel": spec.accel,
        "machine": spec.machine,
        "workload": str(spec.workload),
        "extra_args": list(spec.extra_args),
    }
    boot: dict[str, Any] = {"cmdline": spec.cmdline}
    if spec.firmware:
        boot["firmware"] = spec.firmware
    if spec.kernel:
        boot["kernel"] = str(spec.kernel)
    if spec.initrd:
        boot["initrd"] = str(spec.initrd)
    doc["boot"] = boot
    if spec.disks:
        doc["disk"] = [
            {"path": str(d.path), "format": d.format, "readonly": d.readonly, "cache": d.cache}
            for d in spec.disks
        ]
    if spec.nics:
        doc["nic"] = [
            {k: v for k, v in (("model", n.model), ("mac", n.mac), ("network", n.network), ("ip", n.ip)) if v}
            for n in spec.nics
        ]
    doc["serial"] = {"heartbeat": spec.heartbeat}
    return (
        f"# livemig VM spec of {spec.name}: `livemig vm start --spec FILE` reproduces it\n"
        + tomli_w.dumps(doc)
    )
