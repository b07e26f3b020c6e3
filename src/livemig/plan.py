"""``livemig plan``: a dry run. It measures the guest's dirty rate (QEMU's
``calc-dirty-rate``, page-sampling mode: it reads page hashes and changes nothing) and
takes the link's rate, then predicts per policy what a migration would cost, and what
``auto`` would decide, by running the auto policy itself on the predicted passes.

The model (pure, :func:`predict`): the first pass sends the guest's memory that is not
zero: QEMU sends a zero page as a flag, a page the guest never touched is not even
resident, and a guest's kernel zeroes the pages it hands out, so the first pass is the
present pages of the guest-RAM mapping of the source QEMU that are not all zero
(``/proc/PID/pagemap`` and ``/proc/PID/mem``; its resident bytes where the memory cannot
be read, the whole ``ram`` where neither can: the first model used it and over-estimated
idle guests' migrations 4-5x; resident alone counted 238 MiB where 98 MiB were not
zero). Each later pass sends what the one before
left dirty, ``dirty x pass time``, capped by the memory. QEMU weighs what is pending all
along a pass (its unsent rest plus what the guest dirtied since), so it stops the guest
inside the pass whose dirt would fit, once the downtime limit's worth at the link's rate
is left: the pause is that limit, plus the devices' state and hand-over
(:data:`SWITCH_MS`; predicting 0 for an idle guest was 80% off, this is 18% where the
link is the bottleneck). Where that happens inside the first pass, what is left is the
top of the guest's RAM, whose zero pages take no time: the pause is its non-zero bytes
(from the same scan of the guest's memory) plus what the guest dirtied.

Post-copy's pause is a blackout of tens of ms; what the guest then feels is its page
faults (:func:`postcopy_stall_ms`). Switched at once, the guest has nothing on the
destination, and runs again only once most of what it touches has come, mostly by the
background stream at the link's rate: its longest stall is the first pass's bytes at the
link's rate, up to :data:`HOT_NOW_BYTES`. Switched after a pass, it faults on the pages
its kernel and its processes dirtied since (what it touches next), one page request each,
and each request waits behind the background stream in the link's queue
(:func:`request_ms`). Which pages those are, this model cannot see (no access tracking in
this kernel: ``/sys/kernel/mm/page_idle`` is absent, and soft-dirty sees writes only), so
their number is calibrated (:data:`FAULTS_AFTER`): on one run of the policies family,
checked on another (docs/policies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from livemig.errors import LivemigError, QMPCommandError, UsageError
from livemig.policy import Action, AutoParams, PassStat, Policy, Progress
from livemig.policy.auto import QEMU_DEFAULT_LIMIT_MS, decide_auto, gso_cap, initial_limit_ms
from livemig.qemu.monitor import Monitor
from livemig.units import GSO_MAX

__all__ = [
    "FAULTS_AFTER", "HOT_NOW_BYTES", "POLICIES", "SWITCH_MS", "Measurement", "Prediction", "guest_ram",
    "measure_dirty_rate", "nonzero_bytes", "postcopy_stall_ms", "predict", "predict_policy", "present_runs",
    "ram_mappings", "request_ms", "resident_of", "top_profile",
]  # fmt: skip

MAX_PASSES: Final = 60
POLICIES: Final = ("precopy", "postcopy-now", "postcopy-after:1", "postcopy-after:2", "auto")
MIB: Final = float(1 << 20)
PAGE: Final = 4096
CHUNK: Final = 1 << 20
_ZERO: Final = bytes(PAGE)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    ram_bytes: int
    dirty_Bps: float
    link_Bps: float
    link_source: str  # where the link's rate came from
    resident_bytes: int | None = None  # of the guest's RAM, in the source QEMU (None: unknown)
    # Non-zero bytes in the top 1, 2, ... MiB of the guest's RAM (cumulative): the end of
    # QEMU's first pass, which goes up the guest's addresses (None: unknown).
    top_nonzero: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        """A measurement as :func:`dataclasses.asdict` recorded it (a bench run's ``plan``)."""
        top = d.get("top_nonzero")
        return cls(int(d["ram_bytes"]), float(d["dirty_Bps"]), float(d["link_Bps"]), str(d["link_source"]),
                   d.get("resident_bytes"), tuple(top) if top else None)  # fmt: skip

    @property
    def first_pass_bytes(self) -> float:
        """What the first pass sends: the resident guest RAM where known, else all of it."""
        if self.resident_bytes is None or self.resident_bytes <= 0:
            return float(self.ram_bytes)
        return float(min(self.ram_bytes, self.resident_bytes))

    def nonzero_in_top(self, size: float) -> float | None:
        """Non-zero bytes in the top ``size`` bytes of the guest's RAM (None: unknown)."""
        if not self.top_nonzero:
            return None
        mib = max(size, 0.0) / MIB
        whole = int(mib)
        if whole >= len(self.top_nonzero):
            return float(self.top_nonzero[-1])
        below = self.top_nonzero[whole - 1] if whole else 0
        return below + (self.top_nonzero[whole] - below) * (mib - whole)


@dataclass(frozen=True)
class Prediction:
    policy: str
    converges: bool
    passes: int  # pre-copy passes before the stop (or the switch)
    pause_ms: float | None  # the VM stopped: the stop-and-copy, or the switch's blackout
    total_s: float | None
    bytes: int | None
    note: str
    # the guest's longest stall: pre-copy's pause, or post-copy's blackout and fault stalls
    stall_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _passes(m: Measurement, limit_ms: float) -> list[tuple[float, float]]:
    """(start time, bytes to send) of each pre-copy pass, until what is left fits in the
    limit or it stops shrinking (at most MAX_PASSES)."""
    out: list[tuple[float, float]] = []
    t, left = 0.0, m.first_pass_bytes
    for _ in range(MAX_PASSES):
        out.append((t, left))
        if left <= m.link_Bps * limit_ms / 1000.0 and len(out) > 1:
            break
        took = left / m.link_Bps
        nxt = min(float(m.ram_bytes), m.dirty_Bps * took)
        t += took
        if len(out) > 2 and nxt >= left:
            break
        left = nxt
    return out


SWITCH_MS: Final = 25.0
"""What a pause costs besides the RAM left: the devices' state and the hand-over. Measured
here as the median blackout of ``postcopy-now``, which leaves no RAM to the pause: 24.7 ms
over the policies family's 48 runs (TCG)."""


def _precopy(m: Measurement, limit_ms: float, name: str) -> Prediction:
    passes = _passes(m, limit_ms)
    t_last, left = passes[-1]
    fits = left <= m.link_Bps * limit_ms / 1000.0
    sent = sum(b for _, b in passes)
    if not fits:
        return Prediction(name, False, len(passes), None, None, None,
                          f"does not converge: {left / MIB:.1f} MiB stays dirty (dirty {m.dirty_Bps / MIB:.1f} MiB/s "
                          f"vs link {m.link_Bps / MIB:.1f} MiB/s)")  # fmt: skip
    end, pending = t_last + left / m.link_Bps, left
    limit_bytes = m.link_Bps * limit_ms / 1000.0
    first = _stop_in_first_pass(m, passes, limit_bytes)
    if first is not None:
        end, pending = first
        sent = end * m.link_Bps
    elif len(passes) > 1 and passes[-2][1] > limit_bytes:
        # QEMU weighs what is pending all along a pass, not only at its end: it stops the
        # guest as soon as the pass's unsent rest plus what was dirtied meanwhile fits in
        # the limit, so the pass before the last ends early, with the limit's worth pending
        t0, size = passes[-2]
        into = (size - limit_bytes) / max(m.link_Bps - m.dirty_Bps, 1.0)
        pending = limit_bytes
        end = t0 + into + pending / m.link_Bps
        sent = sum(b for _, b in passes[:-2]) + m.link_Bps * into + pending
    pause = pending / m.link_Bps * 1000.0 + SWITCH_MS
    return Prediction(name, True, len(passes) - 1, round(pause, 1), round(end + SWITCH_MS / 1000, 2), int(sent),
                      f"converges after {len(passes) - 1} pass(es) with {pending / MIB:.2f} MiB left",
                      round(pause, 1))  # fmt: skip


def _stop_in_first_pass(
    m: Measurement, passes: list[tuple[float, float]], limit_bytes: float
) -> tuple[float, float] | None:
    """Where QEMU stops the guest inside its first pass, with the guest's RAM profile known:
    (when the stop-and-copy ends, the bytes it sends). QEMU counts what is pending in pages,
    4 KiB each, zero or not, and checks it between bursts of sending: it stops once the
    first pass's unsent rest plus what the guest dirtied behind it fits in the limit's
    worth. That rest is the top of the guest's RAM, and only its non-zero pages take time
    (a zero page goes as a flag): the pause is those, plus the dirt, at the link's rate.
    Measured (policies family, idle guest, 1 gbit): the limit's worth was 37.5 MB, the
    guest stopped with 10.8 MB pending, and the pause was 102 ms."""
    if len(passes) != 2 or passes[0][1] <= limit_bytes:
        return None
    dirt = min(m.dirty_Bps * passes[0][1] / m.link_Bps, limit_bytes)
    top = m.nonzero_in_top(limit_bytes - dirt)
    if top is None:
        return None
    return (passes[0][1] + dirt) / m.link_Bps, top + dirt


HOST_REQUEST_MS: Final = 0.41
"""A post-copy page request's cost on the hosts (TCG, userfaultfd, QEMU's threads): the
vCPU's wait per request on a 10 gbit link, which the stream never fills (docs/pacing)."""
QUEUE_BYTES: Final = 75_000
"""What a page's answer waits behind in the link's queue: about one TSO burst of the
background stream (docs/pacing: 2.9 ms a request more at 200 mbit, 0.63 ms at 1 gbit)."""
HOT_NOW_BYTES: Final = 117 * 1024 * 1024
"""Switched at once, what a guest must have before it runs again, at most: the median of
the bytes that came at the link's rate during the longest stall of ``postcopy-now`` on the
guests larger than that (stream, nonconverge, readmostly; policies family at 71cc629, both
links). Smaller guests wait for most of their memory (0.84-1.14x of the first pass)."""
FAULTS_AFTER: Final = (320, 220)
"""Page requests in the guest's longest stall, switched after 1 and after 2 or more
passes: the medians over the workloads of the policies family at 71cc629 (both links) of
the stall less the switch, over :func:`request_ms`. Checked on the family at a282cbf."""


def request_ms(link_Bps: float, gso_bytes: int = GSO_MAX) -> float:
    """What one post-copy page request costs the waiting vCPU on a link of ``link_Bps``:
    the hosts' own cost, plus the wait behind the background stream in the link's queue,
    about one GSO burst of it (:data:`QUEUE_BYTES` for the kernel's 64 KiB; auto caps it
    on slow links: :func:`~livemig.policy.auto.gso_cap`)."""
    return HOST_REQUEST_MS + QUEUE_BYTES * gso_bytes / GSO_MAX / link_Bps * 1000.0


def postcopy_stall_ms(m: Measurement, after: int, gso_bytes: int = GSO_MAX) -> float:
    """The guest's longest stall when post-copy starts after ``after`` pre-copy passes:
    the switch, then the wait for what the guest touches first (the module's docstring)."""
    if after == 0:
        return SWITCH_MS + min(m.first_pass_bytes, HOT_NOW_BYTES) / m.link_Bps * 1000.0
    return SWITCH_MS + FAULTS_AFTER[min(after, len(FAULTS_AFTER)) - 1] * request_ms(m.link_Bps, gso_bytes)


def _postcopy(m: Measurement, after: int, name: str, gso_bytes: int = GSO_MAX) -> Prediction:
    passes = _passes(m, 0.0)[: after + 1]
    t_switch, left = passes[-1] if after else (0.0, m.first_pass_bytes)
    sent = sum(b for _, b in passes[:-1]) + left
    return Prediction(name, True, after, None, round(t_switch + left / m.link_Bps, 2), int(sent),
                      f"switches after {after} pass(es); {left / MIB:.0f} MiB then arrive on demand and in the "
                      "background: a blackout of tens of ms, then the guest's page faults",
                      round(postcopy_stall_ms(m, after, gso_bytes), 1))  # fmt: skip


def _auto(m: Measurement, params: AutoParams) -> tuple[Prediction, list[str]]:
    """Run the auto policy itself on the predicted passes: its decisions, and where it ends."""
    limit = initial_limit_ms(params)
    reasons: list[str] = []
    stats: list[PassStat] = []
    for i, (t, left) in enumerate(_passes(m, limit)):
        n = i + 1
        if n >= 2:
            stats.append(PassStat(n, t, int(left), 0, m.dirty_Bps, m.link_Bps))
        snap = Progress(passes_done=n - 1, elapsed_s=t, passes=tuple(stats), downtime_limit_ms=limit)
        d = decide_auto(snap, params)
        reasons.append(f"pass {n}: {d}")
        limit = d.downtime_limit_ms or limit
        if d.action is Action.SWITCH:
            gso, why = gso_cap(m.link_Bps)
            p = _postcopy(m, n - 1, "auto", gso or GSO_MAX)
            note = f"switches at pass {n}: {d.reason}" + (f"; {why}" if gso else "")
            return replace(p, policy="auto", note=note), reasons
    p = _precopy(m, limit, "auto")
    return replace(p, policy="auto", note=f"stays in pre-copy: {p.note}"), reasons


def predict(
    m: Measurement, downtime_limit_ms: float = QEMU_DEFAULT_LIMIT_MS
) -> tuple[list[Prediction], list[str]]:
    """Each policy's prediction, and the auto policy's decisions on the predicted passes."""
    if m.link_Bps <= 0:
        raise UsageError("the link's rate must be positive")
    auto, reasons = _auto(m, AutoParams())
    out = [
        _precopy(m, downtime_limit_ms, "precopy"),
        _postcopy(m, 0, "postcopy-now"),
        _postcopy(m, 1, "postcopy-after:1"),
        _postcopy(m, 2, "postcopy-after:2"),
        auto,
    ]
    return out, reasons


def predict_policy(
    m: Measurement, policy: Policy, downtime_limit_ms: float = QEMU_DEFAULT_LIMIT_MS
) -> Prediction | None:
    """The prediction for one policy as given (``precopy:timeout=30``, ``postcopy-after:3``,
    ``auto:max-pause=100ms``); None for ``manual`` (a caller decides) and for a switch within
    the first pass (``postcopy-after:0.5``: which pages the guest touches first plan cannot
    see). A pre-copy whose predicted time exceeds its timeout is predicted cancelled."""
    if policy.kind == "manual" or policy.within is not None:
        return None  # a caller decides; or a switch within the first pass, which plan does not model
    if policy.kind == "auto":
        return _auto(m, policy.auto or AutoParams())[0]
    if policy.kind == "postcopy-now":
        return _postcopy(m, 0, str(policy))
    if policy.kind == "postcopy-after":
        return _postcopy(m, policy.n, str(policy))
    p = _precopy(m, downtime_limit_ms, str(policy))
    if p.total_s is not None and p.total_s > policy.timeout_s:
        return Prediction(p.policy, False, p.passes, None, None, None,
                          f"would converge after {p.total_s:.0f} s, past its {policy.timeout_s:g} s timeout")  # fmt: skip
    return p


def ram_mappings(smaps: str, ram_bytes: int) -> list[tuple[int, int, int]]:
    """The mappings in ``smaps`` (``/proc/PID/smaps``' text) whose size is the guest's RAM
    exactly, as (start, end, resident bytes): QEMU maps guest RAM as one block; its TCG
    code buffer and heap are other sizes (pure)."""
    out: list[tuple[int, int, int]] = []
    size_kb, current, matches = ram_bytes // 1024, (0, 0), False
    for line in smaps.splitlines():
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            lo, _, hi = head.partition("-")
            current, matches = (int(lo, 16), int(hi, 16)), False
        elif head == "Size:":
            matches = int(line.split()[1]) == size_kb
        elif head == "Rss:" and matches:
            out.append((*current, int(line.split()[1]) * 1024))
    return out


def resident_of(smaps: str, ram_bytes: int) -> int | None:
    """The resident bytes of the guest's RAM mappings in ``smaps``; None if none (pure)."""
    found = ram_mappings(smaps, ram_bytes)
    return sum(rss for *_, rss in found) if found else None


def present_runs(pagemap: bytes, start: int) -> list[tuple[int, int]]:
    """Runs (address, length) of present pages from ``pagemap`` entries (8 bytes a page,
    bit 63 present, bit 62 swapped) for pages from ``start`` (pure)."""
    entries = memoryview(pagemap).cast("Q")
    runs: list[tuple[int, int]] = []
    for i, e in enumerate(entries):
        if e >> 62 & 0b11:
            addr = start + i * PAGE
            if runs and runs[-1][0] + runs[-1][1] == addr:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
            else:
                runs.append((addr, PAGE))
    return runs


def nonzero_bytes(data: bytes) -> int:
    """The bytes of the pages of ``data`` that are not all zero: what QEMU's first pass
    sends (a zero page goes as a flag) (pure)."""
    n = 0
    for off in range(0, len(data), PAGE):
        page = data[off : off + PAGE]
        if page != _ZERO[: len(page)]:
            n += len(page)
    return n


def top_profile(per_mib: list[int]) -> tuple[int, ...]:
    """Non-zero bytes per MiB in address order -> non-zero bytes in the top 1, 2, ... MiB
    (cumulative from the highest address) (pure)."""
    out, total = [], 0
    for n in reversed(per_mib):
        total += n
        out.append(total)
    return tuple(out)


def guest_ram(pid: int, ram_bytes: int) -> tuple[int | None, tuple[int, ...] | None]:
    """What the first pass of QEMU ``pid``'s guest RAM sends: its pages that are resident
    and not all zero (``/proc/PID/pagemap`` and ``/proc/PID/mem``, read only: a guest's
    kernel zeroes the pages it hands out, so resident is not the same as sent); and where
    those bytes sit: :func:`top_profile` of them. Where its memory cannot be read, the
    resident bytes and no profile; (None, None) if neither can be read."""
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None, None
    ranges = sorted((lo, hi) for lo, hi, _ in ram_mappings(smaps, ram_bytes))
    if not ranges:
        return None, None
    try:
        per_mib: list[int] = []
        with open(f"/proc/{pid}/pagemap", "rb") as pm, open(f"/proc/{pid}/mem", "rb") as mem:
            for start, end in ranges:
                counts = [0] * -(-(end - start) // CHUNK)
                pm.seek(start // PAGE * 8)
                for addr, length in present_runs(pm.read((end - start) // PAGE * 8), start):
                    off, stop = addr - start, addr - start + length
                    while off < stop:
                        n = min(stop, (off // CHUNK + 1) * CHUNK) - off
                        mem.seek(start + off)
                        counts[off // CHUNK] += nonzero_bytes(mem.read(n))
                        off += n
                per_mib += counts
        return sum(per_mib), top_profile(per_mib)
    except (OSError, ValueError) as exc:
        log.info("pid %d: guest memory not readable (%s); taking its resident bytes", pid, exc)
        return resident_of(smaps, ram_bytes), None


SAMPLE_PAGES: Final = 4096
"""Pages per GiB that ``calc-dirty-rate`` hashes. QEMU's default, 512, is 128 pages of a
256 MiB guest: measured on a guest writing 4 MiB/s for 1 s, it read 0, 2 or 6 MiB/s; with
4096 it read 3 or 4."""


async def measure_dirty_rate(name: str, qmp: Path, seconds: int) -> tuple[int, float]:
    """The guest's RAM (bytes) and dirty rate (bytes/s) from QEMU: ``calc-dirty-rate`` in
    page-sampling mode (read-only) with :data:`SAMPLE_PAGES` pages per GiB, then its result
    once measured."""
    mon = Monitor(name, "plan", qmp)
    await mon.connect(timeout=5.0)
    try:
        ram = int((await mon.execute("query-memory-size-summary"))["base-memory"])
        try:
            await mon.execute(
                "calc-dirty-rate",
                {"calc-time": seconds, "mode": "page-sampling", "sample-pages": SAMPLE_PAGES},
            )
        except QMPCommandError as exc:
            raise LivemigError(f"{name}: QEMU cannot measure the dirty rate: {exc.desc}") from exc
        deadline = time.monotonic() + seconds + 10
        await asyncio.sleep(seconds)
        while True:  # the result of a measurement QEMU was asked for (not a phase)
            info = await mon.execute("query-dirty-rate")
            if info.get("status") == "measured":
                return ram, float(info.get("dirty-rate", 0)) * MIB
            if time.monotonic() > deadline:
                raise LivemigError(f"{name}: QEMU's dirty-rate measurement did not finish")
            await asyncio.sleep(0.2)
    finally:
        await mon.close()
