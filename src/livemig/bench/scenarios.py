"""Benchmark scenarios (pure data): each is a list of cells, each cell one
configuration measured ``repeats`` times, side by side in one run, across the lab's
shaped link. Ids are readable: ``stream/postcopy-after:1``, ``faults/no-preempt/lat20ms``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from livemig.errors import UsageError
from livemig.units import parse_rate

__all__ = ["SCENARIOS", "Cell", "cells_for"]

LINK: Final = "200mbit"  # 25 MB/s: slower than the writers below dirty memory


@dataclass(frozen=True)
class Cell:
    scenario: str
    policy: str
    workload: str
    memory_mib: int = 512
    bandwidth: str = LINK
    latency: str = "100ms"  # tbf latency (its queue limit)
    preempt: bool | None = None  # None: livemig's default (on whenever post-copy is allowed)
    wmem_max: int | None = None  # tcp_wmem max on the source host (None: the kernel's default)
    # the source host's GSO size for the run (None: as livemig decides: auto caps it on slow links)
    gso_max: int | None = None
    poll: bool = False  # also poll query-migrate every 50 ms, to compare with pushed events
    warmup_s: float = 2.0  # let the workload run before migrating
    variant: str = ""
    # who moves it: livemig on its own QEMUs ("qemu"), livemig on the lab's libvirt daemons
    # ("libvirt"), or libvirt alone ("virsh": virsh migrate --postcopy --postcopy-after-precopy)
    backend: str = "qemu"
    nic: bool = True  # on the lab's guest network (the client's probe); libvirt domains have none
    # measure the dirty rate during the warm-up (calc-dirty-rate: read-only) and record
    # `livemig plan`'s prediction beside the run, so the report gives plan's error
    predict: bool = False
    postcopy_bandwidth: str | None = None  # cap on post-copy's background stream (None: uncapped)
    # a 64 MiB raw virtio disk on shared storage (cache=none) that the guest writes a
    # counter to every 200 ms: docs/real-vms.md's bridged guest
    disk: bool = False
    # the bench's event thread at a lower nice value while it migrates (livemig.sched), as
    # `livemig migrate` runs (before 2026-12-01, bench runs were not boosted)
    boost: bool = True

    @property
    def estimate_s(self) -> float:
        """About how long one run takes (pure): booting, warm-up and teardown (measured:
        a median 6.6 s a run on livemig's own QEMUs, 10 s through libvirt, whose daemons
        also define and start the destination), plus the guest's whole RAM at the link
        rate: more than most runs send (zero pages cost nothing; the libvirt family took
        21 min a repeat against 29 estimated), less than a pre-copy that does not converge
        spends before its timeout."""
        overhead = 7.0 if self.backend == "qemu" else 10.0
        return overhead + self.warmup_s + self.memory_mib * 2**20 / parse_rate(self.bandwidth)

    @property
    def id(self) -> str:
        return "/".join(p for p in (self.scenario, self.variant or self.policy) if p)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}


def _policies(scenario: str, policies: tuple[str, ...], workload: str, **kw: Any) -> list[Cell]:
    return [Cell(scenario, p, workload, **kw) for p in policies]


_FAULTPROBE: Final = "faultprobe:mib=256,pages=2000"
_STREAM: Final = "stream:fps=30,kib=1024,ring=256"  # the demo's: 31 MB/s into a 256 MiB ring


def _faults() -> list[Cell]:
    cells = []
    for latency in ("100ms", "20ms"):
        for preempt in (True, False):
            tag = "preempt" if preempt else "no-preempt"
            cells.append(
                Cell("faults", "postcopy-now", _FAULTPROBE, memory_mib=384, latency=latency,
                     preempt=preempt, warmup_s=3.0, variant=f"{tag}/lat{latency}")
            )  # fmt: skip
    cells.append(
        Cell("faults", "postcopy-now", _FAULTPROBE, memory_mib=384, preempt=False, wmem_max=256 * 1024,
             warmup_s=3.0, variant="no-preempt+wmem256k/lat100ms")
    )  # fmt: skip
    return cells


# The policies family: each workload with every fixed policy and auto, on two links.
FAMILY_POLICIES: Final = (
    "precopy:timeout=60",
    "postcopy-now",
    "postcopy-after:1",
    "postcopy-after:2",
    "auto",
)
FAMILY_WORKLOADS: Final[dict[str, tuple[str, int]]] = {
    "idle": ("idle", 512),
    "converge": ("dirty:mib=64,rate=5,pattern=seq", 512),  # about 0.2x the 200 mbit link
    "dirtier": ("dirty:mib=128,rate=8,pattern=seq", 512),  # 8 MB/s into 128 MiB
    "stream": (_STREAM, 512),  # more than the link carries
    "nonconverge": ("dirty:mib=128,pattern=random", 384),  # random writes above the link rate
    "readmostly": ("scan:mib=384,rate=1", 512),  # reads 384 MiB over and over, writes 1 MiB/s
    "phased": ("dirty:mib=128,rate=2,then=16,at=4,pattern=seq", 512),  # 2 MiB/s, then 16 MiB/s mid-migration
    "realvm": ("dirty:mib=64,rate=10", 512),  # docs/real-vms.md's guest: with its disk (below) and NIC
}
FAMILY_LINKS: Final = ("200mbit", "1gbit")


def _family() -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = {}
    for name, (workload, mib) in FAMILY_WORKLOADS.items():
        for link in FAMILY_LINKS:
            scenario = f"policies-{name}" + ("" if link == LINK else f"-{link}")
            out[scenario] = _policies(
                scenario, FAMILY_POLICIES, workload, memory_mib=mib, bandwidth=link, predict=True,
                disk=name == "realvm",
            )  # fmt: skip
    return out


def _libvirt() -> dict[str, list[Cell]]:
    """The policies family's workloads (200 mbit), each policy by livemig on both backends,
    and libvirt's own post-copy policy (virsh) on the same domain; no guest NIC on either."""
    out: dict[str, list[Cell]] = {}
    for name, (workload, mib) in FAMILY_WORKLOADS.items():
        if name == "realvm":  # its disk and NIC are what it adds; libvirt's lab domains have neither
            continue
        scenario = f"libvirt-{name}"
        # preempt off on both: libvirt cannot ask for it, and the backends, not the channels, are compared
        cells = [Cell(scenario, p, workload, memory_mib=mib, backend=b, nic=False, preempt=False,
                      variant=f"{b}/{p}") for p in FAMILY_POLICIES for b in ("qemu", "libvirt")]  # fmt: skip
        cells.append(Cell(scenario, "virsh", workload, memory_mib=mib, backend="virsh", nic=False,
                          variant="virsh/postcopy-after-precopy"))  # fmt: skip
        out[scenario] = cells
    return out


