import importlib
import threading
from pathlib import Path

import pytest

import livemig
from livemig.backends.qemu.connects import ss_argv
from livemig.errors import QemuTooOld
from livemig.qemu.argv import InstancePaths, build_argv
from livemig.qemu.binary import QemuBinary, parse_version
from livemig.spec import VMSpec
from livemig.sync import Portal


def test_destination_argv_is_source_plus_incoming(tmp_path: Path) -> None:
    spec = VMSpec("vm", kernel=tmp_path / "k", initrd=tmp_path / "i")
    src = build_argv(Path("qemu"), spec, "tcg", InstancePaths(tmp_path / "a"), incoming=False)
    dst = build_argv(Path("qemu"), spec, "tcg", InstancePaths(tmp_path / "a"), incoming=True)
    assert dst == [*src, "-incoming", "defer"]
    assert "-nodefaults" in src  # no VGA: its video RAM would migrate like guest RAM


def test_qemu_version_gate() -> None:
    assert parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)") == (10, 0, 2)
    old = QemuBinary(Path("q"), (7, 2, 22))
    with pytest.raises(QemuTooOld) as info:
        old.require_live_precopy("tcg")
    assert info.value.required == "9.0.0"
    old.require_live_precopy("kvm")
    QemuBinary(Path("q"), (10, 0, 2)).require_live_precopy("tcg")


@pytest.mark.parametrize(
    "module",
    ["livemig", "livemig.core", "livemig.core.backend", "livemig.backends.qemu", "livemig.pair", "livemig.qemu",
     "livemig.observe", "livemig.guest", "livemig.errors",
     "livemig.policy", "livemig.sync", "livemig.spec"],
)  # fmt: skip
def test_all_is_curated(module: str) -> None:
    mod = importlib.import_module(module)
    names = mod.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(mod, name), f"{module}.{name}"


def test_top_level_api() -> None:
    for name in ("SyncMigration", "MigrationJob", "MigrationReport", "parse_policy", "VMSpec", "start_vm"):
        assert name in livemig.__all__


def test_portal_refuses_its_own_thread() -> None:
    with Portal() as portal:
        errors: list[BaseException] = []

        async def inner() -> None:
            async def nothing() -> None:
                return None

            try:
                portal.call(nothing())
            except RuntimeError as exc:
                errors.append(exc)

        portal.call(inner())
        assert errors and "event-loop thread" in str(errors[0])

        results: list[int] = []

        async def value() -> int:
            return threading.get_ident()

        t = threading.Thread(target=lambda: results.append(portal.call(value())))
        t.start()
        t.join()
        assert results and results[0] != threading.get_ident()


@pytest.mark.parametrize("name", ["../escape", "a/b", "\x00", ".hidden", "x" * 41, ""])
def test_registry_refuses_names_that_are_not_vm_names(tmp_path: Path, name: str) -> None:
    from livemig.errors import VMNotFound
    from livemig.registry import Registry

    reg = Registry(tmp_path)
    with pytest.raises(VMNotFound):
        reg.load(name)
    with pytest.raises(VMNotFound), reg.lock(name):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["vms"]


def test_sync_migration_takes_the_options_policy_unless_told_otherwise() -> None:
    from livemig.core.options import MigrationOptions
    from livemig.policy import parse_policy
    from livemig.sync import SyncMigration

    for kwargs, expected in (
        ({"options": MigrationOptions(policy=parse_policy("precopy"))}, "precopy"),
        ({"options": MigrationOptions(policy=parse_policy("precopy")), "policy": "manual"}, "manual"),
        ({}, "auto"),
    ):
        mig = SyncMigration("vm", **kwargs)  # type: ignore[arg-type]
        try:
            assert str(mig._args[1].policy) == expected
        finally:
            mig.portal.close()


@pytest.mark.parametrize(
    ("host", "dst"),
    [("192.0.2.2", "192.0.2.2"), ("[2001:db8::2]", "[2001:db8::2]"), ("2001:db8::2", "[2001:db8::2]")],
)
def test_a_connecting_resume_is_withdrawn_in_the_qemus_namespace_only_to_its_address(
    host: str, dst: str
) -> None:
    argv = ss_argv(4242, host, 50123)
    assert argv[:2] == ["nsenter", "--net=/proc/4242/ns/net"]
    assert argv[2:] == ["ss", "-K", "-H", "-tn", "state", "syn-sent", "dst", dst, "dport", "=", ":50123"]
