"""The fault matrix's table (``docs/reliability.md``): per cell, how many trials completed,
left the VM running with its memory intact, left something behind, recovered, and how
long that took; and runs made in parts merged into one matrix. Pure, apart from reading
and writing the files named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from livemig.bench.faults import FLAP, HUNG_S, LINK, MEMORY_MIB, RECUT_S, WORKLOAD
from livemig.errors import UsageError

__all__ = ["WHY_UNRECOVERABLE", "merge_trials", "write_reliability"]


def merge_trials(folders: list[Path]) -> list[dict[str, Any]]:
    """The trials of several runs (each folder's ``trials.json``), in the order given,
    renumbered per cell (1, 2, ...): a matrix run in parts, then reported as one."""
    merged: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for folder in folders:
        path = folder / "trials.json"
        try:
            trials = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a faults-inject result ({exc})") from exc
        if not isinstance(trials, list) or not all(isinstance(t, dict) and "fault" in t for t in trials):
            raise UsageError(f"{path}: not a faults-inject result (expected a list of trials)")
        for t in trials:
            seen[t["fault"]] = seen.get(t["fault"], 0) + 1
            merged.append({**t, "trial": seen[t["fault"]], "part": folder.name})
    return merged


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
    missed = [t for t in trials if t.get("struck") is False]  # the fault never struck: not a trial of it
    for t in trials:
        if t.get("struck") is not False:
            cells.setdefault(t["fault"], []).append(t)
    lines = ["# livemig reliability: fault injection", ""]
    if command:
        lines += ["Produced by:", "", "```sh", command, "```", ""]
    lines += [
        f"Guest: `{WORKLOAD}` in {MEMORY_MIB} MiB (it re-checks its memory after each run), migrated "
        f"from lab host src to dst over a {LINK} tbf link by `livemig migrate` in its own process. "
        "Faults strike at a phase marked by a pushed event: pre-copy 0.5 s after the first pass "
        "begins, switch-over at `postcopy-requested`, post-copy 0.5 s after the destination resumed. "
        "A cut link is the destination's port on the lab switch going down (no RST, no FIN). "
        f"A flapping link is three cuts, of {', '.join(f'{d:g}' for d, _ in FLAP)} s, each "
        f"{' then '.join(f'{u:g} s' for _, u in FLAP[:-1])} after the one before came back; a hung QEMU is "
        f"SIGSTOPped for {HUNG_S:g} s. "
        f"A cut inside a recovery: a first cut pauses post-copy; when the link is back, a second cut of "
        f"{RECUT_S:g} s strikes as the resume's connection opens (`cut-recover-setup`, its SYN) or first "
        "carries data (`cut-recover`, the handshake), tripped by a packet socket on the switch's port. "
        "Two VMs: both migrate at once over the same link, and one cut hits both; a trial counts as "
        "completed, running or intact only if both are.",
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
    if missed:
        lines += ["", f"Not counted: {len(missed)} run(s) in which the fault never struck ("
                  + ", ".join(f"{t['fault']} #{t['trial']}" for t in missed) + ")."]  # fmt: skip
    lines += ["", "## Unrecoverable cases, and why", ""]
    for cid, why in WHY_UNRECOVERABLE.items():
        lines.append(f"- **{cid}**: {why}.")
    lines += ["", "Memory intact counts runs where the guest answered its memory check with a match; "
              "a VM that is gone cannot answer and counts as neither.", ""]  # fmt: skip
    path.write_text("\n".join(lines))
    return path