def _pacing() -> list[Cell]:
    """Where post-copy's fault time goes (issue 11): the stream guest switched after one
    pass, with post-copy's background stream capped under the 200 mbit link (a shorter
    queue at the bottleneck for the page requests' answers), with a short tbf queue, and
    with no link to speak of (10 gbit: what is left is the hosts' own cost); and the
    first-touch probe on the 200 mbit link and on the 10 gbit one."""
    p1 = "postcopy-after:1"
    return [
        Cell("pacing", p1, _STREAM, variant="stream/200mbit"),
        Cell("pacing", p1, _STREAM, postcopy_bandwidth="180mbit", variant="stream/200mbit-cap180mbit"),
        Cell("pacing", p1, _STREAM, postcopy_bandwidth="160mbit", variant="stream/200mbit-cap160mbit"),
        Cell("pacing", p1, _STREAM, latency="5ms", variant="stream/200mbit-lat5ms"),
        Cell("pacing", p1, _STREAM, bandwidth="10gbit", variant="stream/10gbit"),
        Cell("pacing", "postcopy-now", _FAULTPROBE, memory_mib=384, warmup_s=3.0, variant="faultprobe/200mbit"),
        Cell("pacing", "postcopy-now", _FAULTPROBE, memory_mib=384, warmup_s=3.0, bandwidth="10gbit",
             variant="faultprobe/10gbit"),
    ]  # fmt: skip


def _pacing_gso() -> list[Cell]:
    """The stream guest of the policies family (200 mbit, on the guest network), with the
    source host's link at its GSO size as the kernel makes it (64 KiB) and capped at 16
    and 8 KiB: a page's answer waits behind one GSO burst of the background stream at the
    bottleneck (docs/pacing), so a smaller burst should cut each fault's wait. The fixed
    post-copy policy the demo uses, and auto. The run sets the size through its options
    (``MigrationOptions.gso_max``) and puts it back after."""
    return [
        Cell("pacing-gso", policy, _STREAM, gso_max=gso, predict=False,
             variant=f"stream/{policy}/gso{gso // 1024}k")
        for gso in (65536, 16384, 8192)
        for policy in ("postcopy-after:1", "auto")
    ]  # fmt: skip


def _family_cell(scenario: str, name: str, policy: str, variant: str, **kw: Any) -> Cell:
    """A cell on one of the policies family's workloads (its guest size; the real-VM guest
    with its disk)."""
    workload, mib = FAMILY_WORKLOADS[name]
    return Cell(scenario, policy, workload, memory_mib=mib, disk=name == "realvm", variant=variant, **kw)


def _pacing_gso_others() -> list[Cell]:
    """The GSO cap on the family's other 200 mbit workloads: nonconverge, where auto
    switches after pass 2 as postcopy-after:2 does, and the dirtier, where auto stays in
    pre-copy (does a smaller burst cost pre-copy anything?)."""
    cells = [("nonconverge", "postcopy-after:2"), ("nonconverge", "auto"), ("dirtier", "auto")]
    return [
        _family_cell("pacing-gso-others", name, policy, f"{name}/{policy}/gso{gso // 1024}k", gso_max=gso)
        for gso in (65536, 8192)
        for name, policy in cells
    ]


