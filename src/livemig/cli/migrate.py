"""The migration commands: migrate (a recorded VM, or a pair another program started),
recover, and what other processes send to a running migration (postcopy, cancel,
events) through its control socket."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import click

from livemig.cli.context import connect_of, registry_of
from livemig.cli.progress import run_with_progress
from livemig.cli.render import err, out, print_event, summary_table
from livemig.cli.virt import run_domain
from livemig.control import request, stream
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import LivemigError, MigrationFailed, NotMigrating, UsageError
from livemig.job import MigrationJob
from livemig.pair import PairMigration, QemuPair
from livemig.policy import parse_policy
from livemig.registry import Registry
from livemig.units import parse_rate

__all__ = [
    "cancel", "events", "jobinfo", "migrate", "migrate_setmaxdowntime", "migrate_setspeed", "migration_options",
    "postcopy", "recover", "run_migration",
]  # fmt: skip


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


@click.command()
@click.argument("name", required=False)
@click.option(
    "--policy",
    default="auto",
    show_default=True,
    help="auto[:max-pause=MS,budget=S] | precopy[:timeout=S] | manual | postcopy-now | "
    "postcopy-after:N (passes) or :F (share of the first, 0-1)",
)
@click.option(
    "--bandwidth", help="Max migration bandwidth: 25M (MiB/s), 200mbit, 25MB/s; a bare number is bytes/s."
)
@click.option("--downtime-limit", type=int, help="Max pre-copy downtime, ms (QEMU default 300).")
@click.option(
    "--postcopy-bandwidth", help="Max background bandwidth during post-copy (units as --bandwidth)."
)
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
@click.option("--migrateuri", "migrate_uri", default=None,
              help="With -c: where QEMU's stream goes, tcp://ADDRESS[:PORT] (default: a lab host's "
              "link address, else libvirt's choice).")  # fmt: skip
@click.option("--postcopy-resume", is_flag=True,
              help="With -c: resume DOMAIN's paused post-copy migration (like virsh).")  # fmt: skip
@click.option("--live", is_flag=True, help="Accepted for virsh habits: livemig always migrates live.")
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
    migrate_uri: str | None,
    postcopy_resume: bool,
    live: bool,
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
    del live  # virsh's --live: every livemig migration is live
    opts = migration_options(
        policy, bandwidth, downtime_limit, postcopy_bandwidth, no_preempt, port, address, multifd,
        stall_timeout, recover_deadline, not no_recover,
    )  # fmt: skip
    opts = dataclasses.replace(opts, tls=tls)
    reg = registry_of(ctx)
    if (conn := connect_of(ctx)) is not None:
        if src_qmp or dst_qmp or uri or pair_name or src_heartbeat or dst_heartbeat or heartbeat_log:
            raise UsageError("with -c, migrate takes DOMAIN --to URI; the --src-*/--dst-*/--uri options are "
                             "for QEMU pairs")  # fmt: skip
        if name is None or to_host is None:
            raise UsageError("with -c, give a DOMAIN and --to URI (the destination daemon)")
        report = run_domain(conn, name, to_host, opts, reg, migrate_uri, quiet, attach, postcopy_resume)
        _conclude(name, report, as_json)
        return
    if migrate_uri or postcopy_resume:
        raise UsageError("--migrateuri and --postcopy-resume go with -c URI (libvirt domains)")
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


@click.command()
@click.argument("name")
@click.option("--deadline", default=120.0, show_default=True, type=float,
              help="Keep retrying this long; then both QEMUs stay paused.")  # fmt: skip
@click.option("--to", "to_host", default=None, help="With -c: the destination daemon's URI.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.pass_context
def recover(
    ctx: click.Context, name: str, deadline: float, to_host: str | None, as_json: bool, quiet: bool
) -> None:
    """Recover NAME's paused post-copy migration (like virsh --postcopy-resume) and finish it."""
    reg = registry_of(ctx)
    opts = migration_options(
        "manual", None, None, None, True, 0, "127.0.0.1", False, recover_deadline=deadline
    )
    if (conn := connect_of(ctx)) is not None:
        if to_host is None:
            raise UsageError("with -c, recover needs --to URI (the destination daemon)")
        _conclude(name, run_domain(conn, name, to_host, opts, reg, None, quiet, True, True), as_json)
        return
    if to_host is not None:
        raise UsageError("--to goes with -c URI; livemig knows where its own VMs migrate")
    reg.load(name)
    _conclude(name, run_migration(name, opts, reg, None, quiet, attach=True), as_json)


