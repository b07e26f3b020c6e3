"""Fault injection, as a bench mode (``livemig bench faults-inject``): each trial
migrates a memory-verifying guest across the lab with ``livemig migrate`` in its
own process, injects one fault at one phase (a cut link for N seconds, or SIGKILL
of the destination QEMU, the source QEMU or livemig itself), lets livemig deal
with it, then checks: is the VM running, is its memory intact, what is left
behind once it is stopped, and how long recovery took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from livemig.control import stream
from livemig.errors import LivemigError
from livemig.guest import parse_workload
from livemig.lab import Lab, Shaping
from livemig.observe.heartbeat import HeartbeatReader
from livemig.qemu.instance import proc_start_ticks
from livemig.registry import Registry
from livemig.spec import VMSpec
from livemig.units import parse_rate
from livemig.vm import start_vm, stop_vm

__all__ = ["FAULTS", "Fault", "run_faults", "run_trial", "write_reliability"]

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
    after :data:`HUNG_S`)."""

    kind: str
    phase: str
    outage_s: float = 0.0

    @property
    def id(self) -> str:
        what = f"link-down-{self.outage_s:g}s" if self.kind == "link" else self.kind
        return f"{what}/{self.phase}"


FLAP: Final = ((3.0, 4.0), (5.0, 4.0), (2.0, 0.0))  # three cuts within 30 s: (down s, then up s)
HUNG_S: Final = 10.0
FAULTS: Final = (
    [Fault("link", p, s) for s in (2.0, 5.0, 30.0) for p in PHASES]
    + [Fault(k, p) for k in ("kill-dst", "kill-src", "kill-livemig") for p in PHASES]
    + [Fault("flap", p) for p in PHASES]
    + [Fault("kill-livemig-recovering", "postcopy")]
    + [Fault(k, p) for k in ("stop-src", "stop-dst") for p in PHASES]
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
    path = reg.control_socket(name)
    end = time.monotonic() + deadline_s
    while not path.exists() and time.monotonic() < end:
        time.sleep(0.02)
    with contextlib.suppress(LivemigError, OSError):
        for msg in stream(path, name, "events", timeout=deadline_s):
            if msg.get("event", {}).get("name") == event:
                return True
    return False


def _inject(
    fault: Fault, lab: Lab, reg: Registry, name: str, proc: subprocess.Popen[str], restored: list[float]
) -> float | None:
    """Wait for the phase, strike; returns when it struck (time.time()), None if the phase
    never came. A cut link's restore time goes to ``restored``."""
    event, delay = TRIGGER[fault.phase]
    if not _wait_event(reg, name, event, 120.0):
        return None
    time.sleep(delay)
    struck = time.time()
    rec = reg.load(name)
    if fault.kind in ("link", "flap"):
        for down_s, up_s in ((fault.outage_s, 0.0),) if fault.kind == "link" else FLAP:
            lab.set_link("dst", up=False)
            time.sleep(down_s)
            lab.set_link("dst", up=True)
            restored.append(time.time())
            time.sleep(up_s)
    elif fault.kind in ("kill-dst", "kill-src", "stop-dst", "stop-src"):
        target = rec.instance if fault.kind.endswith("src") else rec.migration.dst if rec.migration else None
        if target is None or not target.alive():  # its start time guards against a reused PID
            pass
        elif fault.kind.startswith("stop"):
            _hang(target.pid, HUNG_S)
        else:
            os.kill(target.pid, signal.SIGKILL)
    elif fault.kind == "kill-livemig":
        proc.send_signal(signal.SIGKILL)
    elif fault.kind == "kill-livemig-recovering":
        lab.set_link("dst", up=False)
        try:
            _wait_event(reg, name, "postcopy-paused", 60.0)
            time.sleep(1.0)  # the first resume is connecting over the cut link
        finally:
            proc.send_signal(signal.SIGKILL)
            time.sleep(2.0)
            lab.set_link("dst", up=True)
            restored.append(time.time())
    return struck


def _hang(pid: int, seconds: float) -> None:
    """The QEMU hangs: SIGSTOP, then SIGCONT after ``seconds`` (always, even if interrupted)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _back_to_recovered(report: dict[str, Any] | None, restored: list[float]) -> float | None:
    """From the link's restore to the first ``postcopy-recovered`` after it (s)."""
    if not report or not restored:
        return None
    after = [e["delivered_ts"] for e in report.get("events", [])
             if e["name"] == "postcopy-recovered" and e["delivered_ts"] >= restored[0]]  # fmt: skip
    return round(min(after) - restored[0], 2) if after else None


def _save_logs(reg: Registry, dest: Path) -> None:
    """QEMU logs and consoles, and the VM record, of a trial that did not complete."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in [*reg.root.glob("qemu/*/*.log"), *reg.vms.glob("*.json")]:
        with contextlib.suppress(OSError):
            shutil.copy(f, dest / f"{f.parent.name}-{f.name}")


def run_trial(
    fault: Fault, trial: int, lab: Lab, reg: Registry, name: str = "fi", logs: Path | None = None
) -> dict[str, Any]:
    spec = VMSpec(name, memory_mib=MEMORY_MIB, workload=parse_workload(WORKLOAD))
    start_vm(spec, reg, host="src")
    out: dict[str, Any] = {"fault": fault.id, **asdict(fault), "trial": trial}
    try:
        time.sleep(1.0)
        policy = "postcopy-after:1" if fault.phase != "postcopy" else "postcopy-now"
        proc = _livemig("migrate", name, "--to", "dst", "--policy", policy, "--json", "--quiet")
        struck: list[float | None] = [None]
        restored: list[float] = []
        t = threading.Thread(
            target=lambda: struck.__setitem__(0, _inject(fault, lab, reg, name, proc, restored))
        )
        t.start()
        stdout, stderr = proc.communicate(timeout=300)
        t.join(timeout=120)
        if fault.kind in TAKES_OVER and struck[0] is not None:
            proc = _livemig("migrate", name, "--json", "--quiet")  # the next command takes it over
            stdout, stderr = proc.communicate(timeout=300)
        done = time.time()
        out["struck"] = struck[0] is not None
        report = json.loads(stdout) if stdout.strip().startswith("{") else None
        out["status"] = report["status"] if report else "no report"
        out["error"] = (report or {}).get("error") or (stderr.strip().splitlines() or [""])[-1]
        out["where"] = (report or {}).get("where")
        if out["status"] != "completed":
            out["stderr_tail"] = stderr.strip().splitlines()[-20:]
        recovery = (report or {}).get("recovery") or {}
        out["recovered"] = recovery.get("recovered", 0)
        out["link_back_to_recovered_s"] = _back_to_recovered(report, restored)
        out["recover_s"] = (
            round(done - struck[0], 2) if struck[0] and report and report["status"] == "completed" else None
        )
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
    finally:
        if logs is not None and out.get("status") != "completed":
            _save_logs(reg, logs / f"{fault.id.replace('/', '_')}-{trial}")
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


WHY_UNRECOVERABLE: Final[dict[str, str]] = {
    "kill-src/postcopy": "after the switch the source holds the pages not yet sent; when it dies they are gone",
    "kill-dst/postcopy": "after the switch the destination runs the vCPUs and holds every page it dirtied; "
    "when it dies the VM's current state is gone and the source's copy is stale",
    "kill-src/precopy": "before the switch the source is the VM: killing it kills the VM (as on any host)",
    "kill-src/switchover": "at `postcopy-requested` the switch has not happened yet (or is under way): the "
    "source is still the VM, or holds the pages not yet sent",
}


def _median_max(values: list[float | None]) -> str:
    vs = sorted(v for v in values if v is not None)
    return f"{vs[len(vs) // 2]:.1f} s ({vs[-1]:.1f} s)" if vs else "-"


def write_reliability(trials: list[dict[str, Any]], path: Path, command: str = "") -> Path:
    cells: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        cells.setdefault(t["fault"], []).append(t)
    lines = ["# livemig reliability: fault injection", ""]
    if command:
        lines += ["Produced by:", "", "```sh", command, "```", ""]
    lines += [
        f"Guest: `{WORKLOAD}` in {MEMORY_MIB} MiB (it re-checks its memory after each run), migrated "
        f"from lab host src to dst over a {LINK} tbf link by `livemig migrate` in its own process. "
        "Faults strike at a phase marked by a pushed event: pre-copy 0.5 s after the first pass "
        "begins, switch-over at `postcopy-requested`, post-copy 0.5 s after the destination resumed. "
        "A cut link is the destination's port on the lab switch going down (no RST, no FIN).",
        "",
        "| fault / phase | trials | completed | VM running at end | memory intact | leftovers | "
        "recovered (post-copy) | strike to completion, median (max) | link back to recovered, median (max) "
        "| outcome |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cid, ts in cells.items():
        n = len(ts)
        done = sum(t["status"] == "completed" for t in ts)
        running = sum(bool(t["vm_running"]) for t in ts)
        intact = sum(t["memory_intact"] is True for t in ts)
        bad_mem = sum(t["memory_intact"] is False for t in ts)
        left = sum(len(t["leftovers"]) for t in ts)
        rec = sum(t.get("recovered", 0) > 0 for t in ts)
        rtime = _median_max([t.get("recover_s") for t in ts])
        back = _median_max([t.get("link_back_to_recovered_s") for t in ts])
        outcome = "; ".join(sorted({str(t.get("on") or "-") + ": " + str(t["status"]) for t in ts}))
        mem = f"{intact}/{n}" + (f" (**{bad_mem} mismatches**)" if bad_mem else "")
        lines.append(
            f"| {cid} | {n} | {done} | {running}/{n} | {mem} | {left} | {rec} | {rtime} | {back} | {outcome} |"
        )
    lines += ["", "## Unrecoverable cases, and why", ""]
    for cid, why in WHY_UNRECOVERABLE.items():
        lines.append(f"- **{cid}**: {why}.")
    lines += ["", "Memory intact counts runs where the guest answered its memory check with a match; "
              "a VM that is gone cannot answer and counts as neither.", ""]  # fmt: skip
    path.write_text("\n".join(lines))
    return path
