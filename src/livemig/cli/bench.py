"""``livemig bench run|report|list``."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from livemig.bench import SCENARIOS, cells_for, run_bench, write_report
from livemig.errors import UsageError

__all__ = ["bench"]

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@click.group()
def bench() -> None:
    """Benchmarks on the lab: scenarios x policies, repeated, as JSON; then a report with plots."""


@bench.command("list")
def bench_list() -> None:
    """List the scenarios and their cells."""
    for name, cells in SCENARIOS.items():
        out.print(f"[bold]{name}[/]")
        for c in cells:
            out.print(
                f"  {c.id:<36} {c.workload} in {c.memory_mib} MiB, {c.bandwidth}, tbf latency {c.latency}"
            )


@bench.command("run")
@click.argument("scenarios", nargs=-1)
@click.option("--repeats", default=5, show_default=True, type=int, help="Runs per cell (at least 1).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Results folder.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report afterwards.")
def bench_run(scenarios: tuple[str, ...], repeats: int, out_dir: Path | None, report: bool) -> None:
    """Run SCENARIOS (default: all) on the lab, REPEATS times each."""
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: at least 1")
    cells = cells_for(scenarios or tuple(SCENARIOS))
    out_dir = out_dir or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    err.print(f"bench: {len(cells)} cells x {repeats} repeats -> {out_dir}")
    run_bench(cells, repeats, out_dir, say=err.print)
    if report:
        md = write_report(out_dir, out_dir, "livemig " + shlex.join(sys.argv[1:]))
        out.print(f"report: {md}")


@bench.command("report")
@click.argument("results", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), help="Where benchmarks.md goes (default: RESULTS)."
)
@click.option("--command", default="", help="The command that produced RESULTS, quoted in the report.")
@click.option(
    "--all-timelines", is_flag=True, help="A timeline PNG for every run, not only the first repeats."
)
def bench_report(results: Path, out_dir: Path | None, command: str, all_timelines: bool) -> None:
    """Turn RESULTS (a folder of run JSON) into benchmarks.md and PNG plots."""
    md = write_report(results, out_dir or results, command, all_timelines)
    out.print(f"report: {md}")
