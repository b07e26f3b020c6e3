"""Fault injection, as a bench mode (``livemig bench faults-inject``): each trial
migrates a memory-verifying guest across the lab with ``livemig migrate`` in its
own process, injects one fault at one phase (a cut link for N seconds, a flapping
link, a cut in the middle of a post-copy recovery, SIGKILL of the destination QEMU,
the source QEMU or livemig itself, a hung QEMU; or a cut that hits two migrations at
once), lets livemig deal with it, then checks: is the VM running, is its memory
intact, what is left behind once it is stopped, and how long recovery took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from livemig.control import stream
from livemig.errors import LivemigError, NotMigrating
from livemig.guest import parse_workload
from livemig.lab import Lab, Shaping
from livemig.lab.tripwire import Tripwire
from livemig.observe.heartbeat import HeartbeatReader
from livemig.qemu.instance import proc_start_ticks
from livemig.registry import Registry
from livemig.spec import VMSpec
from livemig.units import parse_rate
from livemig.vm import start_vm, stop_vm

__all__ = [
    "FAULTS",
    "FLAP",
    "HUNG_S",
    "LINK",
    "MEMORY_MIB",
    "RECUT_S",
    "WORKLOAD",
    "Fault",
    "run_faults",
    "run_trial",
    "wait_event",
]

log = logging.getLogger(__name__)

PHASES: Final = ("precopy", "switchover", "postcopy")
# the event that marks each phase, and how long after it the fault strikes
TRIGGER: Final[dict[str, tuple[str, float]]] = {
    "precopy": ("pass", 0.5),
    "switchover": ("postcopy-requested", 0.0),
    "postcopy": ("destination-resumed", 0.5),
}
WORKLOAD: Final = "verify:mib=96,rate=2"
MEMORY_MIB: Final = 192
LINK: Final = "100mbit"


@dataclass(frozen=True)
class Fault:
    """One cell of the matrix. Kinds: ``link`` (cut for ``outage_s``), ``flap`` (cuts
    of :data:`FLAP`), ``kill-dst`` / ``kill-src`` / ``kill-livemig`` (SIGKILL),
    ``kill-livemig-recovering`` (livemig killed while it recovers a cut link; the next
    command takes over), ``stop-src`` / ``stop-dst`` (the QEMU hung: SIGSTOP, SIGCONT
    after :data:`HUNG_S`), ``cut-recover-setup`` / ``cut-recover`` (once a first cut
    paused post-copy and the link is back, a second cut of :data:`RECUT_S` strikes
    when the resume's connection opens, or when it first carries data: the
    handshake), ``two-vms`` (two VMs migrate at once, one cut of ``outage_s`` hits
    both)."""

    kind: str
    phase: str
    outage_s: float = 0.0

    @property
    def id(self) -> str:
        what = {"link": "link-down", "two-vms": "two-vms-link-down"}.get(self.kind)
        return f"{what}-{self.outage_s:g}s/{self.phase}" if what else f"{self.kind}/{self.phase}"

    @property
    def names(self) -> tuple[str, ...]:
        """The VMs of one trial."""
        return ("fi", "fi2") if self.kind == "two-vms" else ("fi",)


FLAP: Final = ((3.0, 4.0), (5.0, 4.0), (2.0, 0.0))  # three cuts within 30 s: (down s, then up s)
HUNG_S: Final = 10.0
RECUT_S: Final = 5.0  # the cut in the middle of a recovery
FAULTS: Final = (
    [Fault("link", p, s) for s in (2.0, 5.0, 30.0) for p in PHASES]
    + [Fault(k, p) for k in ("kill-dst", "kill-src", "kill-livemig") for p in PHASES]
    + [Fault("flap", p) for p in PHASES]
    + [Fault("kill-livemig-recovering", "postcopy")]
    + [Fault(k, p) for k in ("stop-src", "stop-dst") for p in PHASES]
    + [Fault(k, "postcopy") for k in ("cut-recover-setup", "cut-recover")]
    + [Fault("two-vms", p, 5.0) for p in ("precopy", "postcopy")]
)
TAKES_OVER: Final = ("kill-livemig", "kill-livemig-recovering")  # a second command ends the migration


def _livemig(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "livemig", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip


async def _check_memory(path: Path, timeout: float = 60.0) -> bool | None:
    """Ask the guest to re-check its pattern; None if it does not answer."""
    reader = HeartbeatReader(path, "check")
    try:
        await reader.start()
        asked = time.time()
        await reader.send("check")
        verdict = await reader.wait_message("verify", asked, timeout)
    finally:
        await reader.stop()
    return None if verdict is None else verdict.startswith("verify ok")


async def _beating(path: Path, seconds: float = 1.0) -> bool:
    reader = HeartbeatReader(path, "probe")
    try:
        await reader.start()
        await asyncio.sleep(seconds)
        return len(reader.beats) > 20
    finally:
        await reader.stop()


def _wait_event(reg: Registry, name: str, event: str, deadline_s: float) -> bool:
    """Block until ``name``'s migration pushes ``event`` (through its control socket)."""
    return wait_event(reg.control_socket(name), name, event, deadline_s)


