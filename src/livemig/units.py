"""Parsing rates, sizes and durations, and the bounds of a GSO size (pure)."""

from __future__ import annotations

import re
from typing import Final

from livemig.errors import UsageError

__all__ = [
    "GSO_MAX",
    "GSO_MIN",
    "check_gso_size",
    "format_rate",
    "parse_duration_ms",
    "parse_rate",
    "parse_size_bytes",
]

GSO_MIN: Final = 4096  # one page: the smallest GSO size livemig sets
GSO_MAX: Final = 65536  # the kernel's GSO size, as a veth is created

_RATE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)(/s)?\s*$")
_UNITS: Final[dict[str, float]] = {
    "": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9,
    "k": 1024, "m": 1024**2, "g": 1024**3,  # bare suffixes are binary, as in QEMU's max-bandwidth
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
        bare = (f"; a bare number is bytes/s: {m.group(1)}M is {m.group(1)} MiB/s, "
                f"{m.group(1)}mbit {m.group(1)} megabits/s") if not m.group(2) else ""  # fmt: skip
        raise UsageError(f"{what} {text!r}: out of range (1 KB/s to 1 TB/s){bare}")
    return value


def format_rate(bps: float) -> str:
    return f"{bps * 8 / 1e6:.0f} Mbit/s"


_SIZES: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "kbit": 128,
    "mbit": 128 * 1024,
}  # fmt: skip  (tc's units: kb is KiB, kbit is 1024 bits)
_TIMES: Final[dict[str, float]] = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_size_bytes(text: str, what: str = "size") -> int:
    """Bytes from tc-style sizes: ``256kb``, ``1mb``, ``1500``."""
    m = _RATE_RE.match(str(text))
    factor = _SIZES.get(m.group(2).lower()) if m and not m.group(3) else None
    if m is None or factor is None:
        raise UsageError(f"{what} {text!r}: not a size (examples: 256kb, 1mb, 1500)")
    value = int(float(m.group(1)) * factor)
    if not 1 <= value <= 2**31:
        raise UsageError(f"{what} {text!r}: out of range (1 byte to 2 GiB)")
    return value


def parse_duration_ms(text: str, what: str = "time") -> float:
    """Milliseconds from ``100ms``, ``1s``, ``500us`` (a plain number is ms)."""
    m = _RATE_RE.match(str(text))
    unit = (m.group(2).lower() or "ms") if m and not m.group(3) else None
    if m is None or unit not in _TIMES:
        raise UsageError(f"{what} {text!r}: not a duration (examples: 100ms, 1s, 500us)")
    value = float(m.group(1)) * _TIMES[unit]
    if not 0 < value <= 60_000:
        raise UsageError(f"{what} {text!r}: out of range (0 to 60s)")
    return value


def check_gso_size(value: int, what: str = "GSO size") -> int:
    """``value`` if it is a GSO size livemig sets (4 KiB to 64 KiB), else UsageError."""
    if not GSO_MIN <= value <= GSO_MAX:
        raise UsageError(f"{what} {value}: out of range ({GSO_MIN} to {GSO_MAX} bytes, 4kb to 64kb)")
    return value
