"""The live progress line of ``livemig migrate`` on a terminal: phase, pass,
transferred/remaining, dirty rate and throughput, redrawn from the core's latest
sample (phase changes themselves come from pushed events)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from livemig.core.migration import Migration

__all__ = ["Watched", "show_progress"]


class Watched(Protocol):
    """What the display needs: a name, and the migration once it exists."""

    name: str
    migration: Migration | None


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


async def show_progress(job: Watched, console: Console, period_s: float = 0.25) -> None:
    """Draw until cancelled. Runs as a task beside ``job.run()``."""
    columns = (
        TextColumn("[bold]{task.fields[phase]:<9}[/] pass {task.fields[pass_]:>2}"),
        BarColumn(),
        TextColumn("{task.fields[moved]}"),
        TextColumn("dirty {task.fields[dirty]}/s  {task.fields[mbps]} Mbit/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(job.name, total=None, phase="setup", pass_=0, moved="", dirty="-", mbps="-")
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                mig = job.migration
                latest = mig.latest if mig is not None else None
                if mig is not None and latest is not None:
                    done, left = latest["transferred"], latest["remaining"]
                    bar.update(
                        task,
                        completed=done,
                        total=done + left if left else None,
                        phase=str(mig.state),
                        pass_=latest["passes"],
                        moved=f"{_mib(done)} sent, {_mib(left)} left",
                        dirty=_mib(latest["dirty_rate_bps"]),
                        mbps=f"{latest['mbps']:.0f}",
                    )
                elif mig is not None:
                    bar.update(task, phase=str(mig.state))
                await asyncio.sleep(period_s)
