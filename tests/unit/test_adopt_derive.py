"""Deriving a destination's argv from a foreign QEMU's (pure)."""

from pathlib import Path

import pytest

from livemig.qemu.adopt import derive_incoming, parse_argv, split_opts
from livemig.qemu.argv import InstancePaths

PATHS = InstancePaths(Path("/run/lm/qemu/vm-1"))
BASE = [
    "/usr/bin/qemu-system-x86_64", "-name", "guest=web,debug-threads=on", "-machine", "pc,accel=tcg",
    "-m", "512", "-smp", "2", "-nodefaults", "-daemonize", "-pidfile", "/var/run/web.pid",
    "-drive", "file=/srv/web.qcow2,format=qcow2,if=none,id=d0,cache=none", "-device", "virtio-blk-pci,drive=d0",
    "-netdev", "tap,id=n0,ifname=vnet3,script=/etc/qemu-ifup,vhost=on",
    "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01",
    "-chardev", "socket,id=mon,path=/var/run/web.qmp,server=on,wait=off", "-mon", "chardev=mon,mode=control",
    "-chardev", "socket,id=hb,path=/var/run/web.hb,server=on,wait=off", "-serial", "file:/var/log/web.log",
    "-serial", "chardev:hb", "-qmp", "unix:/var/run/web2.qmp,server,nowait", "-vnc", ":3",
]  # fmt: skip


def test_the_destination_keeps_devices_and_replaces_what_is_the_hosts_own() -> None:
    d = derive_incoming(BASE, PATHS, "abcd1234", {"vnet3": "br0"}, "pc-i440fx-10.0", "hb")
    assert d.refusals == []
    argv = d.argv
    assert argv[-2:] == ["-incoming", "defer"]
    assert argv[argv.index("-machine") + 1] == "pc-i440fx-10.0,accel=tcg"
    assert "-daemonize" not in argv and "-qmp" not in argv and "/var/run/web.pid" not in argv
    assert "socket,id=mon,path=/var/run/web.qmp,server=on,wait=off" not in argv  # its manager's monitor
    assert "virtio-blk-pci,drive=d0" in argv and "-m" in argv and "512" in argv
    netdev = split_opts(argv[argv.index("-netdev") + 1])
    assert netdev == (
        "tap",
        {"id": "n0", "ifname": "lmtabcd1234n0", "script": "no", "vhost": "on", "downscript": "no"},
    )
    assert d.taps == [("lmtabcd1234n0", "br0")]
    assert f"socket,id=hb,path={PATHS.heartbeat},server=on,wait=off" in argv and d.heartbeat
    assert f"file:{PATHS.dir / 'serial0.log'}" in argv
    assert argv[argv.index("-vnc") + 1] == "none"
    assert argv.count("-mon") == 2 and "-pidfile" in argv
    assert d.disks == ["/srv/web.qcow2"]


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        (["-device", "vfio-pci,host=01:00.0"], "-device vfio-pci"),
        (["-netdev", "vhost-user,id=v0,chardev=c0"], "-netdev v0"),
        (["-device", "vhost-user-blk-pci,chardev=c1"], "-device vhost-user-blk-pci"),
        (["-netdev", "tap,id=n1,fd=7"], "-netdev n1"),
        (["-chardev", "socket,id=c2,fd=9"], "-chardev c2"),
        (["-add-fd", "fd=3,set=2"], "-add-fd"),
        (["-drive", "file=/dev/fdset/2,if=virtio"], "-drive /dev/fdset/2"),
        (["-drive", "file=/srv/x.raw,snapshot=on"], "-drive /srv/x.raw"),
        (["-snapshot"], "-snapshot"),
        (["-netdev", "tap,id=n2,ifname=lonely"], "-netdev n2"),
        (["-chardev", "socket,id=t,host=0.0.0.0,port=4444,server=on"], "-chardev t"),
        (["-frobnicate", "yes"], "-frobnicate"),
        (["/srv/bare.img"], "/srv/bare.img"),
    ],
)
def test_what_cannot_be_recreated_is_refused_with_its_reason(extra: list[str], what: str) -> None:
    d = derive_incoming(BASE + extra, PATHS, "abcd1234", {"vnet3": "br0", "lonely": None})
    assert [r.what for r in d.refusals] == [what], d.refusals
    assert d.refusals[0].reason


def test_option_parsing() -> None:
    assert split_opts("tap,id=n0,script=a,,b,vhost") == ("tap", {"id": "n0", "script": "a,b", "vhost": "on"})
    args = parse_argv(["q", "--nodefaults", "-m", "1G", "-S"])
    assert args.opts == [("-nodefaults", None), ("-m", "1G"), ("-S", None)] and not args.unknown
