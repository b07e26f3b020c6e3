"""livemig's exceptions.

Every error livemig raises derives from :class:`LivemigError`, and carries
structured fields besides its message, so callers can act on it::

    LivemigError
     +-- UsageError              bad input from a user (exit code 2)
     |    +-- SpecError          .field: which field of a VM spec is wrong
     |    +-- PolicyError        .text: the policy string that did not parse
     +-- EnvironmentProblem      the host cannot do what was asked
     |    +-- QemuNotFound
     |    +-- QemuTooOld         .version, .required
     |    +-- UnsupportedError   .capability: a QEMU capability that is missing
     |    +-- GuestImageMissing
     |    +-- LabError           .host: the lab host concerned, if one
     |    +-- StorageError       .disk: a disk the destination cannot open (not shared)
     +-- VMError                 .vm: the VM's name
     |    +-- VMNotFound
     |    +-- VMExists
     |    +-- QemuStartError     .log: the tail of QEMU's stderr
     |    +-- QemuDied           .returncode
     |    +-- QMPCommandError    .command, .error_class
     |    +-- AdoptRefused       .what: the part of a foreign QEMU that cannot be recreated
     +-- MigrationError          .state: the migration's state when it happened
          +-- StateError         .required: the states that would have allowed it
          +-- NotMigrating       no migration runs for that VM
          +-- MigrationFailed    .phase, .report (where one exists)
          +-- UnsafeCombination  a setting that would lose the VM on this QEMU

Lower layers' exceptions (qemu.qmp's, OSError) are mapped onto these at each
layer boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "AdoptRefused",
    "EnvironmentProblem",
    "GuestImageMissing",
    "LabError",
    "LivemigError",
    "MigrationError",
    "MigrationFailed",
    "NotMigrating",
    "PolicyError",
    "QMPCommandError",
    "QemuDied",
    "QemuNotFound",
    "QemuStartError",
    "QemuTooOld",
    "SpecError",
    "StateError",
    "StorageError",
    "UnsafeCombination",
    "UnsupportedError",
    "UsageError",
    "VMError",
    "VMExists",
    "VMNotFound",
]


class LivemigError(Exception):
    """Base class of every livemig error. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(LivemigError):
    """The input was wrong; nothing was started."""

    exit_code = 2


class SpecError(UsageError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PolicyError(UsageError):
    def __init__(self, text: str, message: str) -> None:
        super().__init__(f"policy {text!r}: {message}")
        self.text = text


class EnvironmentProblem(LivemigError):
    """This host lacks something that livemig needs."""


class QemuNotFound(EnvironmentProblem):
    pass


class QemuTooOld(EnvironmentProblem):
    def __init__(self, version: str, required: str, why: str) -> None:
        super().__init__(f"QEMU {version} is too old: {why} (need >= {required})")
        self.version = version
        self.required = required


class UnsupportedError(EnvironmentProblem):
    def __init__(self, capability: str, message: str) -> None:
        super().__init__(message)
        self.capability = capability


class GuestImageMissing(EnvironmentProblem):
    pass


class StorageError(EnvironmentProblem):
    def __init__(self, disk: str, message: str) -> None:
        super().__init__(message)
        self.disk = disk


class LabError(EnvironmentProblem):
    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host


class VMError(LivemigError):
    def __init__(self, vm: str, message: str) -> None:
        super().__init__(message)
        self.vm = vm


class VMNotFound(VMError):
    exit_code = 2


class VMExists(VMError):
    exit_code = 2


class QemuStartError(VMError):
    def __init__(self, vm: str, message: str, log: str = "") -> None:
        super().__init__(vm, message)
        self.log = log


class AdoptRefused(VMError):
    """A QEMU that livemig cannot take over safely; nothing was changed."""

    exit_code = 2

    def __init__(self, vm: str, what: str, message: str) -> None:
        super().__init__(vm, f"{vm}: cannot adopt: {message}")
        self.what = what


class QemuDied(VMError):
    def __init__(self, vm: str, message: str, returncode: int | None = None) -> None:
        super().__init__(vm, message)
        self.returncode = returncode


class QMPCommandError(VMError):
    def __init__(self, vm: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(vm, f"{vm}: QMP {command} failed: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class MigrationError(LivemigError):
    def __init__(self, message: str, state: Any = None) -> None:
        super().__init__(message)
        self.state = state


class StateError(MigrationError):
    """A method was called in a state that does not allow it."""

    def __init__(self, action: str, state: Any, required: Iterable[Any], why: str = "") -> None:
        req = tuple(required)
        names = ", ".join(str(getattr(s, "value", s)) for s in req)
        msg = f"cannot {action} in state {getattr(state, 'value', state)!s} (requires: {names})"
        if why:
            msg += f": {why}"
        super().__init__(msg, state)
        self.action = action
        self.required = req


class NotMigrating(MigrationError):
    exit_code = 2


class MigrationFailed(MigrationError):
    def __init__(self, message: str, state: Any = None, phase: str = "", report: Any = None):
        super().__init__(message, state)
        self.phase = phase
        self.report = report


class UnsafeCombination(MigrationError):
    exit_code = 2
