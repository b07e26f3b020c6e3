"""``livemig demo``: the mission's experiment in one command. The lab comes up (two
emulated hosts on a 200 mbit tbf link), a video-streaming guest that out-dirties
that link is migrated once per policy (postcopy-now, postcopy-after:1, auto, precopy),
and what the guest saw is compared side by side. The lab goes down afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import click

from livemig.bench import SCENARIOS, run_bench, write_report
from livemig.bench.report import load_results
from livemig.cli.context import terminate_unwinds
from livemig.cli.render import err, out, summary_table
from livemig.core.report import MigrationReport
from livemig.guest import build_image

__all__ = ["demo"]


def _auto_line(auto: MigrationReport, after: MigrationReport) -> str:
    """What auto (the default) did, beside the fixed policy it improves on."""
    a, b = auto.guest["max_stall_ms"], after.guest["max_stall_ms"]
    did = (
        f"switched after pass {auto.switched_at_pass}"
        if auto.switched_at_pass is not None
        else "stayed in pre-copy"
    )
    gso = (auto.link or {}).get("gso_max")
    cap = f", with the source's GSO size capped at {gso // 1024} KiB" if gso else ""
    return f"auto (the default) {did}{cap}: guest's longest stall {a:.0f} ms, {b / a:.1f}x lower than postcopy-after:1"


@click.command()
@click.option("--repeats", default=1, show_default=True, type=int, help="Runs per policy.")
@click.option(
    "--out",
    "out_dir",
    default="livemig-demo",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where the JSON reports and the plots go.",
)
def demo(repeats: int, out_dir: Path) -> None:
    """Migrate a streaming guest across the lab with each policy; compare what the guest saw."""
    cells = SCENARIOS["stream"]
    c = cells[0]
    err.print("[bold]livemig demo[/]: building the guest image if needed ...")
    build_image()
    err.print(
        f"[bold]livemig demo[/]: {c.workload} in a {c.memory_mib} MiB guest, migrated from lab host src "
        f"to dst over a {c.bandwidth} link, with: {', '.join(x.policy for x in cells)}"
    )
    with terminate_unwinds():
        run_bench(cells, repeats, out_dir, say=err.print)
    results = [r for r in load_results(out_dir) if "report" in r]
    reports = [MigrationReport(**r["report"]) for r in results]
    out.print(summary_table(reports, f"demo: {c.workload} in {c.memory_mib} MiB, lab link {c.bandwidth}"))
    by = {r.policy: r for r in reports}
    now, after = by.get("postcopy-now"), by.get("postcopy-after:1")
    if now and after and now.guest.get("max_stall_ms") and after.guest.get("max_stall_ms"):
        a, b = now.guest["max_stall_ms"], after.guest["max_stall_ms"]
        out.print(
            f"guest's longest stall: postcopy-now {a:.0f} ms, postcopy-after:1 {b:.0f} ms: "
            f"one pre-copy pass first cut it {a / b:.1f}x"
        )
    auto = by.get("auto")
    if auto and after and auto.guest.get("max_stall_ms") and after.guest.get("max_stall_ms"):
        out.print(_auto_line(auto, after))
    net = [(r.policy, (r.network or {}).get("max_gap_ms")) for r in reports]
    gaps = [f"{policy} {gap:.0f} ms" for policy, gap in net if gap is not None]
    if gaps:
        out.print(f"longest time a client of the VM got no answer (UDP echo every 5 ms): {', '.join(gaps)}")
    for r in reports:
        if r.policy.startswith("precopy") and r.status != "completed":
            out.print(
                f"{r.policy}: {r.error}. The stream dirties memory faster than the link carries it, so "
                f"pre-copy cannot converge; the VM stayed on the {r.where or 'source'}."
            )
    md = write_report(out_dir, out_dir, "livemig demo")
    (out_dir / "summary.json").write_text(json.dumps([r.to_dict() for r in reports]))
    out.print(f"plots: {out_dir / 'img'}/ (stream.png, timelines); report: {md}")
