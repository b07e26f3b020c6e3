"""Deriving a destination QEMU's argv from a running QEMU that livemig did not start
(pure: no I/O; :mod:`livemig.adopt` gathers the inputs).

The destination gets the same machine and devices, and everything that is the source
host's own is replaced: its monitors by livemig's QMP sockets, chardev and serial
sockets and files by the instance's own, taps by new taps on the same bridges, and
``-incoming defer`` is added. What cannot be recreated safely is refused, with the
reason, before anything is touched: fd-passed devices, vhost-user, VFIO, snapshot
overlays (local-only), TCP chardev servers and options livemig does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

from livemig.qemu.argv import InstancePaths, tap_name

__all__ = ["Derived", "QemuArgs", "Refusal", "derive_incoming", "parse_argv", "split_opts"]

# Options that take no value (everything livemig knows takes exactly one otherwise).
NOARG: Final = frozenset({
    "-nodefaults", "-no-user-config", "-no-reboot", "-no-shutdown", "-daemonize", "-nographic",
    "-enable-kvm", "-S", "-snapshot", "-no-hpet", "-no-acpi", "-s", "-usb", "-full-screen",
    "-preconfig", "-only-migratable", "-no-fd-bootchk", "-win2k-hack", "-no-quit",
})  # fmt: skip
KEEP: Final = frozenset({
    "-name", "-accel", "-m", "-smp", "-cpu", "-kernel", "-initrd", "-append", "-dtb", "-boot",
    "-rtc", "-vga", "-display", "-global", "-bios", "-L", "-uuid", "-k", "-msg", "-sandbox",
    "-overcommit", "-device", "-object", "-fw_cfg", "-smbios", "-numa", "-d", "-trace",
    "-action", "-watchdog-action", "-icount", "-usbdevice", "-audiodev", "-iscsi",
    "-hda", "-hdb", "-hdc", "-hdd", "-cdrom", "-fda", "-fdb", "-mem-path", "-mem-prealloc",
    "-compat", "-plugin", "-semihosting-config", "-tpmdev", "-set",
})  # fmt: skip
DROP: Final = frozenset(
    {"-qmp", "-qmp-pretty", "-monitor", "-pidfile", "-daemonize", "-D", "-S", "-incoming"}
)
REFUSE: Final = {
    "-add-fd": "fd-passed file descriptors have no equivalent on the destination",
    "-snapshot": "-snapshot writes to a temporary local overlay: the disk state is local-only",
    "-nic": "-nic shorthand networking: use -netdev and -device (livemig must map its tap)",
    "-net": "legacy -net networking cannot be mapped onto the destination",
    "-gdb": "a gdb server port would clash on the destination",
    "-spice": "a SPICE server cannot be recreated safely",
}
NETDEV_OK: Final = ("user", "tap", "bridge")


@dataclass(frozen=True)
class Refusal:
    what: str  # e.g. "-netdev net0", "-device vfio-pci"
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass
class QemuArgs:
    """A QEMU argv as (option, value) pairs, value None for flags."""

    program: str
    opts: list[tuple[str, str | None]]
    unknown: list[str] = field(default_factory=list)

    def values(self, opt: str) -> list[str]:
        return [v for o, v in self.opts if o == opt and v is not None]


def parse_argv(argv: list[str]) -> QemuArgs:
    """Split a QEMU argv into options; ``--opt`` is ``-opt``. Unknown options are kept aside."""
    opts: list[tuple[str, str | None]] = []
    unknown: list[str] = []
    i = 1
    while i < len(argv):
        raw = argv[i]
        if not raw.startswith("-"):
            unknown.append(raw)  # a bare disk image (qemu IMAGE): refused below
            i += 1
            continue
        opt = "-" + raw.lstrip("-")
        if opt in NOARG:
            opts.append((opt, None))
            i += 1
            continue
        if i + 1 >= len(argv):
            unknown.append(opt)
            break
        if opt not in KEEP and opt not in DROP and opt not in REFUSE and opt not in _MAPPED:
            unknown.append(opt)
        opts.append((opt, argv[i + 1]))
        i += 2
    return QemuArgs(argv[0] if argv else "", opts, unknown)


_MAPPED: Final = frozenset(
    {"-machine", "-M", "-chardev", "-mon", "-serial", "-netdev", "-drive", "-blockdev", "-vnc"}
)


def split_opts(value: str) -> tuple[str | None, dict[str, str]]:
    """``tap,id=n0,ifname=t`` -> ('tap', {'id': 'n0', 'ifname': 't'}); ',,' is a literal comma."""
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(value):
        if value[i] == ",":
            if value[i : i + 2] == ",,":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += value[i]
        i += 1
    parts.append(cur)
    first = None
    kv: dict[str, str] = {}
    for n, p in enumerate(parts):
        if "=" in p:
            k, v = p.split("=", 1)
            kv[k] = v
        elif n == 0:
            first = p
        elif p:
            kv[p] = "on"
    return first, kv


def _join(first: str | None, kv: dict[str, str]) -> str:
    items = [] if first is None else [first]
    items += [f"{k}={v.replace(',', ',,')}" for k, v in kv.items()]
    return ",".join(items)


@dataclass
class Derived:
    """The destination's argv, its taps (tap, bridge), whether it has a heartbeat socket;
    the disks it opens (for the shared-storage check) and what was refused."""

    argv: list[str]
    taps: list[tuple[str, str]]
    heartbeat: bool
    disks: list[str]
    refusals: list[Refusal]


def derive_incoming(
    argv: list[str],
    paths: InstancePaths,
    instance_id: str,
    tap_bridges: dict[str, str | None],
    machine_type: str | None = None,
    heartbeat_chardev: str | None = None,
    qemu: str | None = None,
) -> Derived:
    """The argv of a destination for the QEMU that runs ``argv``.

    ``tap_bridges``: each source tap's bridge (None: on no bridge). ``machine_type``:
    the versioned machine the source really runs (``pc`` -> ``pc-i440fx-10.0``), so that
    the destination emulates the same hardware. ``heartbeat_chardev``: the chardev that
    carries livemig's guest heartbeats (its socket becomes the instance's ``hb.sock``).
    """
    args = parse_argv(argv)
    refusals = [
        Refusal(u, "unknown to livemig: cannot tell whether it is safe to recreate") for u in args.unknown
    ]
    monitors = {split_opts(v)[1].get("chardev") for o, v in args.opts if o == "-mon" and v}
    out: list[str] = [qemu or args.program]
    taps: list[tuple[str, str]] = []
    disks: list[str] = []
    heartbeat = False
    nserial = 0
    ntap = 0
    for opt, val in args.opts:
        if opt in REFUSE:
            refusals.append(Refusal(opt, REFUSE[opt]))
            continue
        if opt in DROP or opt == "-mon":
            continue
        if val is None:
            out.append("-display" if opt == "-nographic" else opt)
            if opt == "-nographic":
                out.append("none")
            continue
        if opt in ("-machine", "-M"):
            first, kv = split_opts(val)
            if "type" in kv:
                kv["type"] = machine_type or kv["type"]
            elif first is not None:
                first = machine_type or first
            out += ["-machine", _join(first, kv)]
        elif opt == "-chardev":
            backend, kv = split_opts(val)
            cid = kv.get("id", "?")
            if cid in monitors:
                continue  # a monitor of the source's manager: the destination gets livemig's
            if "fd" in kv or "fds" in kv:
                refusals.append(Refusal(f"-chardev {cid}", "fd-passed: no mapping to the destination"))
            elif backend == "socket" and "path" in kv:
                if cid == heartbeat_chardev:
                    kv["path"] = str(paths.heartbeat)
                    heartbeat = True
                else:
                    kv["path"] = str(paths.dir / f"chardev-{cid}.sock")
                if kv.get("server") in ("on", "true", "yes") or "server" in kv:
                    kv["wait"] = "off"
                out += ["-chardev", _join(backend, kv)]
            elif backend == "socket":
                refusals.append(Refusal(f"-chardev {cid}", "a TCP chardev would clash on the destination"))
            elif backend in ("file", "pipe", "serial", "parallel", "tty"):
                if backend == "file" and "path" in kv:
                    kv["path"] = str(paths.dir / f"chardev-{cid}.log")
                    out += ["-chardev", _join(backend, kv)]
                else:
                    refusals.append(
                        Refusal(f"-chardev {cid}", f"a {backend} chardev is the source host's own")
                    )
            elif backend == "stdio":
                out += ["-chardev", _join("null", {"id": cid})]
            else:
                out += ["-chardev", val]
        elif opt == "-serial":
            n = nserial
            nserial += 1
            if val.startswith("file:"):
                out += ["-serial", f"file:{paths.dir / f'serial{n}.log'}"]
            elif val.startswith("unix:"):
                out += ["-serial", f"unix:{paths.dir / f'serial{n}.sock'},server=on,wait=off"]
            elif val in ("stdio", "mon:stdio", "vc"):
                out += ["-serial", "null"]
            elif val.startswith("chardev:") or val in ("null", "none", "pty"):
                out += ["-serial", val]
            else:
                refusals.append(Refusal(f"-serial {val}", "this serial backend cannot be recreated"))
        elif opt == "-netdev":
            kind, kv = split_opts(val)
            nid = kv.get("id", "?")
            if kind not in NETDEV_OK:
                reason = "vhost-user needs the source host's backend process" if kind == "vhost-user" else (
                    f"a {kind} netdev's peer cannot be derived")  # fmt: skip
                refusals.append(Refusal(f"-netdev {nid}", reason))
            elif any(k in kv for k in ("fd", "fds", "vhostfd", "vhostfds")):
                refusals.append(Refusal(f"-netdev {nid}", "fd-passed tap: no mapping to the destination"))
            elif kind == "tap":
                src_tap = kv.get("ifname")
                bridge = tap_bridges.get(src_tap) if src_tap else None
                if bridge is None:
                    refusals.append(Refusal(
                        f"-netdev {nid}", f"tap {src_tap or '(unnamed)'} is on no bridge: its network cannot be derived"
                    ))  # fmt: skip
                    continue
                new = tap_name(instance_id, ntap)
                ntap += 1
                kv.update(ifname=new, script="no", downscript="no")
                taps.append((new, bridge))
                out += ["-netdev", _join(kind, kv)]
            else:
                out += ["-netdev", val]
        elif opt == "-device":
            driver, kv = split_opts(val)
            driver = driver or kv.get("driver", "")
            if driver.startswith("vfio"):
                refusals.append(
                    Refusal(f"-device {driver}", "VFIO passes through the source host's hardware")
                )
            elif driver.startswith("vhost-user"):
                refusals.append(
                    Refusal(f"-device {driver}", "vhost-user needs the source host's backend process")
                )
            else:
                out += ["-device", val]
        elif opt == "-drive":
            _, kv = split_opts(val)
            file = kv.get("file", "")
            if kv.get("snapshot") in ("on", "true", "yes"):
                refusals.append(
                    Refusal(f"-drive {file}", "snapshot=on: the writes go to a local temporary overlay")
                )
            elif file.startswith(("/dev/fdset", "fd:")):
                refusals.append(Refusal(f"-drive {file}", "fd-passed: no mapping to the destination"))
            else:
                if file:
                    disks.append(file)
                out += ["-drive", val]
        elif opt == "-blockdev":
            names = _blockdev_files(val)
            if any(n.startswith("/dev/fdset") for n in names):
                refusals.append(Refusal("-blockdev", "fd-passed: no mapping to the destination"))
            disks += names
            out += ["-blockdev", val]
        elif opt == "-vnc":
            out += ["-vnc", "none"]  # not guest-visible; a port would clash on the destination
        else:
            if opt in ("-hda", "-hdb", "-hdc", "-hdd", "-cdrom", "-fda", "-fdb"):
                disks.append(val)
            if "fd=" in val and opt == "-object":
                refusals.append(
                    Refusal(f"{opt} {val.split(',')[0]}", "fd-passed: no mapping to the destination")
                )
                continue
            out += [opt, val]
    out += [*paths.manager_args(), "-incoming", "defer"]
    return Derived(out, taps, heartbeat, disks, refusals)


def _blockdev_files(value: str) -> list[str]:
    """Files a -blockdev opens (dotted key=value or JSON)."""
    if value.lstrip().startswith("{"):
        found: list[str] = []

        def walk(node: object) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "filename" and isinstance(v, str):
                        found.append(v)
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(json.loads(value))
        return found
    _, kv = split_opts(value)
    return [v for k, v in kv.items() if k == "filename" or k.endswith(".filename")]
