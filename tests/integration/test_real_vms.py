"""Real VMs: spec files with a virtio disk on shared storage and a bridged virtio NIC,
migrated across the lab while the client namespace probes the guest; adopting a QEMU
that the test started with a plain command line; spec and storage refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.guest import find_image
from livemig.lab import Lab, Shaping
from livemig.lab.plan import guest_ip
from livemig.policy import parse_policy
from livemig.sync import SyncMigration

from ..unit.test_report_doc import assert_documented
from .conftest import VMFactory, qemu_running, qmp_query
from .test_cli import assert_one_line_error, livemig
from .test_migration import beats_on

pytestmark = [pytest.mark.integration, pytest.mark.lab]

RATE = 50_000_000  # the lab link, bytes/s
WORKLOAD = "dirty:mib=48,rate=8"  # MiB/s: pre-copy converges on the link, post-copy has pages to fetch


def spec_text(name: str, disk: Path, ip: str, extra: str = "") -> str:
    return f'''
name = "{name}"
memory = "256M"
accel = "tcg"
workload = "{WORKLOAD}"

[boot]
cmdline = "livemig.diskbeat=vda"

[[disk]]
path = "{disk}"
format = "raw"
cache = "none"

[[nic]]
model = "virtio-net-pci"
network = "bridge:lmbr0"
ip = "{ip}"
{extra}
'''


def diskbeat(disk: Path) -> int:
    """The counter the guest writes to its disk's first sector every 200 ms."""
    head = disk.read_bytes()[:32].decode(errors="replace").split()
    return int(head[1]) if len(head) > 1 and head[0] == "diskbeat" else 0


