"""``livemig bench run|report|list``."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import click

from livemig.bench import SCENARIOS, cells_for, run_bench, write_report
from livemig.bench.faultreport import merge_trials, write_reliability
from livemig.bench.faults import FAULTS, run_faults
from livemig.cli.context import terminate_unwinds
from livemig.cli.render import err, out
from livemig.errors import UsageError

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Benchmarks on the lab: scenarios x policies, repeated, as JSON; then a report with plots."""


@bench.command("list")
def bench_list() -> None:
    """List the scenarios and their cells, with about how long each takes (boot, warm-up
    and the guest's RAM at the link rate; `bench run` then shows what is left, measured)."""
    for name, cells in SCENARIOS.items():
        each = sum(c.estimate_s for c in cells)
        n = f"{len(cells)} cell{'s' if len(cells) != 1 else ''}"
        out.print(f"[bold]{name}[/]  ({n}, about {max(each / 60, 1):.0f} min a repeat)")
        for c in cells:
            out.print(
                f"  {c.id:<36} ~{c.estimate_s:3.0f} s  {c.workload} in {c.memory_mib} MiB, {c.bandwidth}, "
                f"tbf latency {c.latency}"
                + (f", post-copy capped at {c.postcopy_bandwidth}" if c.postcopy_bandwidth else "")
                + (", a disk on shared storage" if c.disk else "")
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
    with terminate_unwinds():
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


@bench.command("faults-inject")
@click.option("--trials", default=10, show_default=True, type=int, help="Trials per fault cell.")
@click.option("--only", multiple=True, help="Fault cells to run (ids as in the table; default: all).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Results folder.")
@click.option(
    "--doc", type=click.Path(path_type=Path), help="Also write the table here (e.g. docs/reliability.md)."
)
def bench_faults(trials: int, only: tuple[str, ...], out_dir: Path | None, doc: Path | None) -> None:
    """Fault injection: cut links and SIGKILLs in each phase; VMs lost, memory, leftovers."""
    if trials < 1:
        raise UsageError(f"--trials {trials}: at least 1")
    faults = [f for f in FAULTS if not only or f.id in only]
    unknown = set(only) - {f.id for f in FAULTS}
    if unknown:
        raise UsageError(f"unknown fault cell {sorted(unknown)[0]!r} (e.g. {FAULTS[0].id})")
    out_dir = out_dir or Path("bench-results") / ("faults-" + time.strftime("%Y%m%d-%H%M%S"))
    err.print(f"faults-inject: {len(faults)} cells x {trials} trials -> {out_dir}")
    with terminate_unwinds():
        results = run_faults(faults, trials, out_dir, say=err.print)
    md = write_reliability(results, doc or out_dir / "reliability.md", "livemig " + shlex.join(sys.argv[1:]))
    out.print(f"table: {md}")


@bench.command("faults-report")
@click.argument("folders", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--doc", type=click.Path(path_type=Path), required=True, help="Write the table here.")
@click.option(
    "--trials-out", type=click.Path(path_type=Path), help="Also write the merged trials (JSON) here."
)
def bench_faults_report(folders: tuple[Path, ...], doc: Path, trials_out: Path | None) -> None:
    """One table from faults-inject runs made in parts (each FOLDER holds a trials.json)."""
    trials = merge_trials(list(folders))
    if trials_out is not None:
        trials_out.write_text(json.dumps(trials, indent=1))
    md = write_reliability(trials, doc, "livemig " + shlex.join(sys.argv[1:]))
    out.print(f"table: {md} ({len(trials)} trials)")
