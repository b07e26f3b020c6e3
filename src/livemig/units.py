"""Parsing rates (pure)."""

from __future__ import annotations

import re
from typing import Final

from livemig.errors import UsageError

__all__ = ["format_rate", "parse_rate"]

_RATE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)(/s)?\s*$")
_UNITS: Final[dict[str, float]] = {
    "": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8,
}  # fmt: skip


def parse_rate(text: str, what: str = "rate") -> int:
    """Bytes per second from ``200mbit``, ``25MB/s``, ``1GiB``, or a plain number of bytes/s."""
    m = _RATE_RE.match(str(text))
    if not m:
        raise UsageError(f"{what} {text!r}: not a rate (examples: 200mbit, 25MB/s, 1000000)")
    factor = _UNITS.get(m.group(2).lower())
    if factor is None:
        raise UsageError(
            f"{what} {text!r}: unknown unit {m.group(2)!r} (bit, kbit, mbit, gbit, B, KB, MB, GB, KiB, MiB, GiB)"
        )
    value = int(float(m.group(1)) * factor)
    if value < 1000 or value > 10**12:
        raise UsageError(f"{what} {text!r}: out of range (1 KB/s to 1 TB/s)")
    return value


def format_rate(bps: float) -> str:
    return f"{bps * 8 / 1e6:.0f} Mbit/s"