def echo_from_client(lab: Lab, address: str, count: int = 20) -> int:
    """UDP echoes answered by ``address``, sent from the lab's client namespace."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.5); s.connect((sys.argv[1],7)); n=0\n"
        f"for i in range({count}):\n"
        "    s.send(b'x%d' % i)\n"
        "    try: n += s.recv(64) == b'x%d' % i\n"
        "    except OSError: pass\n"
        "print(n)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", lab.plan.client_netns, sys.executable, "-c", code, address],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return int(out.stdout.strip())


@pytest.fixture
def lab(lab_env: Path) -> Lab:
    return Lab.up(2, Shaping(RATE), lab_env)


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """Shared storage: a directory both lab hosts open (the machine's own disk)."""
    d = tmp_path / "shared"
    d.mkdir()
    return d


@pytest.mark.parametrize("policy", ["precopy", "postcopy-now", "postcopy-after:1", "manual"])
def test_a_bridged_guest_with_a_disk_migrates_and_keeps_its_address(
    lab: Lab, vms: VMFactory, shared: Path, policy: str
) -> None:
    disk = shared / "web.raw"
    disk.write_bytes(bytes(8 << 20))
    spec = shared / "web.toml"
    spec.write_text(spec_text("web", disk, guest_ip(0)))
    vms.names.append("web")
    start = livemig("vm", "start", "--spec", str(spec), "--host", "src", runtime=vms.runtime)
    assert start.returncode == 0, start.stderr
    address = guest_ip(0).split("/")[0]
    assert echo_from_client(lab, address) >= 18  # the guest answers on the bridge
    mac = vms.registry.load("web").spec.nics[0].mac

    mig = SyncMigration("web", options=MigrationOptions(policy=parse_policy(policy)),
                        registry=vms.registry, to_host="dst")  # fmt: skip
    if policy == "manual":  # the caller's own switch-over, from another thread
        passed = threading.Event()
        mig.on("pass", lambda ev: passed.set())
        worker = threading.Thread(target=mig.migrate)
        worker.start()
        assert passed.wait(60)
        mig.start_postcopy()
        worker.join(120)
        report: MigrationReport | None = mig.report
    else:
        report = mig.migrate()
    assert report is not None and report.status == "completed", report and report.error
    if policy != "precopy":
        assert report.switched_at_pass is not None

    net = report.network
    assert net is not None and net["target"] == f"{address}:7", net
    assert net["sent"] > 100 and net["received"] > 0 and net["max_gap_ms"] is not None
    assert net["lost"] >= 0 and net["max_gap_ms"] >= report.blackout_ms * 0.5  # a client saw the pause
    assert net["announce"]["frames"] >= 1, net  # the destination announced the VM's MAC
    assert_documented(report.to_dict())
    # the destination QEMU's own announce settings (livemig sets them before it listens)
    announce = qmp_query(vms.registry.load("web").instance.paths.qmp_aux, "query-migrate-parameters")
    assert announce["announce-rounds"] == 6 and announce["announce-initial"] == 10, announce
    assert report.guest["max_stall_ms"] is not None

    rec = vms.registry.load("web")
    assert rec.host == "dst" and rec.spec.nics[0].mac == mac
    if policy == "postcopy-after:1":
        # A QEMU keeps its migration capabilities: one that received a post-copy migration
        # still has postcopy-ram on, and a pre-copy right out of it failed (the new
        # destination refused the post-copy advice) until livemig set it off explicitly.
        back = SyncMigration("web", options=MigrationOptions(policy=parse_policy("precopy")),
                             registry=vms.registry, to_host="src").migrate()  # fmt: skip
        assert back.status == "completed", back.error
        assert vms.registry.load("web").host == "src"
    assert echo_from_client(lab, address) >= 18  # the same IP answers, from the destination
    before = diskbeat(disk)
    time.sleep(1.0)
    assert diskbeat(disk) > before > 0  # the destination writes to the shared disk


def test_a_spec_round_trips_through_vm_show(lab: Lab, vms: VMFactory, shared: Path) -> None:
    disk = shared / "a.raw"
    disk.write_bytes(bytes(1 << 20))
    spec = shared / "a.toml"
    spec.write_text(spec_text("a", disk, guest_ip(1), extra="[serial]\nheartbeat = true\n"))
    vms.names.append("a")
    assert livemig("vm", "start", "--spec", str(spec), "--host", "src", runtime=vms.runtime).returncode == 0
    shown = livemig("vm", "show", "a", "--spec", runtime=vms.runtime)
    assert shown.returncode == 0
    again = shared / "again.toml"
    again.write_text(shown.stdout.replace('name = "a"', 'name = "b"'))
    vms.names.append("b")
    nic = 'ip = "198.51.100.11/24"'
    text = again.read_text().replace(nic, f'ip = "{guest_ip(2)}"')
    text = text.replace(vms.registry.load("a").spec.nics[0].mac or "", "52:54:00:00:00:0b")
    (shared / "b.raw").write_bytes(bytes(1 << 20))  # a disk is one VM's: QEMU locks it
    again.write_text(text.replace(str(disk), str(shared / "b.raw")))
    assert livemig("vm", "start", "--spec", str(again), "--host", "dst", runtime=vms.runtime).returncode == 0
    a, b = vms.registry.load("a").spec, vms.registry.load("b").spec
    assert (a.memory_mib, a.workload, a.cmdline, a.nics[0].model) == (
        b.memory_mib,
        b.workload,
        b.cmdline,
        b.nics[0].model,
    )
    assert b.disks[0].path == shared / "b.raw" and a.disks[0].cache == b.disks[0].cache == "none"
    assert echo_from_client(lab, guest_ip(2).split("/")[0]) >= 18


def test_spec_and_storage_refusals_name_the_field(lab: Lab, vms: VMFactory, shared: Path) -> None:
    disk = shared / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    cases = {
        "missing disk": (spec_text("x", shared / "nope.raw", guest_ip(3)), "disk[0].path"),
        "unknown model": (
            spec_text("x", disk, guest_ip(3)).replace("virtio-net-pci", "ne2k"),
            "nic[0].model",
        ),
        "duplicate MAC": (
            spec_text("x", disk, guest_ip(3))
            + '[[nic]]\nmac = "52:54:00:00:00:01"\n[[nic]]\nmac = "52:54:00:00:00:01"\n',
            "nic[2].mac",
        ),
        "bad TOML": ('name = "x"\nmemory = \n', "line 2"),
    }
    for label, (text, field) in cases.items():
        f = shared / "bad.toml"
        f.write_text(text)
        proc = livemig("vm", "start", "--spec", str(f), "--host", "src", runtime=vms.runtime)
        assert_one_line_error(proc, 2, field)
        assert not vms.registry.exists("x"), label

    # a disk on src's local storage: the VM runs, but cannot move to dst
    local = lab.local_dir("src") / "l.raw"
    local.write_bytes(bytes(1 << 20))
    try:
        f = shared / "local.toml"
        f.write_text(spec_text("loc", local, guest_ip(4)))
        vms.names.append("loc")
        assert livemig("vm", "start", "--spec", str(f), "--host", "src", runtime=vms.runtime).returncode == 0
        proc = livemig("migrate", "loc", "--to", "dst", runtime=vms.runtime)
        assert_one_line_error(proc, 1, "disk[0]", "src's local storage", "dst cannot open it")
        rec = vms.registry.load("loc")
        assert rec.host == "src" and rec.migration is None and qemu_running(rec.instance.pid)
        assert len(list(vms.runtime.glob("qemu/*"))) == 1  # no destination was started
    finally:
        local.unlink()


def _plain_qemu(tmp: Path, lab: Lab, disk: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    """A QEMU started the way someone else's tooling would: its own sockets, its own tap."""
    img = find_image()
    argv = [
        "ip", "netns", "exec", lab.host("src").netns, "qemu-system-x86_64",
        "-name", "plain", "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg", "-m", "256",
        "-kernel", str(img.kernel), "-initrd", str(img.initrd),
        "-append", f"console=ttyS0 quiet livemig.workload=idle livemig.net=eth0:{guest_ip(5)}",
        "-drive", f"file={disk},format=raw,if=virtio,cache=none",
        "-netdev", "tap,id=n0,ifname=plaintap,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:05",
        "-serial", f"file:{tmp / 'console.log'}",
        "-chardev", f"socket,id=beat,path={tmp / 'beat.sock'},server=on,wait=off", "-serial", "chardev:beat",
        "-qmp", f"unix:{tmp / 'qmp.sock'},server=on,wait=off", *extra,
    ]  # fmt: skip
    with (tmp / "qemu.err").open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    console = tmp / "console.log"
    deadline = time.monotonic() + 30
    while not console.exists() or b"livemig-guest: ready" not in console.read_bytes():
        assert proc.poll() is None, (tmp / "qemu.err").read_text()
        assert time.monotonic() < deadline, "the plain guest did not boot"
        time.sleep(0.1)
    subprocess.run(["ip", "netns", "exec", lab.host("src").netns, "ip", "link", "set", "plaintap",
                    "master", "lmbr0", "up"], check=True)  # fmt: skip
    return proc


def test_a_qemu_started_by_someone_else_is_adopted_and_migrated(
    lab: Lab, vms: VMFactory, shared: Path
) -> None:
    tmp = Path(vms.runtime) / "plain"
    tmp.mkdir()
    disk = shared / "plain.raw"
    disk.write_bytes(bytes(4 << 20))
    proc = _plain_qemu(tmp, lab, disk, [])
    try:
        vms.names.append("plain")
        adopted = livemig("adopt", "plain", "--qmp", str(tmp / "qmp.sock"), "--pid", str(proc.pid),
                          "--heartbeat", "beat", "--json", runtime=vms.runtime)  # fmt: skip
        assert adopted.returncode == 0, adopted.stderr
        rec = json.loads(adopted.stdout)
        assert rec["host"] == "src" and rec["adopted"]["taps"] == {"plaintap": "lmbr0"}
        argv = rec["destination_argv"]
        assert argv[-2:] == ["-incoming", "defer"] and "-qmp" not in argv
        assert "pc-i440fx-" in argv[argv.index("-machine") + 1]  # the versioned machine it runs
        assert any(a.startswith("tap,id=n0,ifname=lmt") for a in argv)
        assert qemu_running(proc.pid)  # adopting changed nothing
        shown = livemig("vm", "show", "plain", "--spec", runtime=vms.runtime)
        assert_one_line_error(shown, 2, "adopted")  # it has no spec to print

        report = SyncMigration("plain", options=MigrationOptions(policy=parse_policy("postcopy-after:1")),
                               registry=vms.registry, to_host="dst").migrate()  # fmt: skip
        assert report is not None and report.status == "completed", report and report.error
        assert proc.wait(10) == 0  # the source QEMU quit after handing over
        new = vms.registry.load("plain")
        assert new.host == "dst" and qemu_running(new.instance.pid)
        assert len(beats_on(new.instance.paths.heartbeat)) >= 5  # its heartbeat continues
        assert echo_from_client(lab, guest_ip(5).split("/")[0]) >= 18  # and its network
        before = diskbeat(disk)
        # ... and it migrates again, back, derived from the destination's command line
        back = SyncMigration("plain", options=MigrationOptions(policy=parse_policy("precopy")),
                             registry=vms.registry, to_host="src").migrate()  # fmt: skip
        assert back.status == "completed" and vms.registry.load("plain").host == "src"
        assert diskbeat(disk) >= before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("case", ["snapshot", "local disk"])
def test_what_cannot_be_recreated_is_refused_before_anything_is_touched(
    lab: Lab, vms: VMFactory, shared: Path, case: str
) -> None:
    tmp = Path(vms.runtime) / "plain"
    tmp.mkdir()
    disk = (lab.local_dir("src") if case == "local disk" else shared) / "r.raw"
    disk.write_bytes(bytes(1 << 20))
    proc = _plain_qemu(tmp, lab, disk, ["-snapshot"] if case == "snapshot" else [])
    try:
        out = livemig("adopt", "plain", "--qmp", str(tmp / "qmp.sock"), runtime=vms.runtime)
        words = ("-snapshot", "local") if case == "snapshot" else ("r.raw", "on src's local storage")
        assert_one_line_error(out, 2, "cannot adopt", *words)
        assert not vms.registry.exists("plain") and qemu_running(proc.pid)  # untouched
        assert not list(vms.runtime.glob("qemu/*"))
    finally:
        proc.kill()
        proc.wait()
        disk.unlink()


def test_a_firmware_booted_vm_without_livemig_inside_migrates(lab: Lab, vms: VMFactory, shared: Path) -> None:
    # No kernel, no heartbeat: SeaBIOS finds no bootable disk and waits. livemig knows
    # nothing of the guest and still moves it: the report has no guest figures.
    disk = shared / "blank.raw"
    disk.write_bytes(bytes(1 << 20))
    spec = shared / "fw.toml"
    spec.write_text(f'''
name = "fw"
memory = "128M"
accel = "tcg"
extra_args = ["-rtc", "base=utc,clock=vm"]
[boot]
firmware = "bios"
[[disk]]
path = "{disk}"
[[nic]]
network = "bridge:lmbr0"
[serial]
heartbeat = false
''')
    vms.names.append("fw")
    start = livemig("vm", "start", "--spec", str(spec), "--host", "src", runtime=vms.runtime)
    assert start.returncode == 0, start.stderr
    rec = vms.registry.load("fw")
    argv = Path(f"/proc/{rec.instance.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-kernel" not in argv and b"base=utc,clock=vm" in argv  # extra_args, as one argv item
    assert not rec.instance.paths.heartbeat.exists()
    report = SyncMigration("fw", policy="postcopy-after:1", registry=vms.registry, to_host="dst").migrate()
    assert report.status == "completed", report.error
    assert report.guest == {"heartbeat": None} and report.network is None  # no address to probe
    moved = vms.registry.load("fw")
    assert moved.host == "dst" and qemu_running(moved.instance.pid) and not qemu_running(rec.instance.pid)
