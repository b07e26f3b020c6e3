"""Domain XML (pure): the domain livemig defines from a :class:`VMSpec`, and what
livemig reads back from any domain's XML (its heartbeat port, disks, machine).

The domain mirrors ``livemig.qemu.argv``: TCG or KVM, direct kernel boot of livemig's
guest image, the console on serial port 0 (a file) and the heartbeat on serial port 1
(a UNIX socket that QEMU listens on). The socket's path is under /run/libvirt/qemu, so
on a lab host it lives in that host's own directory (each daemon has its own
/run/libvirt).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Final

from livemig.errors import UsageError
from livemig.spec import VMSpec

__all__ = ["DomainFacts", "domain_facts", "domain_xml", "heartbeat_path"]

HEARTBEAT_PORT: Final = 1  # the guest image writes its beats on ttyS1


def heartbeat_path(name: str) -> str:
    return f"/run/libvirt/qemu/livemig-{name}-hb.sock"


def domain_xml(spec: VMSpec, accel: str) -> str:
    """A transient domain for ``spec`` (validated), on ``accel`` (``tcg`` or ``kvm``)."""
    if spec.kernel is None or spec.initrd is None:
        raise UsageError("a libvirt domain from livemig's spec boots a kernel and initrd (no firmware yet)")
    if spec.nics or spec.disks or spec.extra_args:
        raise UsageError("a libvirt domain from livemig's spec has no NICs, disks or extra QEMU args (yet)")
    dom = ET.Element("domain", type="kvm" if accel == "kvm" else "qemu")
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine=spec.machine).text = "hvm"
    ET.SubElement(os_, "kernel").text = str(spec.kernel)
    ET.SubElement(os_, "initrd").text = str(spec.initrd)
    ET.SubElement(os_, "cmdline").text = spec.kernel_cmdline
    ET.SubElement(
        ET.SubElement(dom, "features"), "acpi"
    )  # without it libvirt 9.0 passes -no-acpi, gone in QEMU 10
    ET.SubElement(dom, "on_reboot").text = "destroy"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    console = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(console, "source", path=f"/var/log/libvirt/qemu/{spec.name}-console.log")
    ET.SubElement(console, "target", port="0")
    if spec.heartbeat:
        hb = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(hb, "source", mode="bind", path=heartbeat_path(spec.name))
        ET.SubElement(hb, "target", port=str(HEARTBEAT_PORT))
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


@dataclass(frozen=True)
class DomainFacts:
    """What livemig needs from a domain's XML."""

    name: str
    uuid: str
    machine: str
    memory_kib: int
    heartbeat: str | None  # the heartbeat socket's path (as its QEMU sees it), if any
    local_disks: tuple[str, ...]  # file-backed disks: need shared storage or storage migration


_UNITS: Final = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "m": 1024,
    "mib": 1024,
    "g": 1 << 20,
    "gib": 1 << 20,
}


def _kib(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip().isdigit():
        return 0
    return int(int(el.text or 0) * _UNITS.get((el.get("unit") or "kib").lower(), 1))


def domain_facts(xml: str) -> DomainFacts:
    """Parse a domain's XML once (raw data checked here, nowhere else)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UsageError(f"the domain's XML does not parse: {exc}") from exc
    hb = None
    for serial in root.iterfind("./devices/serial[@type='unix']"):
        src, target = serial.find("source"), serial.find("target")
        if src is not None and src.get("mode") == "bind" and target is not None \
                and target.get("port") == str(HEARTBEAT_PORT):  # fmt: skip
            hb = src.get("path")
    disks = tuple(
        str(s.get("file"))
        for d in root.iterfind("./devices/disk[@device='disk']")
        if (s := d.find("source")) is not None and s.get("file")
        and d.find("readonly") is None and d.find("shareable") is None
    )  # fmt: skip
    mtype = root.find("./os/type")
    return DomainFacts(
        name=root.findtext("name") or "",
        uuid=root.findtext("uuid") or "",
        machine=(mtype.get("machine") or "") if mtype is not None else "",
        memory_kib=_kib(root.find("memory")),
        heartbeat=hb,
        local_disks=disks,
    )
