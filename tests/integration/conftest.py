"""Real QEMU fixtures: a private runtime directory per test and a VM factory that
tears every VM down, fails the test if any QEMU is left behind, and saves the
QEMU logs and consoles of a failed test under test-artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from livemig.guest import build_image, parse_workload
from livemig.registry import Registry, VMRecord
from livemig.spec import VMSpec
from livemig.vm import start_vm, stop_vm

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# A link slower than the guest dirties memory: QEMU's max-bandwidth stands in for it here.
BANDWIDTH = 100_000_000
NONCONVERGING = "dirty:mib=96,pattern=seq"


@pytest.fixture(scope="session", autouse=True)
def guest_image() -> None:
    build_image()


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Short path: UNIX socket paths must stay under 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="lm", dir="/tmp"))
    monkeypatch.setenv("LIVEMIG_RUNTIME_DIR", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def qemu_running(pid: int) -> bool:
    """A live (not zombie) QEMU at ``pid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return "(qemu-system" in stat and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def live_qemu_pids(root: Path) -> list[int]:
    pids = []
    for pidfile in root.glob("qemu/*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if qemu_running(pid):
                pids.append(pid)
    return pids


LAB_PREFIX = "lmt-"  # the tests' own namespaces, apart from a user's lab (lm-)


def lab_namespaces() -> list[str]:
    from pyroute2 import netns

    return [n for n in netns.listnetns() if n.startswith(LAB_PREFIX)]


@pytest.fixture
def lab_env(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime directory whose lab uses the tests' prefix; whatever lab is up at the end
    is taken down, and the test fails if any of its namespaces is left behind."""
    from livemig.lab import Lab

    if os.geteuid() != 0:
        # A lab test that quietly skips proves nothing: without root it fails, unless the
        # person running the suite opted out of the lab on purpose.
        if os.environ.get("LIVEMIG_SKIP_LAB") == "1":
            pytest.skip("LIVEMIG_SKIP_LAB=1: lab tests skipped on request")
        pytest.fail("the lab needs root (network namespaces); run as root, or set LIVEMIG_SKIP_LAB=1")
    monkeypatch.setenv("LIVEMIG_LAB_PREFIX", LAB_PREFIX)
    assert not lab_namespaces(), f"namespaces left by an earlier run: {lab_namespaces()}"
    yield runtime
    lab = Lab.current(runtime)
    if lab is not None:
        lab.down()
    assert not lab_namespaces(), f"lab namespaces left behind: {lab_namespaces()}"


@dataclass
class VMFactory:
    runtime: Path
    registry: Registry
    names: list[str] = field(default_factory=list)

    def start(
        self, name: str = "vm", workload: str = "idle", memory: int = 256, host: str | None = None
    ) -> VMRecord:
        spec = VMSpec(name, memory_mib=memory, workload=parse_workload(workload), accel="tcg")
        self.names.append(name)
        return start_vm(spec, self.registry, host=host)

    def record(self, name: str = "vm") -> VMRecord:
        return self.registry.load(name)


@pytest.fixture
def vms(runtime: Path, request: pytest.FixtureRequest) -> Iterator[VMFactory]:
    factory = VMFactory(runtime, Registry(runtime))
    yield factory
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dest = ARTIFACTS / request.node.name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        for f in list(runtime.glob("qemu/*/*.log")) + list(runtime.glob("vms/*.json")):
            with contextlib.suppress(OSError):
                shutil.copy(f, dest / f"{f.parent.name}-{f.name}")
    for name in factory.names:
        with contextlib.suppress(Exception):
            stop_vm(name, factory.registry)
    leftovers = live_qemu_pids(runtime)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1 if leftovers else 0)
    assert not leftovers, f"QEMU processes left behind: {leftovers}"


def qmp_query(path: Path, command: str) -> Any:
    """Ask a QEMU directly (its auxiliary monitor), not through livemig's report."""
    from livemig.qemu.monitor import Monitor

    async def ask() -> Any:
        mon = Monitor("test", "aux", path)
        await mon.connect(timeout=5)
        try:
            return await mon.execute(command)
        finally:
            await mon.close()

    return asyncio.run(ask())


def wait_control(runtime: Path, name: str, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """Wait until ``name``'s migration (run by ``proc``) serves its control socket."""
    ctl = runtime / "vms" / f"{name}.ctl"
    deadline = time.monotonic() + timeout
    while not ctl.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the migration ended"
        assert time.monotonic() < deadline, "the migration's control socket never appeared"
        time.sleep(0.05)