def wait_event(path: Path, name: str, event: str, deadline_s: float) -> bool:
    """Block until the migration served on control socket ``path`` pushes ``event`` (its
    history counts); False if it ends without it, or ``deadline_s`` passes. A socket that
    is not there yet, or whose migration has not started yet, is asked again."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            for msg in stream(path, name, "events", timeout=max(end - time.monotonic(), 0.01)):
                if msg.get("event", {}).get("name") == event:
                    return True
            return False
        except NotMigrating:  # no socket yet, or its migration not yet started
            time.sleep(0.02)
        except (LivemigError, OSError) as exc:
            log.info("%s: waiting for %s: %s", name, event, exc)
            return False
    return False


@dataclass
class _Strike:
    """One trial's fault, struck from a thread of its own: when it struck, when a cut
    link came back, what else it saw, and the error that ended it, if any."""

    fault: Fault
    lab: Lab
    reg: Registry
    procs: list[subprocess.Popen[str]]
    struck: float | None = None
    restored: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def run(self) -> None:
        try:
            event, delay = TRIGGER[self.fault.phase]
            if not all(_wait_event(self.reg, n, event, 120.0) for n in self.fault.names):
                self.notes["missed"] = f"no {event!r} event came: the fault did not strike"
                return
            time.sleep(delay)
            self.struck = time.time()
            STRIKES[self.fault.kind](self)
        except Exception as exc:  # noqa: BLE001 - the trial records it (strike_error)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.lab.set_link("dst", up=True)

    def cut(self, down_s: float, up_s: float = 0.0) -> None:
        self.lab.set_link("dst", up=False)
        time.sleep(down_s)
        self.lab.set_link("dst", up=True)
        self.restored.append(time.time())
        time.sleep(up_s)

    def flap(self) -> None:
        for down_s, up_s in FLAP:
            self.cut(down_s, up_s)

    def signal_qemu(self) -> None:
        rec = self.reg.load(self.fault.names[0])
        kind = self.fault.kind
        target = rec.instance if kind.endswith("src") else rec.migration.dst if rec.migration else None
        if target is None or not target.alive():  # its start time guards against a reused PID
            return
        if kind.startswith("stop"):
            _hang(target.pid, HUNG_S)
        else:
            os.kill(target.pid, signal.SIGKILL)

    def kill_livemig_recovering(self) -> None:
        self.lab.set_link("dst", up=False)
        try:
            _wait_event(self.reg, self.fault.names[0], "postcopy-paused", 60.0)
            time.sleep(1.0)  # the first resume is connecting over the cut link
        finally:
            self.procs[0].send_signal(signal.SIGKILL)
            time.sleep(2.0)
            self.lab.set_link("dst", up=True)
            self.restored.append(time.time())

    def cut_in_recovery(self) -> None:
        """A first cut pauses post-copy; once livemig has paused both sides, the link
        comes back with a tripwire on it: the resume's connection opening (or first
        carrying data) cuts the link again, for :data:`RECUT_S`."""
        self.lab.set_link("dst", up=False)
        paused = _wait_event(self.reg, self.fault.names[0], "postcopy-paused", 60.0)
        time.sleep(1.0)
        wire = Tripwire(self.lab, "dst", "syn" if self.fault.kind == "cut-recover-setup" else "data")
        if paused:
            wire.arm()
        self.lab.set_link("dst", up=True)
        self.restored.append(time.time())
        tripped = wire.wait(30.0) if paused else None
        self.notes["trip"] = tripped and {
            "after_restore_s": round(tripped - self.restored[0], 3),
            "frame": wire.frame,
        }
        if tripped:
            time.sleep(RECUT_S)
            self.lab.set_link("dst", up=True)
            self.restored.append(time.time())


STRIKES: Final[dict[str, Callable[[_Strike], None]]] = {
    "link": lambda s: s.cut(s.fault.outage_s),
    "two-vms": lambda s: s.cut(s.fault.outage_s),
    "flap": _Strike.flap,
    "kill-dst": _Strike.signal_qemu, "kill-src": _Strike.signal_qemu,
    "stop-dst": _Strike.signal_qemu, "stop-src": _Strike.signal_qemu,
    "kill-livemig": lambda s: s.procs[0].send_signal(signal.SIGKILL),
    "kill-livemig-recovering": _Strike.kill_livemig_recovering,
    "cut-recover-setup": _Strike.cut_in_recovery, "cut-recover": _Strike.cut_in_recovery,
}  # fmt: skip


def _hang(pid: int, seconds: float) -> None:
    """The QEMU hangs: SIGSTOP, then SIGCONT after ``seconds`` (always, even if interrupted)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _back_to_recovered(report: dict[str, Any] | None, restored: list[float]) -> float | None:
    """From a restore of the link to the first ``postcopy-recovered`` after it, before the
    next restore; the longest over the restores (s). A restore that no recovery followed
    before the next cut (a cut too short to pause post-copy) does not count."""
    if not report or not restored:
        return None
    recovered = sorted(
        e["delivered_ts"] for e in report.get("events", []) if e["name"] == "postcopy-recovered"
    )
    spans = []
    for back, then in zip(restored, [*restored[1:], float("inf")], strict=True):
        after = [t for t in recovered if back <= t < then]
        if after:
            spans.append(after[0] - back)
    return round(max(spans), 2) if spans else None


