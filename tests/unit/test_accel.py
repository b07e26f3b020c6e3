"""The accelerator's verdict cache: only KVM's own failures are remembered; a probe that
failed for another reason (a missing bridge) is tried again; `--recheck` probes anyway.
The probe itself is replaced here (it boots a real guest: the integration tests run it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livemig.qemu import accel
from livemig.qemu.accel import Verdict, accel_reason, cached_verdict, kvm_verdict, probe_spec
from livemig.qemu.binary import QemuBinary
from livemig.spec import Disk, Nic, VMSpec

QEMU = QemuBinary(Path("/usr/bin/qemu-system-x86_64"), (10, 0, 2))
SPEC = VMSpec("web", nics=(Nic("bridge:lmbr0"),), disks=(Disk(Path("/d.img")),), extra_args=("-S",))


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Verdict]:
    """The verdicts the probe will give, in order; each call takes the next."""
    monkeypatch.setenv("LIVEMIG_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LIVEMIG_ACCEL", raising=False)
    queue: list[Verdict] = []
    monkeypatch.setattr(accel, "_probe_kvm", lambda qemu, spec: queue.pop(0))
    return queue


def test_only_kvms_own_failures_are_cached(probes: list[Verdict]) -> None:
    probes += [Verdict(False, "QEMU would not start with KVM: no bridge 'lmbr0'", kvms_own=False),
               Verdict(False, "a guest did not boot under KVM within 20s")]  # fmt: skip
    assert kvm_verdict(QEMU, SPEC) == (False, "QEMU would not start with KVM: no bridge 'lmbr0'")
    assert cached_verdict(QEMU) is None  # not KVM's fault: probed again next time
    assert kvm_verdict(QEMU, SPEC) == (False, "a guest did not boot under KVM within 20s")
    assert kvm_verdict(QEMU, SPEC) == (False, "a guest did not boot under KVM within 20s (cached)")
    assert probes == []  # the third call did not probe


def test_recheck_probes_again_and_old_caches_are_ignored(probes: list[Verdict], tmp_path: Path) -> None:
    old = {"key": accel._cache_key(QEMU), "ok": False, "why": "QEMU would not start: no bridge"}
    (tmp_path / "kvm-verdict.json").write_text(json.dumps(old))  # written before kvms_own existed
    assert cached_verdict(QEMU) is None
    probes += [Verdict(True, "a guest booted under KVM"), Verdict(False, "/dev/kvm is missing")]
    assert kvm_verdict(QEMU, SPEC) == (True, "a guest booted under KVM")
    assert kvm_verdict(QEMU, SPEC, recheck=True) == (False, "/dev/kvm is missing")


def test_the_reason_line(probes: list[Verdict]) -> None:
    assert accel_reason("tcg", "tcg", QEMU) == "asked for"
    probes.append(Verdict(False, "a guest did not boot under KVM within 20s"))
    kvm_verdict(QEMU, SPEC)
    line = accel_reason("auto", "tcg", QEMU)
    assert line.startswith("auto: KVM cannot run a guest here (a guest did not boot") and "--recheck" in line


def test_the_probe_guest_has_nothing_that_fails_for_its_own_reasons() -> None:
    p = probe_spec(SPEC)
    assert p.nics == () and p.disks == () and p.extra_args == () and p.memory_mib == 128
