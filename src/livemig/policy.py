"""Switch-over policies: pure decisions over a frozen progress snapshot.

A policy never does I/O. The engine calls :meth:`Policy.decide` with a
:class:`Progress` whenever a pass ends (a pushed ``MIGRATION_PASS`` event) and
on its progress ticks; every decision carries its reason, which is logged and
reported. Policy strings (``--policy``):

==================  ===========================================================
``precopy``         never switches; gives up after ``timeout`` seconds (default 120)
``manual``          post-copy allowed, only when ``start_postcopy()`` is called
``postcopy-now``    switches at once
``postcopy-after:N`` switches after N completed pre-copy passes (N >= 1). Default: N = 1.
==================  ===========================================================
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from livemig.errors import PolicyError

__all__ = [
    "DEFAULT_POLICY",
    "KINDS",
    "Action",
    "Decision",
    "Policy",
    "Progress",
    "parse_policy",
]


@dataclass(frozen=True)
class Progress:
    """What the engine knows when it asks a policy.

    ``passes_done`` counts completed pre-copy passes (QEMU's MIGRATION_PASS
    ``pass`` minus one). Rates are bytes per second; ``None`` when unknown.
    """

    passes_done: int
    elapsed_s: float
    remaining_bytes: int | None = None
    transferred_bytes: int | None = None
    dirty_rate_bps: float | None = None
    bandwidth_bps: float | None = None


class Action(enum.Enum):
    CONTINUE = "continue"
    SWITCH = "switch"
    ABORT = "abort"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str

    def __str__(self) -> str:
        return f"{self.action.value}: {self.reason}"


KINDS: Final = ("precopy", "manual", "postcopy-now", "postcopy-after")


@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``kind`` is one of :data:`KINDS`; ``n`` is the pass count of postcopy-after."""

    kind: str
    n: int = 0
    timeout_s: float = 120.0

    def __str__(self) -> str:
        return f"postcopy-after:{self.n}" if self.kind == "postcopy-after" else self.kind

    @property
    def allows_postcopy(self) -> bool:
        return self.kind != "precopy"

    def decide(self, p: Progress) -> Decision:
        if self.kind == "precopy":
            if p.elapsed_s >= self.timeout_s:
                return Decision(
                    Action.ABORT,
                    f"pre-copy has not converged after {p.elapsed_s:.1f}s "
                    f"(limit {self.timeout_s:g}s); the VM stays on the source",
                )
            return Decision(Action.CONTINUE, "pre-copy only; waiting for convergence")
        if self.kind == "manual":
            return Decision(Action.CONTINUE, "manual: waiting for start_postcopy()")
        if self.kind == "postcopy-now":
            return Decision(Action.SWITCH, "postcopy-now: switch at once")
        if p.passes_done >= self.n:
            return Decision(
                Action.SWITCH,
                f"{p.passes_done} pre-copy pass(es) done, policy asks for {self.n}",
            )
        return Decision(Action.CONTINUE, f"{p.passes_done} of {self.n} pre-copy pass(es) done")


DEFAULT_POLICY: Final = Policy("postcopy-after", 1)
_AFTER_RE: Final = re.compile(r"^postcopy-after(?::(.*))?$")
_PRECOPY_RE: Final = re.compile(r"^precopy(?::timeout=(.*))?$")


def parse_policy(text: str) -> Policy:
    """Parse a policy string (see the module docstring)."""
    t = text.strip()
    if t in ("manual", "postcopy-now"):
        return Policy(t)
    m = _PRECOPY_RE.match(t)
    if m:
        if m.group(1) is None:
            return Policy("precopy")
        try:
            timeout = float(m.group(1))
        except ValueError:
            raise PolicyError(text, "timeout must be a number of seconds") from None
        if not 1 <= timeout <= 86400:
            raise PolicyError(text, "timeout must be between 1 and 86400 seconds")
        return Policy("precopy", timeout_s=timeout)
    m = _AFTER_RE.match(t)
    if m:
        raw = m.group(1)
        if raw is None:
            return DEFAULT_POLICY
        if not raw.isdigit():
            raise PolicyError(text, "N must be a whole number >= 1, as in postcopy-after:1")
        n = int(raw)
        if not 1 <= n <= 1000:
            raise PolicyError(text, "N must be between 1 and 1000 (use postcopy-now for 0)")
        return Policy("postcopy-after", n)
    raise PolicyError(text, "unknown; choose precopy, manual, postcopy-now or postcopy-after:N")