def _save_logs(reg: Registry, dest: Path) -> None:
    """QEMU logs and consoles, and the VM record, of a trial that did not complete."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in [*reg.root.glob("qemu/*/*.log"), *reg.vms.glob("*.json")]:
        with contextlib.suppress(OSError):
            shutil.copy(f, dest / f"{f.parent.name}-{f.name}")


def _outcome(
    reg: Registry, name: str, stdout: str, stderr: str, strike: _Strike, done: float
) -> dict[str, Any]:
    """One VM's end: its migration's report, where it runs, its memory."""
    out: dict[str, Any] = {"vm": name}
    report = json.loads(stdout) if stdout.strip().startswith("{") else None
    out["status"] = report["status"] if report else "no report"
    out["error"] = (report or {}).get("error") or (stderr.strip().splitlines() or [""])[-1]
    out["where"] = (report or {}).get("where")
    if out["status"] != "completed":
        out["stderr_tail"] = stderr.strip().splitlines()[-20:]
    recovery = (report or {}).get("recovery") or {}
    out["recovered"] = recovery.get("recovered", 0)
    if recovery:
        out["recovery"] = recovery  # outages, livemig's pauses, attempts, the last recovery's time
    out["link_back_to_recovered_s"] = _back_to_recovered(report, strike.restored)
    if strike.notes.get("trip") and report:  # did a recovery finish before the second cut?
        first_back, trip = strike.restored[0], strike.restored[0] + strike.notes["trip"]["after_restore_s"]
        out["recovered_before_trip"] = any(e["name"] == "postcopy-recovered" and first_back <= e["delivered_ts"] <= trip
                                           for e in report.get("events", []))  # fmt: skip
    completed = strike.struck and report and report["status"] == "completed"
    out["recover_s"] = round(done - strike.struck, 2) if completed and strike.struck else None
    rec = reg.load(name)
    running = rec.instance.alive() and asyncio.run(_beating(rec.instance.paths.heartbeat))
    out["vm_running"] = running
    out["on"] = rec.host
    verify = (report or {}).get("guest", {}).get("verify")
    if verify is not None:
        out["memory_intact"] = verify.startswith("verify ok")
    elif running:
        out["memory_intact"] = asyncio.run(_check_memory(rec.instance.paths.heartbeat))
    else:
        out["memory_intact"] = None
    return out


def _merged(vms: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's outcome over its VMs: completed if all did, running if all do, memory
    intact if all are (mismatched if any is), the slowest recovery; each VM under ``vms``."""
    if len(vms) == 1:
        return {k: v for k, v in vms[0].items() if k != "vm"}
    mem = [v["memory_intact"] for v in vms]
    slowest = [v["recover_s"] for v in vms]
    back = [v["link_back_to_recovered_s"] for v in vms]
    return {
        "status": next((v["status"] for v in vms if v["status"] != "completed"), "completed"),
        "error": "; ".join(sorted({v["error"] for v in vms if v["error"]})),
        "where": [v["where"] for v in vms],
        "recovered": min(v["recovered"] for v in vms),
        "link_back_to_recovered_s": None if None in back else max(back),
        "recover_s": None if None in slowest else max(slowest),
        "vm_running": all(v["vm_running"] for v in vms),
        "on": "/".join(sorted({str(v["on"]) for v in vms})),
        "memory_intact": False if False in mem else True if all(m is True for m in mem) else None,
        "vms": vms,
    }


