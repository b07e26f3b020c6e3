"""Switch-over policies: pure decisions over a frozen progress snapshot.

A policy never does I/O. The core (:mod:`livemig.core`) calls :meth:`Policy.decide` with a
:class:`Progress` whenever a pass ends (a pushed ``MIGRATION_PASS`` event) and
on its progress ticks; every decision carries its reason, which is logged and
reported. Policy strings (``--policy``):

==================  ===========================================================
``auto``            adaptive, the default (see :mod:`livemig.policy.auto`); ``auto:max-pause=100ms,budget=120s``
``precopy``         never switches; gives up after ``timeout`` seconds (default 120)
``manual``          post-copy allowed, only when ``start_postcopy()`` is called
``postcopy-now``    switches at once
``postcopy-after:N`` switches after N completed pre-copy passes (N >= 1); ``postcopy-after``: N = 1.
``postcopy-after:F`` a share 0 < F < 1: switches within the first pass, once it has
                    covered F of the guest's memory (QEMU sends it in address order)
==================  ===========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from livemig.errors import PolicyError
from livemig.policy.auto import AutoParams, decide_auto
from livemig.policy.snapshot import Action, Decision, PassStat, Progress

__all__ = [
    "DEFAULT_POLICY",
    "KINDS",
    "Action",
    "AutoParams",
    "Decision",
    "PassStat",
    "Policy",
    "Progress",
    "parse_policy",
]


KINDS: Final = ("precopy", "manual", "postcopy-now", "postcopy-after", "auto")


@dataclass(frozen=True)
class Policy:
    """A parsed policy. ``kind`` is one of :data:`KINDS`; ``n`` is the pass count of
    postcopy-after, or 0 with ``within`` the share of the first pass after which it switches."""

    kind: str
    n: int = 0
    within: float | None = None
    timeout_s: float = 120.0
    auto: AutoParams | None = None

    def __str__(self) -> str:
        if self.kind == "postcopy-after":
            return (
                f"postcopy-after:{self.within:g}" if self.within is not None else f"postcopy-after:{self.n}"
            )
        if self.kind == "auto" and self.auto is not None and self.auto != AutoParams():
            return f"auto:max-pause={self.auto.max_pause_ms:g}ms,budget={self.auto.budget_s:g}s"
        if self.kind == "precopy" and self.timeout_s != Policy("precopy").timeout_s:
            return f"precopy:timeout={self.timeout_s:g}"  # as given: it parses back the same
        return self.kind

    @property
    def adaptive(self) -> bool:
        """Decides on each pass's figures (and moves levers), not only on pass counts."""
        return self.kind == "auto"

    @property
    def allows_postcopy(self) -> bool:
        return self.kind != "precopy"

    @property
    def switches_at_once(self) -> bool:
        """Switches before any pass: pre-copy's bytes only come ahead of the switch."""
        return self.kind == "postcopy-now"

    def decide(self, p: Progress) -> Decision:
        if self.kind == "auto":
            return decide_auto(p, self.auto or AutoParams())
        if self.kind == "precopy":
            return self._precopy(p)
        if self.kind == "manual":
            return Decision(Action.CONTINUE, "manual: waiting for start_postcopy()")
        if self.kind == "postcopy-now":
            return Decision(Action.SWITCH, "postcopy-now: switch at once")
        return self._after(p)

    def _after(self, p: Progress) -> Decision:
        if self.within is not None:
            return self._within(p, self.within)
        if p.passes_done >= self.n:
            return Decision(
                Action.SWITCH, f"{p.passes_done} pre-copy pass(es) done, policy asks for {self.n}"
            )
        return Decision(Action.CONTINUE, f"{p.passes_done} of {self.n} pre-copy pass(es) done")

    @staticmethod
    def _within(p: Progress, share: float) -> Decision:
        if p.passes_done >= 1:
            return Decision(
                Action.SWITCH, f"the first pass ended before the policy's {share:.0%} of it was seen"
            )
        if p.remaining_bytes is None or not p.ram_bytes:
            return Decision(Action.CONTINUE, "the first pass has not reported its progress yet")
        covered = 1.0 - p.remaining_bytes / p.ram_bytes
        if covered >= share:
            return Decision(
                Action.SWITCH,
                f"the first pass covered {covered:.0%} of the guest's {p.ram_bytes / 2**20:.0f} MiB, "
                f"policy asks for {share:.0%}",
            )
        return Decision(Action.CONTINUE, f"the first pass covered {covered:.0%} of {share:.0%}")

    def _precopy(self, p: Progress) -> Decision:
        if p.elapsed_s >= self.timeout_s:
            return Decision(
                Action.ABORT,
                f"pre-copy has not converged after {p.elapsed_s:.1f}s "
                f"(limit {self.timeout_s:g}s); the VM stays on the source",
            )
        return Decision(Action.CONTINUE, "pre-copy only; waiting for convergence")


