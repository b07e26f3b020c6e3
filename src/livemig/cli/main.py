"""Commands of the ``livemig`` CLI."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from livemig.adopt import adopt_vm, adopted_launch
from livemig.cli.bench import bench
from livemig.cli.context import connect_of, registry_of
from livemig.cli.demo import demo
from livemig.cli.lab import lab
from livemig.cli.migrate import (
    cancel,
    events,
    jobinfo,
    migrate,
    migrate_setmaxdowntime,
    migrate_setspeed,
    postcopy,
    recover,
)
from livemig.cli.plan import plan
from livemig.cli.render import Verbosity, err, out
from livemig.cli.virt import domain_list, domain_start, domain_stop
from livemig.errors import UsageError
from livemig.guest import build_image, parse_workload
from livemig.qemu.accel import accel_reason, cached_verdict, kvm_verdict
from livemig.qemu.argv import InstancePaths
from livemig.qemu.binary import find_qemu
from livemig.spec import VMSpec, parse_size_mib
from livemig.specfile import load_spec, spec_to_toml
from livemig.vm import fill_image, start_vm, stop_vm

__all__ = ["cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--runtime-dir",
    type=click.Path(path_type=Path),
    envvar="LIVEMIG_RUNTIME_DIR",
    help="Where VM records and sockets live (default /run/livemig for root).",
)
@click.option(
    "-c",
    "--connect",
    metavar="URI",
    envvar="LIVEMIG_CONNECT",
    help="A libvirt daemon (as virsh -c): vm, migrate and recover act on its domains. "
    "A lab host's name stands for its daemon (lab up --libvirt).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for QMP traffic).")
@click.version_option(package_name="livemig")
@click.pass_context
def cli(ctx: click.Context, runtime_dir: Path | None, connect: str | None, verbose: int) -> None:
    """livemig: live migration of QEMU VMs, post-copy done well."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    Verbosity.level = verbose
    if verbose == 0:  # qemu.qmp logs what livemig reports itself, in one line
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    if runtime_dir is not None:
        os.environ["LIVEMIG_RUNTIME_DIR"] = str(runtime_dir)
    ctx.ensure_object(dict)["connect"] = connect or None


# -- guest --------------------------------------------------------------------
@cli.group()
def guest() -> None:
    """The guest image (Debian cloud kernel + busybox initramfs with the workloads)."""


@guest.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the cached image is current.")
def guest_build(force: bool) -> None:
    """Build the guest image into the cache (only when its inputs changed)."""
    img = build_image(force=force)
    out.print(f"guest image: kernel {img.kernel_version}\n  {img.kernel}\n  {img.initrd}")


@cli.command()
@click.option("--recheck", is_flag=True, help="Probe KVM again (boot a guest under it), whatever is cached.")
@click.option("--json", "as_json", is_flag=True)
def accel(recheck: bool, as_json: bool) -> None:
    """Whether KVM can run a guest here (what `--accel auto` picks), and why.

    The verdict comes from booting a small guest under KVM; it is cached per QEMU and
    kernel, and only KVM's own failures are cached."""
    qemu = find_qemu()
    spec = fill_image(VMSpec("kvm-probe"))
    if recheck or cached_verdict(qemu) is None:
        err.print("probing KVM (booting a guest under it, up to 20 s) ...")
    ok, why = kvm_verdict(qemu, spec, recheck=recheck)
    if as_json:
        click.echo(json.dumps({"kvm": ok, "why": why, "auto_picks": "kvm" if ok else "tcg"}))
        return
    out.print(
        f"KVM {'can' if ok else 'cannot'} run a guest here: {why}; --accel auto picks {'kvm' if ok else 'tcg'}"
    )


# -- vm -----------------------------------------------------------------------
@cli.group()
def vm() -> None:
    """Start, list, show and stop VMs."""


@vm.command("start")
@click.argument("name", required=False)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A VM spec file (TOML: disks, NICs, boot, extra_args); see the README.",
)
@click.option("--memory", default=None, help="Guest memory (MiB, or 512M, 1G). [default: 256]")
@click.option("--vcpus", default=None, type=int, help="[default: 1]")
@click.option(
    "--workload",
    default=None,
    help="idle | dirty:mib=M,rate=R,pattern=seq|random[,then=R2,at=S] | stream:fps=F,kib=K,ring=B | "
    "verify:mib=M,seed=S | faultprobe:mib=M,pages=N | scan:mib=M,rate=R. A bare rate R is MiB/s "
    "(the guest's unit); 20M, 8MiB/s or 160mbit work too.",
)
@click.option("--accel", default=None, type=click.Choice(["auto", "tcg", "kvm"]), help="[default: auto]")
@click.option("--kernel", type=click.Path(path_type=Path), help="Kernel (default: the guest image's).")
@click.option("--initrd", type=click.Path(path_type=Path), help="Initrd (default: the guest image's).")
@click.option("--append", "cmdline", default=None, help="Extra kernel command line.")
@click.option("--host", default=None, help="Lab host (network namespace) to run in.")
@click.option("--no-wait", is_flag=True, help="Return without waiting for the guest to boot.")
@click.pass_context
def vm_start(
    ctx: click.Context,
    name: str | None,
    spec_file: Path | None,
    memory: str | None,
    vcpus: int | None,
    workload: str | None,
    accel: str | None,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str | None,
    host: str | None,
    no_wait: bool,
) -> None:
    """Start VM NAME in the background and record it (or the VM of --spec FILE; options
    given next to --spec override the file's fields)."""
    if spec_file is not None:
        spec = load_spec(spec_file)
        if name is not None and name != spec.name:
            raise UsageError(f"NAME {name!r} differs from the spec's name {spec.name!r}; give one")
    elif name is None:
        raise UsageError("give a NAME, or --spec FILE")
    else:
        spec = VMSpec(name=name)
    changes: dict[str, Any] = {
        "memory_mib": parse_size_mib(memory) if memory is not None else None, "vcpus": vcpus,
        "kernel": kernel, "initrd": initrd, "cmdline": cmdline, "accel": accel,
        "workload": parse_workload(workload) if workload is not None else None,
    }  # fmt: skip
    spec = spec.with_changes(**{k: v for k, v in changes.items() if v is not None})
    if (uri := connect_of(ctx)) is not None:
        if host is not None:
            raise UsageError("--host is for livemig's own VMs; with -c the daemon's host runs the domain")
        name = domain_start(uri, spec, registry_of(ctx).root, wait=not no_wait)
        out.print(name)
        return
    rec = start_vm(spec, registry_of(ctx), host=host, wait=not no_wait)
    spec = rec.spec
    extras = "".join(
        f", {len(x)} {what}" for x, what in ((spec.disks, "disk(s)"), (spec.nics, "NIC(s)")) if x
    )
    out.print(
        f"started {spec.name} (pid {rec.instance.pid}, {rec.instance.accel}, {spec.memory_mib} MiB, "
        f"workload {spec.workload}{extras})"
    )
    out.print(
        f"  accelerator {rec.instance.accel}: {accel_reason(spec.accel, rec.instance.accel, find_qemu())}"
    )


