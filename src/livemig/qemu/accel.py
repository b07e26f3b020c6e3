"""Choosing the accelerator. ``auto`` picks KVM only after proving that KVM can
boot a guest here (within a timeout), and caches that verdict; otherwise TCG.

On some hosts /dev/kvm opens and KVM_CREATE_VM works, yet the vCPU never runs a
guest instruction: only a real boot tells.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from livemig.errors import EnvironmentProblem, LivemigError, SpecError
from livemig.paths import cache_dir
from livemig.qemu.binary import QemuBinary
from livemig.qemu.instance import QemuInstance
from livemig.spec import VMSpec

__all__ = ["Verdict", "accel_reason", "cached_verdict", "kvm_verdict", "probe_spec", "resolve_accel"]

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 20.0


def _cache_key(qemu: QemuBinary) -> str:
    return f"{qemu.path}|{qemu.version_str}|{os.uname().release}"


@dataclass(frozen=True)
class Verdict:
    """Whether KVM can run a guest here, why, and whether that is KVM's own verdict (only
    those are cached: a probe that failed for another reason is tried again next time)."""

    ok: bool
    why: str
    kvms_own: bool = True


def probe_spec(spec: VMSpec) -> VMSpec:
    """The probe's guest: the VM's kernel and initrd, and nothing that could fail for a
    reason of its own (no NICs, whose bridge may be missing; no disks; no extra args)."""
    return spec.with_changes(name="kvm-probe", memory_mib=128, vcpus=1, nics=(), disks=(), extra_args=(),
                             firmware=None, heartbeat=True)  # fmt: skip


def _probe_kvm(qemu: QemuBinary, spec: VMSpec) -> Verdict:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Verdict(False, "/dev/kvm is missing or not accessible")
    with tempfile.TemporaryDirectory(prefix="lmkvm") as tmp:
        try:
            inst = QemuInstance.spawn(qemu, probe_spec(spec), "kvm", Path(tmp))
        except (LivemigError, OSError) as exc:
            text = str(exc)
            return Verdict(False, f"QEMU would not start with KVM: {text}", "kvm" in text.lower())
        try:
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while time.monotonic() < deadline:
                text = inst.paths.console.read_text(errors="replace") if inst.paths.console.exists() else ""
                if "livemig-guest: ready" in text:
                    return Verdict(True, "a guest booted under KVM")
                if not inst.alive():
                    tail = inst.log_tail(1)
                    return Verdict(False, f"QEMU exited under KVM: {tail}", "kvm" in tail.lower())
                time.sleep(0.1)
            return Verdict(False, f"a guest did not boot under KVM within {PROBE_TIMEOUT_S:g}s")
        finally:
            inst.kill()


def verdict_path() -> Path:
    return cache_dir() / "kvm-verdict.json"


def cached_verdict(qemu: QemuBinary) -> Verdict | None:
    """The cached verdict for this QEMU and kernel, if any."""
    try:
        cached = json.loads(verdict_path().read_text())
        # older caches recorded any failure as KVM's: only an entry marked as KVM's own counts
        if cached.get("key") == _cache_key(qemu) and cached.get("kvms_own") is True:
            return Verdict(bool(cached["ok"]), str(cached["why"]) + " (cached)")
    except (OSError, ValueError, KeyError):
        pass
    return None


def kvm_verdict(qemu: QemuBinary, spec: VMSpec, recheck: bool = False) -> tuple[bool, str]:
    """Whether KVM can run a guest here; probed once, then cached (KVM's own verdicts only).
    ``recheck``: probe again, whatever the cache says."""
    if not recheck and (cached := cached_verdict(qemu)) is not None:
        return cached.ok, cached.why
    v = _probe_kvm(qemu, spec)
    log.info("KVM probe: %s", v.why)
    path = verdict_path()
    if v.kvms_own:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": _cache_key(qemu), "ok": v.ok, "why": v.why, "kvms_own": True,
                                    "at": time.time()}))  # fmt: skip
    else:  # not KVM's fault: nothing is remembered, the next start probes again
        path.unlink(missing_ok=True)
        log.warning("KVM probe failed for another reason than KVM (not cached): %s", v.why)
    return v.ok, v.why


def accel_reason(requested: str, chosen: str, qemu: QemuBinary) -> str:
    """One line: why ``chosen`` (after :func:`resolve_accel`)."""
    env = os.environ.get("LIVEMIG_ACCEL")
    if requested == "auto" and env:
        return f"LIVEMIG_ACCEL={env}"
    if requested == chosen == "tcg":
        return "asked for"
    v = cached_verdict(qemu)
    if chosen == "kvm":
        return f"auto: {v.why}" if v else "auto: KVM runs guests here"
    return f"auto: KVM cannot run a guest here ({v.why if v else 'probe failed'}); `livemig accel --recheck` re-tests"


def resolve_accel(requested: str, qemu: QemuBinary, spec: VMSpec) -> str:
    """``tcg`` or ``kvm``, from ``auto``/``tcg``/``kvm``."""
    env = os.environ.get("LIVEMIG_ACCEL")
    if requested == "auto" and env:
        requested = env
    if requested == "tcg":
        return "tcg"
    if requested not in ("auto", "kvm"):
        raise SpecError("accel", f"{requested!r} is not one of auto, tcg, kvm")
    ok, why = kvm_verdict(qemu, spec)
    if ok:
        return "kvm"
    if requested == "kvm":
        raise EnvironmentProblem(f"KVM cannot run a guest on this host ({why}); use --accel tcg")
    log.info("accel auto -> tcg: %s", why)
    return "tcg"
