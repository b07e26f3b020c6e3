"""Commands of the ``livemig`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from livemig.adopt import adopt_vm, adopted_launch
from livemig.cli.bench import bench
from livemig.cli.demo import demo
from livemig.cli.lab import lab
from livemig.cli.progress import show_progress
from livemig.cli.render import err, out, print_event, summary_table
from livemig.control import request, stream
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LivemigError, MigrationFailed, NotMigrating, UsageError
from livemig.guest import build_image, parse_workload
from livemig.job import MigrationJob
from livemig.pair import PairMigration, QemuPair
from livemig.policy import parse_policy
from livemig.qemu.argv import InstancePaths
from livemig.registry import Registry
from livemig.spec import VMSpec, parse_size_mib
from livemig.specfile import load_spec, spec_to_toml
from livemig.units import parse_rate
from livemig.vm import start_vm, stop_vm

__all__ = ["cli"]


def _registry(ctx: click.Context) -> Registry:
    obj = ctx.find_root().ensure_object(dict)
    if "registry" not in obj:
        obj["registry"] = Registry()
    reg: Registry = obj["registry"]
    return reg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--runtime-dir",
    type=click.Path(path_type=Path),
    envvar="LIVEMIG_RUNTIME_DIR",
    help="Where VM records and sockets live (default /run/livemig for root).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for QMP traffic).")
@click.version_option(package_name="livemig")
@click.pass_context
def cli(ctx: click.Context, runtime_dir: Path | None, verbose: int) -> None:
    """livemig: live migration of QEMU VMs, post-copy done well."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    if verbose == 0:  # qemu.qmp logs what livemig reports itself, in one line
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    if runtime_dir is not None:
        os.environ["LIVEMIG_RUNTIME_DIR"] = str(runtime_dir)
    ctx.ensure_object(dict)


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
    help="idle | dirty:mib=M,rate=R,pattern=seq|random | stream:fps=F,kib=K,ring=B | "
    "verify:mib=M,seed=S | faultprobe:mib=M,pages=N",
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
    rec = start_vm(spec, _registry(ctx), host=host, wait=not no_wait)
    spec = rec.spec
    extras = "".join(
        f", {len(x)} {what}" for x, what in ((spec.disks, "disk(s)"), (spec.nics, "NIC(s)")) if x
    )
    out.print(
        f"started {spec.name} (pid {rec.instance.pid}, {rec.instance.accel}, {spec.memory_mib} MiB, "
        f"workload {spec.workload}{extras})"
    )


@vm.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def vm_list(ctx: click.Context, as_json: bool) -> None:
    """List recorded VMs."""
    recs = _registry(ctx).all()
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
    r = _registry(ctx).load(name)
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
    """Stop VM NAME (quit its QEMU) and forget it."""
    stop_vm(name, _registry(ctx))
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
    rec = adopt_vm(name, qmp, pid=pid, heartbeat=heartbeat, registry=_registry(ctx))
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


