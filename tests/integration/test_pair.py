"""Orchestrator mode: a QEMU pair that the test starts itself, as another program would
(a tap passed as a file descriptor, a `-chardev socket` heartbeat: options that `adopt`
refuses), migrated by `livemig migrate --src-qmp/--dst-qmp --uri`. livemig must start
and kill no QEMU; the test owns both and ends them by PID."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from livemig.guest import parse_workload
from livemig.lab import Lab, Shaping
from livemig.qemu.binary import find_qemu
from livemig.qemu.monitor import Monitor
from livemig.spec import VMSpec
from livemig.vm import fill_image

from ..unit.test_report_doc import assert_documented
from .conftest import NONCONVERGING, qemu_running, wait_control
from .test_cli import assert_one_line_error, livemig
from .test_migration import beats_on

pytestmark = pytest.mark.integration

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def open_tap(name: str) -> int:
    """A tap device held by an fd (it goes away when the fd closes), as an orchestrator
    would hand to QEMU with `-netdev tap,fd=N`."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


@dataclass
class Qemu:
    """A QEMU this test started: its PID and sockets."""

    proc: subprocess.Popen[bytes]
    qmp: Path
    heartbeat: Path
    console: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b"livemig-guest: ready" not in (self.console.read_bytes() if self.console.exists() else b""):
            assert self.proc.poll() is None, "QEMU exited while the guest booted"
            assert time.monotonic() < deadline, "the guest did not boot"
            time.sleep(0.05)

    def qmp_query(self, command: str) -> dict[str, object]:
        async def ask() -> dict[str, object]:
            mon = Monitor("test", "t", self.qmp)
            await mon.connect(timeout=5)
            try:
                result: dict[str, object] = await mon.execute(command)
                return result
            finally:
                await mon.close()

        return asyncio.run(ask())