def _conclude(name: str, report: MigrationReport, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json())
    else:
        out.print(summary_table([report], f"{name}: {report.status}"))
        if report.where:
            out.print(f"the VM is on the {report.where}")
    if report.status != "completed":
        why = report.error or (f"the VM is on the {report.where}" if report.where else "no reason given")
        raise MigrationFailed(f"{name}: migration {report.status}: {why}", phase=report.phase or "")


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

    if not quiet:
        err.print(f"{'taking over' if attach else 'migrating'} {name} ...")
    return run_with_progress(
        job, lambda: job.attach(opts.recover_deadline_s) if attach else job.run(),
        None if quiet else lambda ev: print_event(t0, ev),
    )  # fmt: skip


def run_pair(
    pair: QemuPair, opts: MigrationOptions, reg: Registry, quiet: bool = False, attach: bool = False
) -> MigrationReport:
    """Migrate a pair of QEMUs that another program started (see :mod:`livemig.pair`)."""
    t0 = time.time()
    job = PairMigration(pair, opts, reg)

    if not quiet:
        err.print(
            f"{'taking over' if attach else 'migrating'} {pair.src_qmp} -> {pair.dst_qmp} over {pair.uri} ..."
        )
    return run_with_progress(
        job, lambda: job.run(attach=attach), None if quiet else lambda ev: print_event(t0, ev)
    )


def _control_path(reg: Registry, name: str) -> Path:
    """The control socket of NAME's migration: a VM livemig manages, or a pair migrating
    in orchestrator mode (which has no record, only its socket)."""
    path = reg.control_socket(name)
    if not path.exists() and not reg.exists(name):
        raise NotMigrating(f"no VM named {name!r}, and no migration of that name is running")
    if reg.exists(name):
        reg.load(name)  # refuses another user's VM
    return path


@click.command()
@click.argument("name")
@click.pass_context
def postcopy(ctx: click.Context, name: str) -> None:
    """Switch NAME's running migration to post-copy; returns once QEMU confirms."""
    reply = request(_control_path(registry_of(ctx), name), name, "postcopy")
    out.print(f"{name}: {reply.get('state')}")


@click.command()
@click.argument("name")
@click.pass_context
def cancel(ctx: click.Context, name: str) -> None:
    """Cancel NAME's migration during pre-copy (the VM stays on the source)."""
    reply = request(_control_path(registry_of(ctx), name), name, "cancel")
    out.print(f"{name}: {reply.get('state')}")


@click.command()
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
    reg = registry_of(ctx)
    if name is None:
        err.print(f"following every VM's migrations in {reg.root} (Ctrl-C ends) ...")
        _follow_all(reg)
        return
    path = _control_path(reg, name)
    if wait and not path.exists():
        err.print(f"waiting for a migration of {name} to start ...")
    while wait and not path.exists():
        time.sleep(0.1)  # waiting for a migration to begin; events themselves are pushed
    for msg in stream(path, name, "events"):
        click.echo(json.dumps(_line(msg)))


def _line(msg: dict[str, Any]) -> dict[str, Any]:
    """One line of `livemig events`: an event, or the stream's end in the same shape (an
    event named ``end`` whose ``data.state`` is the migration's final state)."""
    if "event" in msg:
        event: dict[str, Any] = msg["event"]
        return event
    return {"name": "end", "data": {"state": msg.get("end")}, "qemu_ts": None, "delivered_ts": time.time(),
            "latency_ms": None}  # fmt: skip


