"""Capability and parameter negotiation for a QEMU pair: a pure choice
(:func:`wanted_caps`), then the QMP calls in the order QEMU needs (see NOTES):
destination capabilities, its parameters and TLS, ``migrate-incoming``; then the
source's capabilities and parameters."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Final

from livemig.backends.qemu.models import parse_capabilities, parse_listen_port
from livemig.core.backend import Negotiated
from livemig.core.options import MigrationOptions
from livemig.errors import MigrationFailed, QMPCommandError, UnsafeCombination, UnsupportedError, UsageError
from livemig.qemu.binary import MULTIFD_POSTCOPY_MIN
from livemig.qemu.monitor import Monitor

__all__ = ["DEFAULT_PARAMS", "MANAGED_CAPS", "negotiate", "wanted_caps"]

MANAGED_CAPS: Final = ("postcopy-ram", "postcopy-preempt", "postcopy-blocktime", "multifd")
# Parameters a QEMU keeps from an earlier migration are reset to QEMU's defaults unless asked for.
DEFAULT_PARAMS: Final[dict[str, Any]] = {
    "max-bandwidth": 128 << 20, "downtime-limit": 300, "max-postcopy-bandwidth": 0, "tls-creds": "",
}  # fmt: skip


def wanted_caps(
    opts: MigrationOptions,
    allows_postcopy: bool,
    src_caps: set[str],
    dst_caps: set[str],
    version: tuple[int, int, int],
) -> dict[str, bool]:
    """The capabilities to set on both sides (pure). Raises what cannot be had."""
    common = src_caps & dst_caps
    if allows_postcopy and "postcopy-ram" not in common:
        raise UnsupportedError(
            "postcopy-ram",
            f"policy {opts.policy} needs post-copy, but this QEMU lacks postcopy-ram "
            "(query-migrate-capabilities); use --policy precopy",
        )
    if "events" not in common:
        raise UnsupportedError("events", "QEMU lacks the 'events' migration capability")
    wanted: dict[str, bool] = {"events": True}
    if allows_postcopy:
        wanted["postcopy-ram"] = True
        preempt = opts.preempt
        if preempt is None:
            preempt = "postcopy-preempt" in common
        elif preempt and "postcopy-preempt" not in common:
            raise UnsupportedError("postcopy-preempt", "QEMU lacks postcopy-preempt")
        if preempt:
            wanted["postcopy-preempt"] = True
        if opts.blocktime and "postcopy-blocktime" in common:
            wanted["postcopy-blocktime"] = True
    # A QEMU keeps its capabilities from one migration to the next (a destination that
    # took a post-copy migration still has postcopy-ram on when it migrates out), and
    # a mismatch fails the stream: so every capability livemig manages is set, on or off.
    for cap in MANAGED_CAPS:
        if cap in common:
            wanted.setdefault(cap, False)
    if opts.multifd:
        if allows_postcopy and version < MULTIFD_POSTCOPY_MIN:
            raise UnsafeCombination(
                f"multifd with post-copy loses the VM on QEMU {'.'.join(map(str, version))} "
                "(the destination aborts at the switch); use one or the other, or QEMU >= 10.1"
            )
        wanted["multifd"] = True
    return wanted


def source_params(opts: MigrationOptions, allows_postcopy: bool, tls: dict[str, Any]) -> dict[str, Any]:
    """The source's migration parameters: QEMU's defaults unless asked for (pure)."""
    params: dict[str, Any] = {**DEFAULT_PARAMS, **tls}
    if opts.max_bandwidth is not None:
        params["max-bandwidth"] = opts.max_bandwidth
    if opts.downtime_limit_ms is not None:
        params["downtime-limit"] = opts.downtime_limit_ms
    if opts.postcopy_bandwidth is not None and allows_postcopy:
        params["max-postcopy-bandwidth"] = opts.postcopy_bandwidth
    return params


async def capabilities(mon: Monitor) -> set[str]:
    return set(parse_capabilities(await mon.execute("query-migrate-capabilities")))


async def _tls(src: Monitor, dst: Monitor, opts: MigrationOptions) -> dict[str, Any]:
    """x509 credentials on both sides (a fresh id each time); the destination's are set
    before it listens. Returns the source's parameters."""
    if opts.tls_dirs is None:
        return {}
    cid = f"lm-tls-{secrets.token_hex(3)}"
    src_dir, dst_dir = opts.tls_dirs
    for mon, d, role in ((dst, dst_dir, "server"), (src, src_dir, "client")):
        await mon.execute(
            "object-add",
            {"qom-type": "tls-creds-x509", "id": cid, "dir": d, "endpoint": role, "verify-peer": True},
        )
    await dst.execute("migrate-set-parameters", {"tls-creds": cid})
    return {"tls-creds": cid, "tls-hostname": opts.address}


async def incoming_uri(dst: Monitor, uri: str | None, opts: MigrationOptions) -> str:
    """``migrate-incoming`` on the destination; the URI the source must use."""
    listen = uri or f"tcp:{opts.address}:{opts.port}"
    try:
        await dst.execute("migrate-incoming", {"uri": listen})
    except QMPCommandError as exc:
        if uri is not None:
            raise UsageError(f"the destination cannot listen on {uri}: {exc.desc}") from exc
        raise MigrationFailed(f"destination cannot listen on {listen}: {exc.desc}", phase="setup") from exc
    if not listen.startswith("tcp:") or not listen.endswith(":0"):
        return listen
    port = parse_listen_port(await dst.execute("query-migrate"))
    return f"{listen.rsplit(':', 1)[0]}:{port}"


async def negotiate(
    src: Monitor,
    dst: Monitor,
    opts: MigrationOptions,
    allows_postcopy: bool,
    version: tuple[int, int, int],
    uri: str | None = None,
) -> Negotiated:
    """Set capabilities and parameters on both sides, start the destination's listener
    (on ``uri``, or on ``opts.address:opts.port``). Returns what was negotiated."""
    src_caps, dst_caps = await asyncio.gather(capabilities(src), capabilities(dst))
    caps = wanted_caps(opts, allows_postcopy, src_caps, dst_caps, version)
    arg = {"capabilities": [{"capability": k, "state": v} for k, v in caps.items()]}
    await dst.execute("migrate-set-capabilities", arg)
    announce = {f"announce-{k}": v for k, v in opts.announce.items()}
    if announce:
        await dst.execute("migrate-set-parameters", announce)
    tls = await _tls(src, dst, opts)
    target = await incoming_uri(dst, uri, opts)
    await src.execute("migrate-set-capabilities", arg)
    params = source_params(opts, allows_postcopy, tls)
    await src.execute("migrate-set-parameters", params)
    shown = {"source": params, "destination": announce}
    return Negotiated(target, caps, tls=opts.tls_dirs is not None, parameters=shown)
