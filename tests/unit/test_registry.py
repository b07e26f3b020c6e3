"""The registry's records and locks (pure file logic)."""

from __future__ import annotations

from pathlib import Path

from livemig.qemu.instance import QemuInstance
from livemig.registry import MigrationRecord, Registry, VMRecord
from livemig.spec import VMSpec


def test_a_lock_taken_for_nothing_leaves_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with reg.lock("x"):
        assert (reg.vms / "x.lock").exists()
    assert not list(reg.vms.iterdir()), "a refused start must leave no lock file behind"


def test_records_round_trip_with_their_migration(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    inst = QemuInstance("vm", "a1", tmp_path / "a1", 4242, "tcg")
    dst = QemuInstance("vm", "b2", tmp_path / "b2", 4343, "tcg", incoming=True)
    rec = VMRecord("vm", VMSpec("vm"), inst, migration=MigrationRecord("postcopy", 99, dst, policy="auto"))
    reg.save(rec)
    back = reg.load("vm")
    assert back.migration == rec.migration and back.migration is not None
    assert back.migration.split and back.migration.unfinished and back.migration.dst == dst
    assert "`livemig recover vm`" in back.where
