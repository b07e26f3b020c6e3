"""``livemig lab up|down|status|shape``: emulated hosts on a shaped link."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from livemig.cli.render import out
from livemig.errors import LabError
from livemig.lab import Lab, Shaping
from livemig.lab.libvirtd import lab_domains, running_daemons, start_daemons, stop_daemons
from livemig.registry import Registry
from livemig.units import GSO_MAX, check_gso_size, parse_duration_ms, parse_rate, parse_size_bytes

__all__ = ["lab"]


_shape_options = [
    click.option(
        "--bandwidth",
        default="200mbit",
        show_default=True,
        help="Link rate, each direction: 200mbit, 25M (MiB/s); a bare number is bytes/s.",
    ),
    click.option("--burst", default="256kb", show_default=True, help="tbf burst (tc units)."),
    click.option("--latency", default="100ms", show_default=True, help="tbf latency (its queue limit)."),
    click.option(
        "--gso-max",
        default="64kb",
        show_default=True,
        help="Each host's GSO size cap (4kb-64kb): the largest burst TCP queues at once. On a slow "
        "link a post-copy page's answer waits behind one (docs/pacing: 8kb cut the stream's stall 3x).",
    ),
]


def _shaping(bandwidth: str, burst: str, latency: str) -> Shaping:
    return Shaping(
        parse_rate(bandwidth, "--bandwidth"),
        parse_size_bytes(burst, "--burst"),
        parse_duration_ms(latency, "--latency"),
    ).validated()


def _gso_max(text: str) -> int | None:
    """``--gso-max`` in bytes; None for the kernel's own 64 KiB."""
    value = check_gso_size(parse_size_bytes(text, "--gso-max"), "--gso-max")
    return None if value == GSO_MAX else value


def _set_gso(the_lab: Lab, gso: int | None) -> None:
    for h in the_lab.plan.hosts:
        the_lab.set_gso_max(h.name, gso)


F = TypeVar("F", bound=Callable[..., Any])


def _with_shape(fn: F) -> F:
    for opt in reversed(_shape_options):
        fn = opt(fn)
    return fn


@click.group()
def lab() -> None:
    """Emulated hosts (network namespaces) joined by links shaped with tc tbf (needs root)."""


@lab.command("up")
@click.option("--hosts", default=2, show_default=True, type=int, help="How many hosts (src, dst, h3, ...).")
@click.option("--libvirt", "with_libvirt", is_flag=True,
              help="Also run one libvirt daemon per host, in its namespace (`livemig -c HOST ...`).")  # fmt: skip
@_with_shape
def lab_up(hosts: int, with_libvirt: bool, bandwidth: str, burst: str, latency: str, gso_max: str) -> None:
    """Create the lab (or reshape the one that is up)."""
    root = Registry().root
    gso = _gso_max(gso_max)  # refused before anything is made
    the_lab = Lab.up(hosts, _shaping(bandwidth, burst, latency), root)
    _set_gso(the_lab, gso)
    if with_libvirt:
        try:
            start_daemons(root, [(h.name, h.netns) for h in the_lab.plan.hosts])
        except LabError:
            stop_daemons(root)
            raise
    _print_status(the_lab)


@lab.command("shape")
@_with_shape
def lab_shape(bandwidth: str, burst: str, latency: str, gso_max: str) -> None:
    """Change the shaping of the lab that is up."""
    shaping, gso = _shaping(bandwidth, burst, latency), _gso_max(gso_max)  # checked before any change
    the_lab = Lab.load(Registry().root)
    the_lab.shape(shaping)
    _set_gso(the_lab, gso)
    _print_status(the_lab)


@lab.command("link")
@click.argument("host")
@click.argument("state", type=click.Choice(["up", "down"]))
def lab_link(host: str, state: str) -> None:
    """Cut (down) or restore (up) HOST's link at the switch: fault injection."""
    the_lab = Lab.load(Registry().root)
    the_lab.set_link(host, state == "up")
    out.print(f"{host}: link {state}")


@lab.command("down")
def lab_down() -> None:
    """Remove exactly what `lab up` made (idempotent). Refused while VMs run on lab hosts."""
    reg = Registry()
    the_lab = Lab.current(reg.root)
    if the_lab is None:
        out.print("no lab is up")
        return
    on_lab = [r.name for r in reg.all() if r.host is not None and r.instance.alive()]
    if on_lab:
        raise LabError(f"VMs run on lab hosts ({', '.join(on_lab)}); stop them first (`livemig vm stop`)")
    domains = lab_domains(reg.root)
    if domains:
        raise LabError(
            f"domains run on the lab's libvirt daemons ({', '.join(domains)}); stop them first "
            "(`livemig -c HOST vm stop NAME`)"
        )
    stopped = stop_daemons(reg.root)
    if stopped:
        out.print(f"lab down: stopped the libvirt daemons of {', '.join(stopped)}")
    removed = the_lab.down()
    out.print(f"lab down: removed {', '.join(removed) or 'nothing (already gone)'}")


@lab.command("status")
@click.option("--json", "as_json", is_flag=True)
def lab_status(as_json: bool) -> None:
    """Show hosts, addresses and shaping, as the kernel has them."""
    the_lab = Lab.current(Registry().root)
    if as_json:
        st = the_lab.status() if the_lab else None
        if the_lab is not None and st is not None:
            st["libvirt"] = [{"host": d.host, "pid": d.pid, "running": d.alive(), "uri": d.uri}
                             for d in running_daemons(the_lab.root)]  # fmt: skip
        click.echo(json.dumps(st))
    elif the_lab is None:
        out.print("no lab is up")
    else:
        _print_status(the_lab)


def _print_status(the_lab: Lab) -> None:
    st = the_lab.status()
    table = Table("host", "netns", "address", "egress qdisc", title=f"lab: {st['shaping']}, both directions")
    daemons = {d.host: d for d in running_daemons(the_lab.root)}
    for h in st["hosts"]:
        q = h.get("qdisc")
        gso = h.get("gso_max_size")
        shaped = (
            f"tbf {q['rate_Bps'] * 8 / 1e6:g} Mbit/s, limit {q['limit_bytes']} B"
            + (f", GSO {gso // 1024} KiB" if gso and gso != GSO_MAX else "")
            if q
            else h.get("error", "-")
        )
        table.add_row(h["host"], h["netns"], h["address"], shaped)
    out.print(table)
    for host, d in daemons.items():
        out.print(f"{host}: libvirt {'running' if d.alive() else '[red]not running[/]'} (pid {d.pid}): {d.uri}",
                  soft_wrap=True)  # fmt: skip
    if st["missing"]:
        out.print(f"[red]missing namespaces: {', '.join(st['missing'])}[/]")
