"""The QEMU backend: two QEMUs over QMP (qemu.qmp), one migration between them."""

from livemig.backends.qemu.backend import Endpoint, QemuBackend
from livemig.backends.qemu.models import parse_event, parse_migration_info
from livemig.backends.qemu.negotiate import wanted_caps

__all__ = ["Endpoint", "QemuBackend", "parse_event", "parse_migration_info", "wanted_caps"]