# -- migrate ------------------------------------------------------------------
def migration_options(
    policy: str,
    bandwidth: str | None,
    downtime_limit: int | None,
    postcopy_bandwidth: str | None,
    no_preempt: bool,
    port: int,
    address: str,
    multifd: bool,
    stall_timeout: float = 5.0,
    recover_deadline: float = 120.0,
    recover: bool = True,
) -> MigrationOptions:
    if not 0.5 <= stall_timeout <= 600:
        raise UsageError(f"--stall-timeout {stall_timeout}: out of range [0.5, 600] s")
    if not 1 <= recover_deadline <= 86400:
        raise UsageError(f"--recover-deadline {recover_deadline}: out of range [1, 86400] s")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: out of range [0, 65535]")
    if downtime_limit is not None and not 1 <= downtime_limit <= 2000:
        raise UsageError(f"--downtime-limit {downtime_limit}: out of range [1, 2000] ms")
    return MigrationOptions(
        policy=parse_policy(policy),
        preempt=False if no_preempt else None,
        max_bandwidth=parse_rate(bandwidth, "--bandwidth") if bandwidth else None,
        downtime_limit_ms=downtime_limit,
        postcopy_bandwidth=parse_rate(postcopy_bandwidth, "--postcopy-bandwidth")
        if postcopy_bandwidth
        else None,
        multifd=multifd,
        address=address,
        port=port,
        stall_timeout_s=stall_timeout,
        recover_deadline_s=recover_deadline,
        recover=recover,
    )


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--policy",
    default="postcopy-after:1",
    show_default=True,
    help="precopy[:timeout=S] | manual | postcopy-now | postcopy-after:N",
)
@click.option("--bandwidth", help="Max migration bandwidth (e.g. 200mbit, 25MB/s).")
@click.option("--downtime-limit", type=int, help="Max pre-copy downtime, ms (QEMU default 300).")
@click.option("--postcopy-bandwidth", help="Max background bandwidth during post-copy.")
@click.option("--no-preempt", is_flag=True, help="No separate post-copy page-request channel.")
@click.option(
    "--multifd",
    is_flag=True,
    help="Parallel pre-copy channels (refused with post-copy on QEMU < 10.1).",
)
@click.option("--to", "to_host", default=None, help="Destination lab host.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Destination listening address.")
@click.option("--port", default=0, type=int, help="Destination port (0: pick a free one).")
@click.option("--stall-timeout", default=5.0, show_default=True, type=float,
              help="Seconds without progress that mean the link is down.")  # fmt: skip
@click.option("--recover-deadline", default=120.0, show_default=True, type=float,
              help="Post-copy: keep retrying recovery this long; then both QEMUs stay paused.")  # fmt: skip
@click.option(
    "--no-recover", is_flag=True, help="Post-copy: do not recover by itself (use `livemig recover`)."
)
@click.option("--attach", is_flag=True, help="Take over NAME's migration whose livemig process died.")
@click.option(
    "--tls", is_flag=True, help="Encrypt and authenticate every channel (x509; lab hosts' certificates)."
)
@click.option("--heartbeat-log", type=click.Path(path_type=Path, dir_okay=False),
              help="Record every guest heartbeat received (TSV) for offline analysis.")  # fmt: skip
