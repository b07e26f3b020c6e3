"""Everything the CLI prints goes through here: the one pair of rich Consoles (``out`` for
results on stdout, ``err`` for progress and messages on stderr), event lines and the
summary table."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from livemig.core.events import MigrationEvent
from livemig.core.report import MigrationReport
from livemig.plan import Prediction

__all__ = ["err", "fmt", "out", "plan_table", "print_event", "summary_table"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


class Verbosity:
    """Set once by the ``livemig`` group from ``-v``: what the terminal shows."""

    level = 0


def _describe(ev: MigrationEvent) -> str:
    d = ev.data
    lines = {
        "setup": "migration set up",
        "pass": f"pre-copy pass {d.get('n')}",
        "postcopy-requested": f"post-copy requested: {d.get('failed') or d.get('reason')}",
        "source-stopped": "the source's vCPUs stopped",
        "postcopy-started": "post-copy started: the VM runs on the destination, pages follow on demand",
        "destination-resumed": "the VM resumed on the destination",
        "completed": "completed: the destination runs the VM",
        "failed": f"failed ({d.get('phase')}): {d.get('reason')}",
        "cancelled": "cancelled: the VM stays on the source",
        "postcopy-paused": f"post-copy paused (outage {d.get('outage')}); recovering",
        "postcopy-recovered": (
            "post-copy had recovered while no livemig was attached (a resume issued before the deadline)"
            if d.get("detached")
            else f"post-copy recovered after {d.get('paused_ms')} ms ({d.get('attempts')} attempt(s))"
        ),
        "attached": f"took over: the source is {d.get('source')}, the destination {d.get('destination')}",
    }
    return lines.get(ev.name, ev.name)


def print_event(t0: float, ev: MigrationEvent) -> None:
    """One human line per event; the delivery latency only with -v (the JSON always has it)."""
    lat = ""
    if Verbosity.level and ev.latency_ms is not None:
        lat = f"  [dim](delivered {ev.latency_ms:.2f} ms after the hypervisor's timestamp)[/]"
    stamp, text = f"+{ev.delivered_ts - t0:7.3f}s", f"{_describe(ev)}{lat}"
    if not err.is_terminal:  # a log or a pipe: one line per event, whatever its length
        err.print(f"  [dim]{stamp}[/] {text}")
        return
    line = Table.grid(padding=(0, 1, 0, 0))  # wrapped at words, under the text, not the time
    line.add_column(no_wrap=True, style="dim")
    line.add_column()
    line.add_row(f"  {stamp}", text)
    err.print(line)


def summary_table(reports: list[MigrationReport], title: str = "") -> Table:
    """Fits 80 columns; everything else is in the JSON report (QEMU's own downtime
    figure, page requests, ...: docs/report.md)."""
    table = Table(
        title=title or None,
        caption="switched: pre-copy passes before post-copy (- none); blackout: source STOP to "
        "destination RESUME; stall: the guest's longest heartbeat gap; client gap: longest time a "
        "client of the VM got no echo",
    )
    for col in ("policy", "status", "switched", "blackout ms", "stall ms", "client gap ms", "total s"):
        table.add_column(col, justify="left" if col in ("policy", "status") else "right", overflow="fold")
    for r in reports:
        g = r.guest or {}
        total = r.total_time_ms / 1000 if r.total_time_ms is not None else None
        table.add_row(
            r.policy, r.status, str(r.switched_at_pass) if r.switched_at_pass is not None else "-",
            fmt(r.blackout_ms), fmt(g.get("max_stall_ms")), fmt((r.network or {}).get("max_gap_ms")), fmt(total),
        )  # fmt: skip
    return table


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def plan_table(predictions: list[Prediction]) -> Table:
    table = Table("policy", "converges", "passes", "pause ms", "stall ms", "total s", "MiB sent", "note",
                  caption="predicted from the measured dirty rate and the link's rate; stall: the guest's "
                          "longest, pause or post-copy's page faults")  # fmt: skip
    for p in predictions:
        table.add_row(p.policy, "yes" if p.converges else "no", str(p.passes), fmt(p.pause_ms), fmt(p.stall_ms),
                      fmt(p.total_s), fmt(p.bytes / 2**20 if p.bytes is not None else None), p.note)  # fmt: skip
    return table
