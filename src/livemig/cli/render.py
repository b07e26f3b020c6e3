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


def print_event(t0: float, ev: MigrationEvent) -> None:
    lat = f"  (delivered {ev.latency_ms:.2f} ms after QEMU's timestamp)" if ev.latency_ms is not None else ""
    data = {k: v for k, v in ev.data.items() if k not in ("side", "status")}
    extra = f" {data}" if data else ""
    err.print(f"  [dim]+{ev.delivered_ts - t0:7.3f}s[/] [bold]{ev.name}[/]{extra}{lat}")


def summary_table(reports: list[MigrationReport], title: str = "") -> Table:
    table = Table(
        title=title or None,
        caption="times in ms; blackout = source STOP to destination "
        "RESUME; max stall = longest heartbeat gap the guest showed; "
        "net gap = longest time a client of the VM got no echo",
    )
    for col in (
        "policy",
        "status",
        "switch@pass",
        "blackout",
        "qemu dt",
        "max stall",
        "net gap",
        ">100ms",
        "total",
        "pc req",
    ):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for r in reports:
        g = r.guest or {}
        table.add_row(
            r.policy, r.status, str(r.switched_at_pass) if r.switched_at_pass is not None else "-",
            fmt(r.blackout_ms), fmt(r.downtime_ms), fmt(g.get("max_stall_ms")),
            fmt((r.network or {}).get("max_gap_ms")), str(g.get("stalls_over_100ms", "-")), fmt(r.total_time_ms), fmt(r.postcopy_requests),
        )  # fmt: skip
    return table


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def plan_table(predictions: list[Prediction]) -> Table:
    table = Table("policy", "converges", "passes", "pause ms", "total s", "MiB sent", "note",
                  caption="predicted from the measured dirty rate and the link's rate")  # fmt: skip
    for p in predictions:
        table.add_row(p.policy, "yes" if p.converges else "no", str(p.passes), fmt(p.pause_ms), fmt(p.total_s),
                      fmt(p.bytes / 2**20 if p.bytes is not None else None), p.note)  # fmt: skip
    return table