@click.option(
    "--src-qmp",
    type=click.Path(path_type=Path),
    help="Orchestrator mode: the running source QEMU's QMP socket.",
)
@click.option(
    "--dst-qmp",
    type=click.Path(path_type=Path),
    help="Orchestrator mode: the destination QEMU's QMP socket (started with -incoming defer).",
)
@click.option("--uri", help="Orchestrator mode: where the destination listens, tcp:HOST:PORT.")
@click.option(
    "--name", "pair_name", help="Orchestrator mode: the migration's name (default: the source's -name)."
)
@click.option(
    "--src-heartbeat",
    type=click.Path(path_type=Path),
    help="Orchestrator mode: the source's heartbeat chardev (UNIX socket), if the guest writes one.",
)
@click.option(
    "--dst-heartbeat",
    type=click.Path(path_type=Path),
    help="Orchestrator mode: the destination's heartbeat chardev (UNIX socket).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def migrate(
    ctx: click.Context,
    name: str,
    policy: str,
    bandwidth: str | None,
    downtime_limit: int | None,
    postcopy_bandwidth: str | None,
    no_preempt: bool,
    multifd: bool,
    to_host: str | None,
    address: str,
    port: int,
    stall_timeout: float,
    recover_deadline: float,
    no_recover: bool,
    attach: bool,
    tls: bool,
    heartbeat_log: Path | None,
    src_qmp: Path | None,
    dst_qmp: Path | None,
    uri: str | None,
    pair_name: str | None,
    src_heartbeat: Path | None,
    dst_heartbeat: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Migrate VM NAME live (default: one pre-copy pass, then post-copy).

    If NAME's last migration was left behind by a livemig process that died, this
    takes it over (as --attach does) instead of starting another.

    Orchestrator mode, for two QEMUs that another program started and owns (the
    destination waiting with -incoming defer): --src-qmp SOCK --dst-qmp SOCK --uri
    tcp:HOST:PORT. livemig starts and kills no QEMU then; `livemig postcopy NAME`,
    `events NAME` and `cancel NAME` reach the migration by its name."""
    opts = migration_options(
        policy, bandwidth, downtime_limit, postcopy_bandwidth, no_preempt, port, address, multifd,
        stall_timeout, recover_deadline, not no_recover,
    )  # fmt: skip
    opts = dataclasses.replace(opts, tls=tls)
    reg = _registry(ctx)
    if src_qmp is not None or dst_qmp is not None or uri is not None:
        if src_qmp is None or dst_qmp is None or uri is None:
            raise UsageError("orchestrator mode needs all of --src-qmp, --dst-qmp and --uri")
        if to_host or tls or heartbeat_log:
            raise UsageError("--to, --tls and --heartbeat-log do not apply to --src-qmp/--dst-qmp")
        if name and pair_name and name != pair_name:
            raise UsageError(f"NAME {name!r} and --name {pair_name!r} differ; give one")
        pair = QemuPair(src_qmp, dst_qmp, uri, name or pair_name, src_heartbeat, dst_heartbeat)
        _conclude(pair.name or "the pair", run_pair(pair, opts, reg, quiet, attach), as_json)
        return
    if name is None:
        raise UsageError("give a NAME, or --src-qmp/--dst-qmp/--uri for a pair another program started")
    if pair_name or src_heartbeat or dst_heartbeat:
        raise UsageError("--name, --src-heartbeat and --dst-heartbeat go with --src-qmp/--dst-qmp")
    rec = reg.load(name)  # a clear error before anything starts
    if not attach and rec.status.startswith("orphaned:"):
        err.print(f"{name}: a migration left by a livemig process that died; taking it over")
        attach = True
    report = run_migration(name, opts, reg, to_host, quiet, attach=attach, heartbeat_log=heartbeat_log)
    _conclude(name, report, as_json)


@cli.command()
@click.argument("name")
@click.option("--deadline", default=120.0, show_default=True, type=float,
              help="Keep retrying this long; then both QEMUs stay paused.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def recover(ctx: click.Context, name: str, deadline: float, as_json: bool, quiet: bool) -> None:
    """Recover NAME's paused post-copy migration (like virsh --postcopy-resume) and finish it."""
    reg = _registry(ctx)
    reg.load(name)
    opts = migration_options(
        "manual", None, None, None, False, 0, "127.0.0.1", False, recover_deadline=deadline
    )
    _conclude(name, run_migration(name, opts, reg, None, quiet, attach=True), as_json)


def _conclude(name: str, report: MigrationReport, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        out.print(summary_table([report], f"{name}: {report.status}"))
        if report.where:
            out.print(f"the VM is on the {report.where}")
    if report.status != "completed":
        raise MigrationFailed(f"{name}: migration {report.status}: {report.error}", phase=report.phase or "")


def run_migration(
    name: str,
    opts: MigrationOptions,
    reg: Registry,
    to_host: str | None = None,
    quiet: bool = False,
    attach: bool = False,
    heartbeat_log: Path | None = None,
) -> MigrationReport:
    t0 = time.time()
    job = MigrationJob(name, opts, reg, to_host, heartbeat_log=heartbeat_log)
    if not attach:
        job.validate()

    async def go() -> MigrationReport:
        if not quiet:
            job.on_event(lambda ev: print_event(t0, ev))
        bar = asyncio.create_task(show_progress(job, err)) if not quiet and err.is_terminal else None
        try:
            return await (job.attach(opts.recover_deadline_s) if attach else job.run())
        finally:
            if bar is not None:
                bar.cancel()
                await asyncio.gather(bar, return_exceptions=True)

    if not quiet:
        err.print(f"{'taking over' if attach else 'migrating'} {name} ...")
    return asyncio.run(go())


def run_pair(
    pair: QemuPair, opts: MigrationOptions, reg: Registry, quiet: bool = False, attach: bool = False
) -> MigrationReport:
    """Migrate a pair of QEMUs that another program started (see :mod:`livemig.pair`)."""
    t0 = time.time()
    job = PairMigration(pair, opts, reg)

    async def go() -> MigrationReport:
        if not quiet:
            job.on_event(lambda ev: print_event(t0, ev))
        bar = asyncio.create_task(show_progress(job, err)) if not quiet and err.is_terminal else None
        try:
            return await job.run(attach=attach)
        finally:
            if bar is not None:
                bar.cancel()
                await asyncio.gather(bar, return_exceptions=True)

    if not quiet:
        err.print(
            f"{'taking over' if attach else 'migrating'} {pair.src_qmp} -> {pair.dst_qmp} over {pair.uri} ..."
        )
    return asyncio.run(go())


def _control_path(reg: Registry, name: str) -> Path:
    """The control socket of NAME's migration: a VM livemig manages, or a pair migrating
    in orchestrator mode (which has no record, only its socket)."""
    path = reg.control_socket(name)
    if not path.exists() and not reg.exists(name):
        raise NotMigrating(f"no VM named {name!r}, and no migration of that name is running")
    if reg.exists(name):
        reg.load(name)  # refuses another user's VM
    return path


@cli.command()
@click.argument("name")
@click.pass_context
def postcopy(ctx: click.Context, name: str) -> None:
    """Switch NAME's running migration to post-copy; returns once QEMU confirms."""
    reply = request(_control_path(_registry(ctx), name), name, "postcopy")
    out.print(f"{name}: {reply.get('state')}")


@cli.command()
@click.argument("name")
@click.pass_context
def cancel(ctx: click.Context, name: str) -> None:
    """Cancel NAME's migration during pre-copy (the VM stays on the source)."""
    reply = request(_control_path(_registry(ctx), name), name, "cancel")
    out.print(f"{name}: {reply.get('state')}")


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for a migration of NAME to start.",
)
@click.pass_context
def events(ctx: click.Context, name: str | None, wait: bool) -> None:
    """Stream migration events as JSON lines: NAME's until its migration ends, or,
    without NAME, every VM's (each line names its VM) until interrupted."""
    reg = _registry(ctx)
    if name is None:
        _follow_all(reg)
        return
    path = _control_path(reg, name)
    if wait and not path.exists():
        err.print(f"waiting for a migration of {name} to start ...")
    while wait and not path.exists():
        time.sleep(0.1)  # waiting for a migration to begin; events themselves are pushed
    for msg in stream(path, name, "events"):
        if "event" in msg:
            click.echo(json.dumps(msg["event"]))
        else:
            click.echo(json.dumps({"end": msg.get("end")}))


def _follow_all(reg: Registry, scan_s: float = 0.2) -> None:
    """One reader thread per running migration; a scan finds migrations that begin."""
    lock = threading.Lock()
    followed: set[tuple[str, int]] = set()

    def follow(vm: str, path: Path) -> None:
        with contextlib.suppress(LivemigError, OSError):
            for msg in stream(path, vm, "events"):
                line = {"vm": vm, **msg["event"]} if "event" in msg else {"vm": vm, "end": msg.get("end")}
                with lock:
                    click.echo(json.dumps(line))

    while True:
        for vm in reg.names():
            path = reg.control_socket(vm)
            with contextlib.suppress(FileNotFoundError):
                key = (vm, path.stat().st_ino)
                if key not in followed:
                    followed.add(key)
                    threading.Thread(target=follow, args=(vm, path), daemon=True).start()
        time.sleep(scan_s)


cli.add_command(demo)
cli.add_command(lab)
cli.add_command(bench)