def _follow_all(reg: Registry, scan_s: float = 0.2) -> None:
    """One reader thread per running migration; a scan finds migrations that begin."""
    lock = threading.Lock()
    followed: set[tuple[str, int]] = set()

    def follow(vm: str, path: Path) -> None:
        with contextlib.suppress(LivemigError, OSError):
            for msg in stream(path, vm, "events"):
                line = {"vm": vm, **_line(msg)}
                with lock:
                    click.echo(json.dumps(line))

    while True:
        for vm in sorted({*reg.names(), *(p.stem for p in reg.vms.glob("*.ctl"))}):
            path = reg.control_socket(vm)
            with contextlib.suppress(FileNotFoundError):
                key = (vm, path.stat().st_ino)
                if key not in followed:
                    followed.add(key)
                    threading.Thread(target=follow, args=(vm, path), daemon=True).start()
        time.sleep(scan_s)


def _jobinfo_lines(info: dict[str, Any]) -> list[str]:
    mib = 2**20

    def size(v: Any) -> str:
        return f"{v / mib:.1f} MiB" if v is not None else "-"

    def rate(v: Any) -> str:
        return f"{v / mib:.1f} MiB/s" if v is not None else "-"

    decision = info.get("decision") or {}
    rows = [
        ("Phase", info["phase"]), ("Policy", info["policy"]), ("Pass", info["pass"]),
        ("Elapsed", f"{info['elapsed_s']:.1f} s" if info.get("elapsed_s") is not None else "-"),
        ("Transferred", size(info.get("transferred_bytes"))), ("Remaining", size(info.get("remaining_bytes"))),
        ("Throughput", rate(info.get("throughput_Bps"))), ("Dirty rate", rate(info.get("dirty_rate_Bps"))),
        ("Downtime limit", f"{info.get('downtime_limit_ms')} ms"),
        ("Decision", f"{decision.get('action')}: {decision.get('reason')}" if decision else "-"),
    ]  # fmt: skip
    return [f"{k + ':':<16}{v}" for k, v in rows]


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_context
def jobinfo(ctx: click.Context, name: str, as_json: bool) -> None:
    """NAME's running migration, like virsh domjobinfo: phase, pass, elapsed, bytes, rates,
    and the policy's current decision with its reason."""
    info = request(_control_path(registry_of(ctx), name), name, "jobinfo")["jobinfo"]
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for line in _jobinfo_lines(info):
        out.print(line)


@click.command("migrate-setspeed")
@click.argument("name")
@click.argument("rate")
@click.option("--postcopy", is_flag=True, help="Cap post-copy's background stream instead.")
@click.pass_context
def migrate_setspeed(ctx: click.Context, name: str, rate: str, postcopy: bool) -> None:
    """Change NAME's migration bandwidth while it runs (RATE: bytes/s with K/M/G, binary,
    as 25M; or tc-style, as 200mbit; a bare number is bytes/s). Like virsh migrate-setspeed."""
    value = parse_rate(rate, "RATE")
    key = "postcopy_bandwidth" if postcopy else "max_bandwidth"
    reply = request(_control_path(registry_of(ctx), name), name, "tune", **{key: value})
    out.print(
        f"{name}: {'post-copy ' if postcopy else ''}bandwidth {value / 2**20:.1f} MiB/s ({reply['state']})"
    )


@click.command("migrate-setmaxdowntime")
@click.argument("name")
@click.argument("ms", type=click.IntRange(1, 60_000))
@click.pass_context
def migrate_setmaxdowntime(ctx: click.Context, name: str, ms: int) -> None:
    """Change NAME's pre-copy downtime limit (MS, milliseconds) while it runs. Like virsh
    migrate-setmaxdowntime."""
    reply = request(_control_path(registry_of(ctx), name), name, "tune", downtime_limit_ms=ms)
    out.print(f"{name}: downtime limit {ms} ms ({reply['state']})")
