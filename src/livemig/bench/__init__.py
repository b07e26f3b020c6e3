"""``livemig bench``: policies compared side by side on the lab's shaped link."""

from livemig.bench.report import summarize, targets, write_report
from livemig.bench.runner import metrics_of, run_bench, run_once
from livemig.bench.scenarios import SCENARIOS, Cell, cells_for

__all__ = [
    "SCENARIOS",
    "Cell",
    "cells_for",
    "metrics_of",
    "run_bench",
    "run_once",
    "summarize",
    "targets",
    "write_report",
]
