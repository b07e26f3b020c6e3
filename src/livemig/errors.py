"""livemig's exceptions.

Every error livemig raises derives from :class:`LivemigError`, and carries
structured fields besides its message, so callers can act on it::

    LivemigError
     +-- UsageError              bad input from a user (exit code 2)
     |    +-- SpecError          .field: which field of a VM spec is wrong
     |    +-- PolicyError        .text: the policy string that did not parse
     |    +-- NoSuchHost         .host: a lab host that does not exist
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
     |    +-- QemuDied
     |    +-- QMPCommandError    .command, .error_class
     |    +-- AdoptRefused       .what: the part of a foreign QEMU that cannot be recreated
     +-- LibvirtCallError        .call, .code: a libvirt API call that failed (libvirt's code)
     +-- MigrationError          .state: the migration's state when it happened
          +-- StateError         .required: the states that would have allowed it
          +-- NotMigrating       no migration runs for that VM
          +-- MigrationFailed    .phase
          |    +-- RecoveryBlocked  no further attempt can recover post-copy (why in the message)
          +-- UnsafeCombination  a setting that would lose the VM on this QEMU

Every constructor passes all its arguments to ``super().__init__``, so an error can be
pickled, and rebuilt from ``(kind, args)`` on the far side of the control socket
(:func:`rebuild`) as the same class with the same exit code.

Lower layers' exceptions (qemu.qmp's, OSError) are mapped onto these at each
layer boundary with ``raise ... from exc``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "AdoptRefused",
    "EnvironmentProblem",
    "GuestImageMissing",
    "LabError",
    "LibvirtCallError",
    "LivemigError",
    "MigrationError",
    "MigrationFailed",
    "NoSuchHost",
    "NotMigrating",
    "PolicyError",
    "QMPCommandError",
    "QemuDied",
    "QemuNotFound",
    "QemuStartError",
    "QemuTooOld",
    "RecoveryBlocked",
    "SpecError",
    "StateError",
    "StorageError",
    "UnsafeCombination",
    "UnsupportedError",
    "UsageError",
    "VMError",
    "VMExists",
    "VMNotFound",
    "rebuild",
]


class LivemigError(Exception):
    """Base class of every livemig error. ``exit_code`` is what the CLI exits with;
    ``message`` is the one line a user sees (``str(exc)``)."""

    exit_code = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.message = str(args[0]) if args else ""

    def __str__(self) -> str:
        return self.message


class UsageError(LivemigError):
    """The input was wrong; nothing was started."""

    exit_code = 2


class SpecError(UsageError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = f"{field}: {message}"


class PolicyError(UsageError):
    def __init__(self, text: str, message: str) -> None:
        super().__init__(text, message)
        self.text = text
        self.message = f"policy {text!r}: {message}"


class NoSuchHost(UsageError):
    def __init__(self, host: str, message: str) -> None:
        super().__init__(host, message)
        self.host = host
        self.message = message


class EnvironmentProblem(LivemigError):
    """This host lacks something that livemig needs."""


class QemuNotFound(EnvironmentProblem):
    pass


class QemuTooOld(EnvironmentProblem):
    def __init__(self, version: str, required: str, why: str) -> None:
        super().__init__(version, required, why)
        self.version = version
        self.required = required
        self.message = f"QEMU {version} is too old: {why} (need >= {required})"


class UnsupportedError(EnvironmentProblem):
    def __init__(self, capability: str, message: str) -> None:
        super().__init__(capability, message)
        self.capability = capability
        self.message = message


class GuestImageMissing(EnvironmentProblem):
    pass


class StorageError(EnvironmentProblem):
    def __init__(self, disk: str, message: str) -> None:
        super().__init__(disk, message)
        self.disk = disk
        self.message = message


class LabError(EnvironmentProblem):
    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message, host)
        self.host = host


class VMError(LivemigError):
    def __init__(self, vm: str, message: str, *more: Any) -> None:
        super().__init__(vm, message, *more)
        self.vm = vm
        self.message = message


class VMNotFound(VMError):
    exit_code = 2


class VMExists(VMError):
    exit_code = 2


class QemuStartError(VMError):
    def __init__(self, vm: str, message: str, log: str = "") -> None:
        super().__init__(vm, message, log)
        self.log = log


class AdoptRefused(VMError):
    """A QEMU that livemig cannot take over safely; nothing was changed."""

    exit_code = 2

    def __init__(self, vm: str, what: str, message: str) -> None:
        super().__init__(vm, what, message)
        self.what = what
        self.message = f"{vm}: cannot adopt: {message}"


class QemuDied(VMError):
    pass


class QMPCommandError(VMError):
    def __init__(self, vm: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(vm, command, error_class, desc)
        self.command = command
        self.error_class = error_class
        self.desc = desc
        self.message = f"{vm}: QMP {command} failed: {desc}"


class LibvirtCallError(LivemigError):
    """A libvirt API call failed; ``code`` is libvirt's error number (VIR_ERR_*)."""

    def __init__(self, call: str, code: int, message: str) -> None:
        super().__init__(call, code, message)
        self.call = call
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.call}: {self.message}"


class MigrationError(LivemigError):
    def __init__(self, message: str, state: Any = None, *more: Any) -> None:
        super().__init__(message, state, *more)
        self.state = state


class StateError(MigrationError):
    """A method was called in a state that does not allow it."""

    def __init__(self, action: str, state: Any, required: Iterable[Any], why: str = "") -> None:
        req = tuple(required)
        super().__init__(action, state, req, why)
        names = ", ".join(str(getattr(s, "value", s)) for s in req)
        msg = f"cannot {action} in state {getattr(state, 'value', state)!s} (requires: {names})"
        self.message = f"{msg}: {why}" if why else msg
        self.action = action
        self.required = req


class NotMigrating(MigrationError):
    exit_code = 2


class MigrationFailed(MigrationError):
    def __init__(self, message: str, state: Any = None, phase: str = "") -> None:
        super().__init__(message, state, phase)
        self.phase = phase


class RecoveryBlocked(MigrationFailed):
    """Post-copy recovery cannot go on: the backend found that no further attempt can
    succeed (a destination whose QEMU no longer answers its manager). Both sides stay
    paused; retrying is pointless until what the message names is dealt with."""

    def __init__(self, message: str, state: Any = None, phase: str = "postcopy-paused") -> None:
        super().__init__(message, state, phase)


class UnsafeCombination(MigrationError):
    exit_code = 2


def rebuild(kind: str, args: Sequence[Any], message: str) -> LivemigError:
    """The error ``kind(*args)`` as raised on the far side of the control socket (enums
    arrive as their names); a kind this module does not know becomes a LivemigError."""
    cls = getattr(sys.modules[__name__], kind, None)
    if isinstance(cls, type) and issubclass(cls, LivemigError):
        try:
            return cls(*args)
        except TypeError:
            pass
    return LivemigError(message)