# auto: the lowest guest stall of every policy on every workload and link of the bench's
# policies family (docs/policies); it was postcopy-after:1 before 2026-12-01
DEFAULT_POLICY: Final = Policy("auto", auto=AutoParams())
_AFTER_RE: Final = re.compile(r"^postcopy-after(?::(.*))?$")
_PRECOPY_RE: Final = re.compile(r"^precopy(?::timeout=(.*))?$")


_AUTO_KEYS: Final = {"max-pause": "the pause target (100ms, 0.2s)", "budget": "the time budget (120s, 2m)"}


def _auto(text: str, raw: str) -> Policy:
    values: dict[str, float] = {}
    for item in filter(None, raw.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise PolicyError(text, f"{item!r}: expected KEY=VALUE, as in auto:max-pause=100ms")
        if key not in _AUTO_KEYS:
            raise PolicyError(text, f"unknown auto setting {key!r}; auto takes {', '.join(_AUTO_KEYS)}")
        try:
            values[key] = _seconds(value) * (1000.0 if key == "max-pause" else 1.0)
        except ValueError:
            raise PolicyError(text, f"{key}={value!r}: expected {_AUTO_KEYS[key]}") from None
    pause = values.get("max-pause", AutoParams.max_pause_ms)
    budget = values.get("budget", AutoParams.budget_s)
    if not 10 <= pause <= 10_000:
        raise PolicyError(text, "max-pause must be between 10ms and 10s")
    if not 1 <= budget <= 86400:
        raise PolicyError(text, "budget must be between 1s and 24h")
    return Policy("auto", auto=AutoParams(pause, budget))


def _seconds(value: str) -> float:
    """Seconds from 100ms, 2s, 2m, 1h (a plain number is seconds); ValueError if not."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", value)
    if m is None:
        raise ValueError(value)
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def _share(text: str, raw: str) -> float:
    """postcopy-after:F's share of the first pass, 0 < F < 1."""
    why = "N must be a whole number >= 1 (passes), or a share of the first pass between 0 and 1, as in 0.5"
    try:
        share = float(raw)
    except ValueError:
        raise PolicyError(text, why) from None
    if not 0 < share < 1:
        raise PolicyError(text, why)
    return share


def _after(text: str, raw: str | None) -> Policy:
    if raw is None:
        return Policy("postcopy-after", 1)
    if not raw.isdigit():
        return Policy("postcopy-after", 0, within=_share(text, raw))
    n = int(raw)
    if not 1 <= n <= 1000:
        raise PolicyError(text, "N must be between 1 and 1000 (use postcopy-now for 0)")
    return Policy("postcopy-after", n)


def parse_policy(text: str) -> Policy:
    """Parse a policy string (see the module docstring)."""
    t = text.strip()
    if t == "auto" or t.startswith("auto:"):
        return _auto(text, t[5:])
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
        return _after(text, m.group(1))
    raise PolicyError(text, "unknown; choose auto, precopy, manual, postcopy-now or postcopy-after:N|F")