@vm.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def vm_list(ctx: click.Context, as_json: bool) -> None:
    """List recorded VMs (with -c: the daemon's domains, with their migration state)."""
    if (uri := connect_of(ctx)) is not None:
        rows = domain_list(uri, registry_of(ctx).root)
        if as_json:
            out.print_json(json.dumps(rows))
            return
        table = Table("name", "state", "memory", "migration", title=uri)
        for row in rows:
            table.add_row(row["name"], row["state"], f"{row['memory_mib']} MiB", row["migration"])
        out.print(table)
        return
    recs = registry_of(ctx).all()
    if as_json:
        out.print_json(json.dumps([{**r.to_dict(), "status": r.status, "where": r.where} for r in recs]))
        return
    table = Table("name", "status", "where", "accel", "memory", "workload")
    for r in recs:
        table.add_row(
            r.name,
            r.status,
            r.where,
            r.instance.accel,
            f"{r.spec.memory_mib} MiB",
            "(adopted)" if r.adopted else str(r.spec.workload),
        )
    out.print(table)


@vm.command("show")
@click.argument("name")
@click.option("--spec", "as_spec", is_flag=True, help="Print the TOML spec that reproduces the VM.")
@click.pass_context
def vm_show(ctx: click.Context, name: str, as_spec: bool) -> None:
    """Show VM NAME's record (JSON), or its spec (TOML)."""
    r = registry_of(ctx).load(name)
    if as_spec:
        if r.adopted is not None:
            raise UsageError(
                f"{name} was adopted, not started from a spec: its command line is in `vm show {name}`"
            )
        click.echo(spec_to_toml(r.spec), nl=False)
        return
    out.print_json(json.dumps({**r.to_dict(), "status": r.status}))


@vm.command("stop")
@click.argument("name")
@click.pass_context
def vm_stop(ctx: click.Context, name: str) -> None:
    """Stop VM NAME (quit its QEMU) and forget it (with -c: destroy the domain NAME)."""
    if (uri := connect_of(ctx)) is not None:
        domain_stop(uri, name, registry_of(ctx).root)
        out.print(f"destroyed {name}")
        return
    stop_vm(name, registry_of(ctx))
    out.print(f"stopped {name}")


@cli.command()
@click.argument("name")
@click.option(
    "--qmp", "qmp", required=True, type=click.Path(path_type=Path), help="The QEMU's QMP UNIX socket."
)
@click.option("--pid", type=int, default=None, help="Its PID (checked against the socket's owner).")
@click.option(
    "--heartbeat",
    default=None,
    metavar="CHARDEV",
    help="The chardev (a UNIX socket) where livemig's guest image writes heartbeats, if any.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the record, with the derived destination argv.")
@click.pass_context
def adopt(
    ctx: click.Context, name: str, qmp: Path, pid: int | None, heartbeat: str | None, as_json: bool
) -> None:
    """Take over a running QEMU that livemig did not start, as VM NAME.

    Reads its command line and QMP's view of it, derives the destination's command line
    and records the VM; refuses (saying why) what cannot be recreated: fd-passed devices,
    vhost-user, VFIO, local-only disks. Nothing in the running VM changes.
    """
    rec = adopt_vm(name, qmp, pid=pid, heartbeat=heartbeat, registry=registry_of(ctx))
    paths = InstancePaths(rec.instance.dir.parent / f"{name}-DEST")
    argv, taps, _ = adopted_launch(rec)(paths, "DEST0000")
    if as_json:
        out.print_json(json.dumps({**rec.to_dict(), "destination_argv": argv, "destination_taps": taps}))
        return
    where = f"lab host {rec.host}" if rec.host else "this host"
    out.print(
        f"adopted {name} (pid {rec.instance.pid} on {where}, {rec.instance.accel}, {rec.spec.memory_mib} MiB, "
        f"{len(rec.adopted.disks if rec.adopted else [])} disk(s), {len(taps)} tap(s)); "
        f"`livemig migrate {name}{' --to HOST' if rec.host else ''}` moves it"
    )


for _cmd in (migrate, recover, plan, postcopy, cancel, events, jobinfo, migrate_setspeed, migrate_setmaxdowntime,
             demo, lab, bench):  # fmt: skip
    cli.add_command(_cmd)
