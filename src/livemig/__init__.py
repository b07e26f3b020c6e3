"""livemig: live migration of QEMU virtual machines, post-copy done well.

Layers: QMP transport (qemu.qmp) -> :mod:`livemig.qemu` (the VM: processes, argv,
the QMP monitor) -> :mod:`livemig.core` (backend-neutral: state machine, event bus,
policy loop, recovery, report) <- :mod:`livemig.backends` (how the core reaches a pair
of hypervisors: ``backends.qemu``) ; :mod:`livemig.policy` (pure decisions) ->
:mod:`livemig.job` (a recorded VM), :mod:`livemig.pair` (a QEMU pair another program
started), :mod:`livemig.sync`, the CLI.
"""

from livemig.core import MigrationEvent, MigrationOptions, MigrationReport, MigrationState
from livemig.errors import LivemigError
from livemig.job import MigrationJob
from livemig.pair import PairMigration, QemuPair
from livemig.policy import Policy, parse_policy
from livemig.spec import VMSpec
from livemig.sync import Portal, SyncMigration
from livemig.vm import astart_vm, astop_vm, start_vm, stop_vm

__all__ = [
    "LivemigError",
    "MigrationEvent",
    "MigrationJob",
    "MigrationOptions",
    "MigrationReport",
    "MigrationState",
    "PairMigration",
    "Policy",
    "Portal",
    "QemuPair",
    "SyncMigration",
    "VMSpec",
    "astart_vm",
    "astop_vm",
    "parse_policy",
    "start_vm",
    "stop_vm",
]