@dataclass
class PairFactory:
    root: Path
    started: list[Qemu] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def start(self, side: str, workload: str, incoming: bool, netns: str | None = None) -> Qemu:
        spec = fill_image(VMSpec("pairvm", memory_mib=256, workload=parse_workload(workload), accel="tcg"))
        d = self.root / side
        d.mkdir()
        q = Qemu(None, d / "qmp.sock", d / "hb.sock", d / "console.log")  # type: ignore[arg-type]
        tap = open_tap(f"lmtp{os.getpid() % 10000}{side[0]}")
        self.fds.append(tap)
        argv = [
            str(find_qemu().path), "-name", "pairvm", "-nodefaults", "-display", "none",
            "-machine", spec.machine, "-accel", "tcg", "-m", "256",
            "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.kernel_cmdline,
            "-netdev", f"tap,id=n0,fd={tap}", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:01",
            "-serial", f"file:{q.console}",
            "-chardev", f"socket,id=hb,path={q.heartbeat},server=on,wait=off", "-serial", "chardev:hb",
            "-qmp", f"unix:{q.qmp},server=on,wait=off", "-no-reboot",
        ]  # fmt: skip
        if incoming:
            argv += ["-incoming", "defer"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        with (d / "qemu.log").open("wb") as log:
            q.proc = subprocess.Popen(argv, pass_fds=(tap,), stdout=log, stderr=log)
        self.started.append(q)
        deadline = time.monotonic() + 10
        while not q.qmp.exists():
            assert q.proc.poll() is None, (d / "qemu.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return q

    def pair(self, workload: str = "idle", lab: Lab | None = None) -> tuple[Qemu, Qemu]:
        src = self.start("src", workload, False, lab.host("src").netns if lab else None)
        dst = self.start("dst", workload, True, lab.host("dst").netns if lab else None)
        src.wait_ready()
        return src, dst


@pytest.fixture
def pairs(runtime: Path) -> Iterator[PairFactory]:
    root = Path(tempfile.mkdtemp(prefix="lmp", dir="/tmp"))
    factory = PairFactory(root)
    yield factory
    for q in factory.started:  # the test owns them: livemig must not have ended either
        if q.proc.poll() is None:
            q.proc.send_signal(signal.SIGKILL)
        q.proc.wait(10)
    for fd in factory.fds:
        os.close(fd)
    shutil.rmtree(root)


def pair_args(src: Qemu, dst: Qemu, uri: str, *more: str) -> list[str]:
    return ["migrate", "--src-qmp", str(src.qmp), "--dst-qmp", str(dst.qmp), "--uri", uri,
            "--src-heartbeat", str(src.heartbeat), "--dst-heartbeat", str(dst.heartbeat), "--json", "-q", *more]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_moved(src: Qemu, dst: Qemu, report: dict[str, object], seq_before: int, runtime: Path) -> None:
    assert report["status"] == "completed", report
    assert src.proc.poll() is None and dst.proc.poll() is None, "livemig ended a QEMU it does not own"
    assert src.qmp_query("query-status")["status"] == "postmigrate"
    assert dst.qmp_query("query-status")["status"] == "running"
    seqs = beats_on(dst.heartbeat)
    assert len(seqs) > 50, "the guest's heartbeat did not continue on the destination"
    assert min(seqs) > seq_before
    assert not list(runtime.glob("qemu/*")), "livemig started a QEMU"
    guest = report["guest"]
    assert isinstance(guest, dict) and guest["heartbeats"] > 0
    assert_documented(report)


@pytest.mark.parametrize(
    ("policy", "workload", "switched"),
    [("precopy", "idle", None), ("postcopy-after:1", NONCONVERGING, 1)],
)
def test_pair_started_elsewhere_migrates(
    pairs: PairFactory, runtime: Path, policy: str, workload: str, switched: int | None
) -> None:
    src, dst = pairs.pair(workload)
    seq_before = max(beats_on(src.heartbeat, 0.5))
    uri = f"tcp:127.0.0.1:{free_port()}"
    proc = livemig(*pair_args(src, dst, uri, "--policy", policy, "--bandwidth", "100000000"), runtime=runtime)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["vm"] == "pairvm"  # the source's -name
    assert report["switched_at_pass"] == switched
    assert_moved(src, dst, report, seq_before, runtime)
    # what QEMU itself says was negotiated, not livemig's echo
    caps = {c["capability"]: c["state"] for c in dst.qmp_query("query-migrate-capabilities")}  # type: ignore[union-attr, index, attr-defined]
    assert caps["postcopy-ram"] is (policy != "precopy")


def test_pair_manual_switch_from_another_process(pairs: PairFactory, runtime: Path) -> None:
    src, dst = pairs.pair(NONCONVERGING)
    seq_before = max(beats_on(src.heartbeat, 0.5))
    uri = f"tcp:127.0.0.1:{free_port()}"
    args = pair_args(src, dst, uri, "--policy", "manual", "--bandwidth", "100000000", "--name", "orch1")
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(runtime)}
    mig = subprocess.Popen(
        [sys.executable, "-m", "livemig", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_control(runtime, "orch1", mig)
        time.sleep(1.0)
        events = subprocess.Popen(
            [sys.executable, "-m", "livemig", "events", "orch1"], env=env, stdout=subprocess.PIPE, text=True
        )
        switch = livemig("postcopy", "orch1", runtime=runtime)
        assert switch.returncode == 0, switch.stderr
        assert "postcopy" in switch.stdout
        out, err = mig.communicate(timeout=120)
        ev_out, _ = events.communicate(timeout=30)
    finally:
        if mig.poll() is None:
            mig.kill()
    assert mig.returncode == 0, err
    report = json.loads(out)
    assert report["vm"] == "orch1"
    reason = report["switch_reason"]
    assert isinstance(reason, str) and reason.startswith("livemig postcopy (pid")
    names = [json.loads(line).get("name") for line in ev_out.splitlines()]
    assert names.index("postcopy-requested") < names.index("postcopy-started") < names.index("completed")
    assert_moved(src, dst, report, seq_before, runtime)
    assert not (runtime / "vms" / "orch1.ctl").exists()


def test_pair_bad_input_is_refused_and_changes_nothing(
    pairs: PairFactory, runtime: Path, tmp_path: Path
) -> None:
    src, dst = pairs.pair("idle")
    uri = f"tcp:127.0.0.1:{free_port()}"
    not_qmp = tmp_path / "plain.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(not_qmp))
    listener.listen()
    conns: list[socket.socket] = []

    def greet_wrongly() -> None:
        conn, _ = listener.accept()
        conns.append(conn)
        conn.sendall(b"hello\n")

    threading.Thread(target=greet_wrongly, daemon=True).start()
    try:
        cases = [
            (["--src-qmp", str(not_qmp), "--dst-qmp", str(dst.qmp), "--uri", uri], ["no QMP greeting"]),
            (["--src-qmp", str(src.qmp), "--dst-qmp", str(src.qmp), "--uri", uri], ["same socket"]),
            (["--src-qmp", str(dst.qmp), "--dst-qmp", str(src.qmp), "--uri", uri], ["not waiting for an incoming"]),
            (["--src-qmp", str(src.qmp), "--dst-qmp", str(dst.qmp), "--uri", "tcp:127.0.0.1"], ["tcp:HOST:PORT"]),
            (["--src-qmp", str(src.qmp), "--dst-qmp", str(dst.qmp), "--uri", "tcp:192.0.2.254:4444"],
             ["cannot listen"]),
            (["--src-qmp", str(src.qmp), "--dst-qmp", str(dst.qmp)], ["needs all of"]),
        ]  # fmt: skip
        for args, words in cases:
            proc = livemig("migrate", *args, "-q", runtime=runtime)
            assert_one_line_error(proc, 2, *words)
            assert src.proc.poll() is None and dst.proc.poll() is None
            assert src.qmp_query("query-status")["status"] == "running"
            assert dst.qmp_query("query-status")["status"] == "inmigrate"
            assert src.qmp_query("query-migrate").get("status") in (None, "none")
            assert dst.qmp_query("query-migrate").get("status") in (None, "none"), args
            assert not (runtime / "vms").exists() or not list((runtime / "vms").glob("*"))
    finally:
        listener.close()
        for c in conns:
            c.close()
    # after every refusal the pair is as it was: it still migrates
    good = livemig("migrate", *pair_args(src, dst, uri, "--policy", "precopy"), runtime=runtime)
    assert good.returncode == 0, good.stderr


@pytest.mark.lab
def test_pair_link_cut_in_postcopy_recovers(lab_env: Path, pairs: PairFactory) -> None:
    lab = Lab.up(2, Shaping(12_500_000), lab_env)
    src, dst = pairs.pair("dirty:mib=96,pattern=seq", lab)
    seq_before = max(beats_on(src.heartbeat, 0.5))
    uri = f"tcp:{lab.host('dst').address}:{free_port()}"
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(lab_env)}
    args = pair_args(src, dst, uri, "--policy", "postcopy-now", "--stall-timeout", "1.5", "--name", "cut1")
    mig = subprocess.Popen(
        [sys.executable, "-m", "livemig", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_control(lab_env, "cut1", mig)
    events = subprocess.Popen(
        [sys.executable, "-m", "livemig", "events", "cut1"], env=env, stdout=subprocess.PIPE, text=True
    )
    cut: dict[str, float] = {}
    try:
        for line in iter(events.stdout.readline, ""):  # type: ignore[union-attr]
            if json.loads(line).get("name") == "destination-resumed":
                time.sleep(0.5)
                cut["down"] = time.time()
                lab.set_link("dst", up=False)
                time.sleep(4.0)
                lab.set_link("dst", up=True)
                cut["up"] = time.time()
                break
        out, err = mig.communicate(timeout=180)
        events.communicate(timeout=30)
    finally:
        for p in (mig, events):
            if p.poll() is None:
                p.kill()
                p.wait()
        lab.set_link("dst", up=True)
    assert mig.returncode == 0, err
    report = json.loads(out)
    assert cut, "the cut never happened"
    completed = next(e for e in report["events"] if e["name"] == "completed")
    assert cut["down"] < completed["qemu_ts"], "the migration completed before the cut"
    assert report["recovery"] and report["recovery"]["recovered"] >= 1, report["recovery"]
    assert_moved(src, dst, report, seq_before, lab_env)
    with contextlib.suppress(ProcessLookupError):
        assert qemu_running(src.proc.pid)
