"""The migration engine: state machine, events, the migration itself, its report."""

from livemig.engine.events import EVENT_NAMES, MigrationEvent, translate
from livemig.engine.migration import Endpoint, Migration, MigrationOptions
from livemig.engine.report import MigrationReport
from livemig.engine.state import MigrationState, StateMachine

__all__ = [
    "EVENT_NAMES",
    "Endpoint",
    "Migration",
    "MigrationEvent",
    "MigrationOptions",
    "MigrationReport",
    "MigrationState",
    "StateMachine",
    "translate",
]
