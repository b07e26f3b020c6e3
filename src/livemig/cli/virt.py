"""The CLI's libvirt side (``livemig -c URI ...``): domains and their migrations.

libvirt-python is imported only here and below, when ``-c`` is given."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from livemig.cli.progress import run_with_progress
from livemig.cli.render import err, print_event
from livemig.core.options import MigrationOptions
from livemig.core.report import MigrationReport
from livemig.errors import EnvironmentProblem
from livemig.registry import Registry
from livemig.spec import VMSpec

__all__ = ["domain_dirty_rate", "domain_list", "domain_start", "domain_stop", "run_domain"]


def _virt() -> Any:
    try:
        from livemig import virt
    except ImportError as exc:  # pragma: no cover - setup.sh installs it
        raise EnvironmentProblem(f"-c needs libvirt-python ({exc}); run scripts/setup.sh") from exc
    return virt


def domain_start(uri: str, spec: VMSpec, root: Path, wait: bool = True) -> str:
    """Define and start a transient domain from livemig's guest image; a line to print."""
    from livemig.qemu.accel import accel_reason, resolve_accel
    from livemig.qemu.binary import find_qemu
    from livemig.vm import fill_image

    virt = _virt()
    spec = fill_image(spec.validated(boot=False)).validated()  # bad input first, then the image
    accel = resolve_accel(spec.accel, find_qemu(), spec)
    full = virt.resolve_uri(uri, root)
    asyncio.run(virt.start_domain(full, spec, root, accel, wait))
    why = accel_reason(spec.accel, accel, find_qemu())
    return (f"started domain {spec.name} on {uri} ({accel}, {spec.memory_mib} MiB, workload {spec.workload})\n"
            f"  accelerator {accel}: {why}")  # fmt: skip


def domain_list(uri: str, root: Path) -> list[dict[str, Any]]:
    virt = _virt()
    rows: list[dict[str, Any]] = asyncio.run(virt.domain_rows(virt.resolve_uri(uri, root)))
    return rows


def domain_dirty_rate(uri: str, name: str, seconds: int, root: Path) -> tuple[int, float]:
    virt = _virt()
    measured: tuple[int, float] = asyncio.run(
        virt.measure_dirty_rate(virt.resolve_uri(uri, root), name, seconds)
    )
    return measured


def domain_stop(uri: str, name: str, root: Path) -> None:
    virt = _virt()
    asyncio.run(virt.stop_domain(virt.resolve_uri(uri, root), name))


def run_domain(
    uri: str,
    name: str,
    to: str,
    opts: MigrationOptions,
    reg: Registry,
    migrate_uri: str | None = None,
    quiet: bool = False,
    attach: bool = False,
    resume_only: bool = False,
) -> MigrationReport:
    """Migrate libvirt domain NAME from ``uri`` to ``to`` (or take its migration over)."""
    virt = _virt()
    target = virt.DomainTarget.resolve(name, uri, to, migrate_uri, reg.root)
    job = virt.DomainMigration(target, opts, reg)
    t0 = time.time()

    announced: list[bool] = []

    def show(ev: Any) -> None:
        if not announced:  # once the checks passed: bad input gets its one line only
            announced.append(True)
            err.print(f"migrating domain {name}: {uri} -> {to} ...")
        print_event(t0, ev)

    return run_with_progress(
        job, lambda: job.run(attach=attach, resume_only=resume_only), None if quiet else show
    )
