"""``livemig demo``: the mission's experiment in one command. A video-streaming
guest is migrated once per policy (postcopy-now, postcopy-after:1, precopy)
over a link slower than the guest's memory, and the guest-visible stalls are
compared side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console

from livemig.engine.migration import MigrationOptions
from livemig.engine.report import MigrationReport
from livemig.guest import build_image, parse_workload
from livemig.policy import parse_policy
from livemig.registry import Registry
from livemig.spec import VMSpec
from livemig.units import parse_rate
from livemig.vm import start_vm, stop_vm

__all__ = ["demo"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
POLICIES = ("postcopy-now", "postcopy-after:1", "precopy")


@click.command()
@click.option("--memory", default=512, show_default=True, help="Guest memory, MiB.")
@click.option("--workload", default="stream:fps=30,kib=256,ring=256", show_default=True)
@click.option(
    "--bandwidth",
    default="200mbit",
    show_default=True,
    help="Migration bandwidth (QEMU's max-bandwidth stands in for a slow link).",
)
@click.option(
    "--out",
    "out_dir",
    default="livemig-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the JSON reports go.",
)
@click.pass_context
def demo(ctx: click.Context, memory: int, workload: str, bandwidth: str, out_dir: Path) -> None:
    """Migrate a streaming guest with each policy and compare what the guest saw."""
    from livemig.cli.main import out, run_migration, summary_table

    wl = parse_workload(workload)
    rate = parse_rate(bandwidth, "--bandwidth")
    err.print("[bold]livemig demo[/]: building the guest image if needed ...")
    build_image()
    reg = Registry()
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[MigrationReport] = []
    for i, pol in enumerate(POLICIES, 1):
        name = f"demo-{pol.replace(':', '')}"
        err.print(f"[bold]({i}/{len(POLICIES)}) {pol}[/]: starting a {memory} MiB guest running {wl} ...")
        start_vm(VMSpec(name, memory_mib=memory, workload=wl), reg)
        try:
            time.sleep(2.0)  # let the stream fill part of its ring
            opts = MigrationOptions(policy=parse_policy(pol), max_bandwidth=rate)
            report = run_migration(name, opts, reg)
        finally:
            stop_vm(name, reg)
        (out_dir / f"{name}.json").write_text(report.to_json())
        reports.append(report)
    out.print(summary_table(reports, f"demo: {wl} in {memory} MiB, {bandwidth} (QEMU max-bandwidth)"))
    by = {r.policy: r for r in reports}
    now, after = (
        by["postcopy-now"].guest.get("max_stall_ms"),
        by["postcopy-after:1"].guest.get("max_stall_ms"),
    )
    if now and after:
        out.print(
            f"guest's longest stall: postcopy-now {now:.0f} ms vs postcopy-after:1 {after:.0f} ms "
            f"({now / after:.1f}x)"
        )
    (out_dir / "summary.json").write_text(json.dumps([r.to_dict() for r in reports]))
    out.print(f"reports written to {out_dir}/")
