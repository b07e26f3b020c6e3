"""``livemig plan``: a dry run that predicts, per policy, what a migration would cost
(the model is :mod:`livemig.plan`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import click

from livemig.cli.context import connect_of, registry_of
from livemig.cli.render import out, plan_table
from livemig.cli.virt import domain_dirty_rate
from livemig.errors import UsageError
from livemig.lab import Lab
from livemig.plan import Measurement, guest_ram, measure_dirty_rate, predict
from livemig.units import parse_rate

__all__ = ["plan"]


@click.command()
@click.argument("name")
@click.option("--to", "to_host", default=None, help="Destination lab host (its link's rate is used).")
@click.option("--bandwidth", help="The link's rate, when not a lab host's (bytes/s: 25M, or 200mbit).")
@click.option("--seconds", default=2, show_default=True, type=click.IntRange(1, 60),
              help="How long QEMU samples the guest's dirty pages.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(
    ctx: click.Context, name: str, to_host: str | None, bandwidth: str | None, seconds: int, as_json: bool
) -> None:
    """Predict, per policy, what migrating NAME would cost, and what auto would do and why.

    A dry run: QEMU samples the guest's dirty pages (read-only); nothing else changes."""
    reg = registry_of(ctx)
    conn = connect_of(ctx)
    if conn is None:
        rec = reg.load(name)
        if not rec.instance.alive():
            raise UsageError(f"{name} is not running")
        if rec.migration is not None and rec.migration.unfinished:
            raise UsageError(f"{name} is already migrating ({rec.migration.state}): nothing to plan")
    if to_host is not None:
        lab = Lab.current(reg.root)
        hosts = [h.name for h in lab.plan.hosts] if lab else []
        if to_host not in hosts:
            raise UsageError(
                f"--to {to_host}: no such lab host (hosts: {', '.join(hosts) or 'no lab is up'})"
            )
        assert lab is not None
        link, source = float(lab.plan.shaping.rate_bps), f"lab link {lab.plan.shaping}"
    elif bandwidth:
        link, source = float(parse_rate(bandwidth, "--bandwidth")), f"--bandwidth {bandwidth}"
    else:
        link, source = float(128 << 20), "QEMU's default max-bandwidth (give --to or --bandwidth)"
    resident, top = None, None
    if conn is not None:  # a libvirt domain: libvirt asks its QEMU, the same way
        ram, dirty = domain_dirty_rate(conn, name, seconds, reg.root)
    else:
        ram, dirty = asyncio.run(measure_dirty_rate(name, rec.instance.paths.qmp_aux, seconds))
        resident, top = guest_ram(rec.instance.pid, ram)
    m = Measurement(ram, dirty, link, source, resident, top)
    predictions, reasons = predict(m)
    if as_json:
        measured = {k: v for k, v in dataclasses.asdict(m).items() if k != "top_nonzero"}  # 1 number a MiB
        click.echo(json.dumps({"vm": name, "measured": measured,
                               "predictions": [p.to_dict() for p in predictions], "auto": reasons}, indent=2))  # fmt: skip
        return
    touched = f" ({resident / 2**20:.0f} MiB of it resident: the first pass)" if resident else ""
    out.print(f"{name}: {ram / 2**20:.0f} MiB{touched}, dirty {dirty / 2**20:.1f} MiB/s (QEMU, {seconds} s sample); "
              f"link {link / 2**20:.1f} MiB/s ({source})")  # fmt: skip
    out.print(plan_table(predictions))
    for line in reasons:
        out.print(f"  auto, {line}")
