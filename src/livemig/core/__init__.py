"""livemig's backend-neutral core: the state machine, the event bus, the policy loop,
recovery and the report. It drives a :class:`~livemig.core.backend.Backend` (see
:mod:`livemig.backends`) and never speaks QMP or libvirt itself."""

from livemig.core.backend import Backend, BackendEvent, EventKind, MigrationInfo, Negotiated
from livemig.core.bus import EventBus
from livemig.core.events import EVENT_NAMES, MigrationEvent, translate
from livemig.core.migration import Migration
from livemig.core.options import MigrationOptions
from livemig.core.recovery import Backoff, RecoveryStats
from livemig.core.report import MigrationReport
from livemig.core.state import MigrationState, StateMachine

__all__ = [
    "EVENT_NAMES",
    "Backend",
    "BackendEvent",
    "Backoff",
    "EventBus",
    "EventKind",
    "Migration",
    "MigrationEvent",
    "MigrationInfo",
    "MigrationOptions",
    "MigrationReport",
    "MigrationState",
    "Negotiated",
    "RecoveryStats",
    "StateMachine",
    "translate",
]