def run_trial(fault: Fault, trial: int, lab: Lab, reg: Registry, logs: Path | None = None) -> dict[str, Any]:
    for name in fault.names:
        start_vm(VMSpec(name, memory_mib=MEMORY_MIB, workload=parse_workload(WORKLOAD)), reg, host="src")
    out: dict[str, Any] = {"fault": fault.id, **asdict(fault), "trial": trial}
    try:
        time.sleep(1.0)
        policy = "postcopy-after:1" if fault.phase != "postcopy" else "postcopy-now"
        procs = [
            _livemig("migrate", n, "--to", "dst", "--policy", policy, "--json", "--quiet")
            for n in fault.names
        ]
        strike = _Strike(fault, lab, reg, procs)
        t = threading.Thread(target=strike.run, name="strike")
        t.start()
        ends = [p.communicate(timeout=300) for p in procs]
        t.join(timeout=120)
        if fault.kind in TAKES_OVER and strike.struck is not None:  # the next command takes it over
            ends = [_livemig("migrate", n, "--json", "--quiet").communicate(timeout=300) for n in fault.names]
        done = time.time()
        out["struck"] = strike.struck is not None
        out.update(
            _merged([_outcome(reg, n, *end, strike, done) for n, end in zip(fault.names, ends, strict=True)])
        )
        out.update(strike.notes)
        if strike.error or t.is_alive():
            out["strike_error"] = (
                strike.error or "the fault was still striking 120 s after the migration ended"
            )
    finally:
        if logs is not None and out.get("status") != "completed":
            _save_logs(reg, logs / f"{fault.id.replace('/', '_')}-{trial}")
        for name in fault.names:
            with contextlib.suppress(LivemigError):
                stop_vm(name, reg)
        lab.set_link("dst", up=True)
    out["leftovers"] = _leftovers(reg)
    return out


def _wrote(pid: int, pidfile: Path) -> bool:
    """Whether ``pid`` is the QEMU that wrote ``pidfile``: a QEMU, started no later than
    the file was written (a reused PID belongs to a process started afterwards)."""
    try:
        if not Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("qemu-system-"):
            return False
        ticks = proc_start_ticks(pid)
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))  # fmt: skip
    except (OSError, StopIteration, ValueError):
        return False
    if ticks is None:
        return False
    started = btime + ticks / os.sysconf("SC_CLK_TCK")
    return started <= pidfile.stat().st_mtime + 1.0


def _leftovers(reg: Registry) -> list[str]:
    left = []
    for pidfile in reg.root.glob("qemu/*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            if _wrote(pid, pidfile):
                left.append(f"qemu pid {pid}")
                os.kill(pid, signal.SIGKILL)
    left += [f"record {p.name}" for p in reg.vms.glob("*.json")]
    left += [f"socket {p.name}" for p in reg.vms.glob("*.ctl")]
    return left


def run_faults(
    faults: list[Fault], trials: int, out_dir: Path, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    reg = Registry()
    lab = Lab.current(reg.root)
    created = lab is None
    if lab is None:
        lab = Lab.up(2, Shaping(parse_rate(LINK)), reg.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for k in range(1, trials + 1):
            for f in faults:
                say(f"{f.id} trial {k} ...")
                r = run_trial(f, k, lab, reg, logs=out_dir / "logs")
                say(f"      {r['status']}; running {r['vm_running']} on {r['on']}; memory intact "
                    f"{r['memory_intact']}; leftovers {len(r['leftovers'])}; {r['error'] or ''}")  # fmt: skip
                results.append(r)
                (out_dir / "trials.json").write_text(json.dumps(results, indent=1))
    finally:
        if created:
            lab.down()
    return results
