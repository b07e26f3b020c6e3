"""livemig: live migration of QEMU virtual machines, post-copy done well.

Layers: QMP transport (qemu.qmp) -> :mod:`livemig.qemu` (processes, argv,
capabilities) -> :mod:`livemig.core` (state machine, events, migration,
report) -> :mod:`livemig.policy` (pure decisions) -> :mod:`livemig.job`,
:mod:`livemig.sync`, the CLI.
"""

from livemig.core import MigrationEvent, MigrationOptions, MigrationReport, MigrationState
from livemig.errors import LivemigError
from livemig.job import MigrationJob
from livemig.policy import Policy, parse_policy
from livemig.spec import VMSpec
from livemig.sync import Portal, SyncMigration
from livemig.vm import start_vm, stop_vm

__all__ = [
    "LivemigError",
    "MigrationEvent",
    "MigrationJob",
    "MigrationOptions",
    "MigrationReport",
    "MigrationState",
    "Policy",
    "Portal",
    "SyncMigration",
    "VMSpec",
    "parse_policy",
    "start_vm",
    "stop_vm",
]