def _frontier(
    scenario: str, link: str, names: tuple[str, ...], points: tuple[tuple[str, int | None], ...]
) -> list[Cell]:
    """Switch points across pre-copy's first pass (``points``: policy, GSO size) on the
    family's workloads ``names`` (docs/frontier)."""
    return [
        _family_cell(scenario, name, policy, f"{name}/{policy}" + (f"/gso{gso // 1024}k" if gso else ""),
                     bandwidth=link, gso_max=gso)
        for name in names
        for policy, gso in points
    ]  # fmt: skip


# The family's workloads on which auto missed the time target at 200 mbit (docs/policies).
# The two ends of pre-copy's first pass, with the pacing lever auto has: switched at once
# (postcopy-now, the fastest policy in the family, sends each page about once) and after the
# first pass (postcopy-after:1, the earliest switch that follows a whole pass), with the
# source's GSO size as the kernel makes it (64 KiB) and capped at 8 KiB as auto caps it; and
# in between, within the first pass once it has covered half and 80% of the guest's memory.
# Within 1.25x the fastest's time a policy must switch before the first pass ends: how long
# does the guest stall there, with the cap?
FRONTIER_WORKLOADS: Final = ("converge", "dirtier", "stream", "nonconverge", "phased", "realvm")
FRONTIER_POINTS: Final = (("postcopy-now", 65536), ("postcopy-now", 8192), ("postcopy-after:0.5", 8192),
                          ("postcopy-after:0.8", 8192), ("postcopy-after:1", 8192))  # fmt: skip
# At 1 gbit, the two workloads that miss the time target there; no GSO cap (auto sets none
# on this link: a 64 KiB burst takes 0.52 ms).
FRONTIER_POINTS_1GBIT: Final = tuple(
    (p, None) for p in ("postcopy-now", "postcopy-after:0.5", "postcopy-after:0.8", "postcopy-after:1")
)


def _events_sched() -> list[Cell]:
    return [
        Cell("events-sched", "postcopy-after:1", "dirty:mib=64,pattern=seq", memory_mib=256, boost=b,
             variant="boosted" if b else "plain")
        for b in (False, True)
    ]  # fmt: skip


SCENARIOS: Final[dict[str, list[Cell]]] = {
    # An idle 512 MiB guest: almost every page is zero; the bound is what must really move.
    "idle": _policies("idle", ("precopy", "postcopy-after:1", "postcopy-now"), "idle"),
    # A writer at 5 MB/s, 0.2x the 25 MB/s link: pre-copy converges.
    "converge": _policies(
        "converge", ("precopy", "postcopy-after:1", "postcopy-now"), "dirty:mib=64,rate=5,pattern=seq"
    ),
    # A random writer far above the link: pre-copy (300 ms downtime limit) must give up.
    "nonconverge": _policies(
        "nonconverge",
        ("precopy:timeout=30", "postcopy-now", "postcopy-after:1", "postcopy-after:2", "postcopy-after:3"),
        "dirty:mib=128,pattern=random",
        memory_mib=384,
    ),
    # The video-streaming case: 30 frames/s of 1 MiB (31 MB/s) into a 256 MiB ring,
    # reading older frames back, on a 25 MB/s link that it out-dirties.
    "stream": _policies(
        "stream",
        ("postcopy-now", "postcopy-after:1", "auto", "precopy:timeout=40"),
        _STREAM,
    ),
    # First-touch latency in post-copy while the bulk stream saturates the link.
    "faults": _faults(),
    # Pushed events against a 50 ms query-migrate poller, in the same runs.
    "events": _policies(
        "events", ("postcopy-after:1",), "dirty:mib=64,pattern=seq", memory_mib=256, poll=True
    ),
    # The event delivery latency's tail with the event thread at nice 0 and boosted (livemig.sched).
    "events-sched": _events_sched(),
    # Post-copy pacing and where a fault's time goes.
    "pacing": _pacing(),
    # The same, with the source host's GSO size capped: what a page's answer waits behind.
    "pacing-gso": _pacing_gso(),
    "pacing-gso-others": _pacing_gso_others(),
    # Switched at once or after one pass, with and without the GSO cap: the time target's cost.
    "frontier": _frontier("frontier", LINK, FRONTIER_WORKLOADS, FRONTIER_POINTS),
    "frontier-1gbit": _frontier("frontier-1gbit", "1gbit", ("stream", "nonconverge"), FRONTIER_POINTS_1GBIT),
    **_family(),
    **_libvirt(),
}


def _select(name: str) -> list[Cell]:
    """A scenario, a family of scenarios (``policies``: every ``policies-*``), a cell id
    (``policies-dirtier/auto``) or the start of one (``policies-stream/postcopy``)."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    family = [c for s, cells in SCENARIOS.items() if s.startswith(f"{name}-") for c in cells]
    if family:
        return family
    return [c for cells in SCENARIOS.values() for c in cells if c.id == name or c.id.startswith(name)]


def cells_for(names: list[str] | tuple[str, ...]) -> list[Cell]:
    out: list[Cell] = []
    for n in names:
        cells = _select(n)
        if not cells:
            raise UsageError(f"no scenario or cell {n!r} (see `livemig bench list`)")
        out += [c for c in cells if c not in out]
    return out
