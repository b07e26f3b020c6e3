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
from pathlib import Path

from livemig.errors import EnvironmentProblem, LivemigError, SpecError
from livemig.paths import cache_dir
from livemig.qemu.binary import QemuBinary
from livemig.qemu.instance import QemuInstance
from livemig.spec import VMSpec

__all__ = ["kvm_verdict", "resolve_accel"]

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 20.0


def _cache_key(qemu: QemuBinary) -> str:
    return f"{qemu.path}|{qemu.version_str}|{os.uname().release}"


def _probe_kvm(qemu: QemuBinary, spec: VMSpec) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="lmkvm") as tmp:
        probe = spec.with_changes(name="kvm-probe", memory_mib=128, vcpus=1)
        try:
            inst = QemuInstance.spawn(qemu, probe, "kvm", Path(tmp))
        except (LivemigError, OSError) as exc:
            return False, f"QEMU would not start with KVM: {exc}"
        try:
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while time.monotonic() < deadline:
                text = inst.paths.console.read_text(errors="replace") if inst.paths.console.exists() else ""
                if "livemig-guest: ready" in text:
                    return True, "a guest booted under KVM"
                if not inst.alive():
                    return False, f"QEMU exited under KVM: {inst.log_tail(1)}"
                time.sleep(0.1)
            return False, f"a guest did not boot under KVM within {PROBE_TIMEOUT_S:g}s"
        finally:
            inst.kill()


def kvm_verdict(qemu: QemuBinary, spec: VMSpec) -> tuple[bool, str]:
    """Whether KVM can run a guest here; probed once, then cached."""
    path = cache_dir() / "kvm-verdict.json"
    key = _cache_key(qemu)
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return bool(cached["ok"]), str(cached["why"]) + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    ok, why = _probe_kvm(qemu, spec)
    log.info("KVM probe: %s", why)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "ok": ok, "why": why, "at": time.time()}))
    return ok, why


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
