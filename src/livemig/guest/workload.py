"""Guest workloads: parsing and validating ``MODE[:key=value,...]`` (pure logic).

The string travels to the guest on the kernel command line
(``livemig.workload=...``), where ``lmwork`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from livemig.errors import SpecError, UsageError
from livemig.units import parse_rate

__all__ = ["MODES", "Workload", "parse_workload"]

# mode -> {key: (min, max)} for numeric keys; "pattern" is the one string key.
_NUM: Final[dict[str, dict[str, tuple[int, int]]]] = {
    "idle": {"hb": (1, 1000)},
    # then/at: the rate becomes `then` MiB/s `at` seconds after the workload is ready
    "dirty": {"mib": (1, 65536), "rate": (0, 100000), "then": (0, 100000), "at": (0, 86400), "hb": (1, 1000)},
    "stream": {
        "fps": (1, 1000),
        "kib": (4, 65536),
        "ring": (1, 65536),
        "hb": (1, 1000),
    },
    "verify": {"mib": (1, 65536), "rate": (0, 100000), "seed": (0, 2**31 - 1), "hb": (1, 1000)},
    "faultprobe": {
        "mib": (1, 65536),
        "pages": (1, 10_000_000),
        "seed": (0, 2**31 - 1),
        "delay": (0, 60000),
        "hb": (1, 1000),
    },
    # a read-mostly working set: reads all of `mib` over and over, writes `rate` MiB/s of it
    "scan": {"mib": (1, 65536), "rate": (0, 100000), "hb": (1, 1000)},
}
MODES: Final = tuple(_NUM)
_RATES: Final = ("rate", "then")  # rates take the convention (a bare number is MiB/s)
_PATTERNS: Final = ("seq", "random")


@dataclass(frozen=True)
class Workload:
    """A guest workload: ``mode`` plus integer parameters (and ``pattern`` for dirty)."""

    mode: str = "idle"
    params: tuple[tuple[str, int | str], ...] = field(default=())

    def __str__(self) -> str:
        if not self.params:
            return self.mode
        return self.mode + ":" + ",".join(f"{k}={v}" for k, v in self.params)

    def get(self, key: str, default: int) -> int:
        for k, v in self.params:
            if k == key and isinstance(v, int):
                return v
        return default

    @property
    def footprint_mib(self) -> int:
        """Guest memory the workload allocates (MiB), to check it fits the VM."""
        if self.mode == "stream":
            return self.get("ring", 128)
        if self.mode in ("dirty", "verify", "faultprobe", "scan"):
            return self.get("mib", 64)
        return 0


def _whole(field_name: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SpecError(field_name, f"{key}={value!r} is not a whole number") from None


def _rate_mib(field_name: str, key: str, value: str) -> int:
    """A workload's write rate in whole MiB/s: a bare number is MiB/s (the guest's unit);
    livemig's rate convention is accepted too (``20M``, ``8MiB/s``, ``160mbit``)."""
    if value.isdigit():
        return int(value)
    try:
        rate = parse_rate(value, key)
    except UsageError as exc:
        raise SpecError(
            field_name, f"{key}={value!r}: a bare number is MiB/s; or 20M, 8MiB/s, 160mbit"
        ) from exc
    mib = round(rate / (1 << 20))
    if mib < 1:
        raise SpecError(field_name, f"{key}={value!r} is under 1 MiB/s, the workload's step")
    return mib


def parse_workload(text: str, field_name: str = "workload") -> Workload:
    """Parse ``MODE[:key=value,...]``; raise :class:`SpecError` naming what is wrong."""
    text = text.strip()
    mode, _, rest = text.partition(":")
    if mode not in _NUM:
        raise SpecError(field_name, f"unknown workload {mode!r} (choose from {', '.join(MODES)})")
    params: list[tuple[str, int | str]] = []
    seen: set[str] = set()
    for item in filter(None, rest.split(",")) if rest else ():
        key, eq, value = item.partition("=")
        if not eq:
            raise SpecError(field_name, f"{item!r} is not key=value")
        if key in seen:
            raise SpecError(field_name, f"{key} given twice")
        seen.add(key)
        if key == "pattern" and mode == "dirty":
            if value not in _PATTERNS:
                raise SpecError(field_name, f"pattern must be one of {', '.join(_PATTERNS)}")
            params.append((key, value))
            continue
        bounds = _NUM[mode].get(key)
        if bounds is None:
            allowed = sorted([*_NUM[mode], *(["pattern"] if mode == "dirty" else [])])
            raise SpecError(field_name, f"{mode} takes no {key!r} (it takes {', '.join(allowed)})")
        number = _rate_mib(field_name, key, value) if key in _RATES else _whole(field_name, key, value)
        lo, hi = bounds
        if not lo <= number <= hi:
            raise SpecError(field_name, f"{key}={number} is out of range [{lo}, {hi}]")
        params.append((key, number))
    return Workload(mode, tuple(params))
