"""The lab's plan (pure, no I/O): which namespaces, links, addresses and shaping
``livemig lab up`` makes, and the record it keeps of them.

Topology: one namespace per emulated host (``<prefix>src``, ``<prefix>dst``, ...)
and one switch namespace holding a bridge. Each host has a veth ``eth0`` whose peer
(``p-<host>``) is a port of the bridge. Both ends of every veth carry a tbf qdisc,
so traffic is shaped in both directions: host -> switch on ``eth0``, switch -> host
on ``p-<host>``. Addresses are on 192.0.2.0/24 (TEST-NET-1, documentation only).

The guest network is separate from that migration link, as a VM's front-end network
is in a real data centre: every host has a bridge ``lmbr0`` (VMs' taps join it:
``network = "bridge:lmbr0"``), uplinked by a veth to the bridge ``gbr0`` of the
``<prefix>net`` namespace. A ``<prefix>client`` namespace sits on ``gbr0`` too, at
198.51.100.2 (TEST-NET-2), for load generators and the network probe; guests take
198.51.100.10 and up. Disks under a host's ``local`` directory stand for that host's
local storage: no other host can open them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from livemig.errors import NoSuchHost, UsageError

__all__ = ["CLIENT_ADDRESS", "GUEST_BRIDGE", "LabHost", "LabPlan", "Shaping", "guest_ip", "plan_lab"]


def guest_ip(index: int) -> str:
    """The ``index``-th guest address on the lab's guest network, with its prefix."""
    if not 0 <= index < 200:
        raise UsageError(f"guest address index {index}: out of range [0, 200)")
    return f"{GUEST_SUBNET}.{10 + index}/24"


SUBNET: Final = "192.0.2"
GUEST_SUBNET: Final = "198.51.100"
GUEST_BRIDGE: Final = "lmbr0"  # in every host's namespace
CLIENT_ADDRESS: Final = f"{GUEST_SUBNET}.2"
PREFIXLEN: Final = 24
FIRST_HOST_OCTET: Final = 10
MAX_HOSTS: Final = 8
DEFAULT_PREFIX: Final = "lm-"
_PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,9}$")


@dataclass(frozen=True)
class Shaping:
    """tc tbf parameters, applied to both directions of every host's link."""

    rate_bps: int  # bytes/s
    burst_bytes: int = 256 * 1024
    latency_ms: float = 100.0  # tbf's queue limit, expressed as the longest wait

    def __str__(self) -> str:
        return (
            f"tbf rate {self.rate_bps * 8 / 1e6:g}mbit burst {self.burst_bytes // 1024}kb "
            f"latency {self.latency_ms:g}ms"
        )

    def validated(self) -> Shaping:
        if not 125_000 <= self.rate_bps <= 4_000_000_000:
            raise UsageError(f"--bandwidth: {self.rate_bps} B/s is out of range (1 mbit to 32 gbit)")
        if not 1600 <= self.burst_bytes <= 64 << 20:
            raise UsageError(f"--burst: {self.burst_bytes} bytes is out of range (1600 B to 64 MiB)")
        if not 1 <= self.latency_ms <= 10_000:
            raise UsageError(f"--latency: {self.latency_ms} ms is out of range (1 ms to 10 s)")
        return self


@dataclass(frozen=True)
class LabHost:
    name: str
    netns: str
    address: str
    ifname: str = "eth0"
    port: str = ""  # the bridge port (veth peer) in the switch namespace


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    shaping: Shaping
    hosts: tuple[LabHost, ...]
    switch_netns: str
    bridge: str = "br0"
    wmem_max: dict[str, int] = field(default_factory=dict)  # host -> tcp_wmem max, where changed
    gso_max: dict[str, int] = field(default_factory=dict)  # host -> its link's GSO size cap, where changed
    net_netns: str = ""  # the guest network's switch (bridge gbr0)
    client_netns: str = ""  # a client of the guests, on the guest network

    @property
    def guest_network(self) -> bool:
        return bool(self.net_netns)

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise NoSuchHost(name, f"no lab host {name!r} (hosts: {known})")

    @property
    def namespaces(self) -> tuple[str, ...]:
        extra = (self.net_netns, self.client_netns) if self.guest_network else ()
        return (self.switch_netns, *extra, *(h.netns for h in self.hosts))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabPlan:
        return cls(
            prefix=d["prefix"],
            shaping=Shaping(**d["shaping"]),
            hosts=tuple(LabHost(**h) for h in d["hosts"]),
            switch_netns=d["switch_netns"],
            bridge=d.get("bridge", "br0"),
            wmem_max=dict(d.get("wmem_max") or {}),
            gso_max=dict(d.get("gso_max") or {}),
            net_netns=d.get("net_netns", ""),
            client_netns=d.get("client_netns", ""),
        )


def host_names(count: int) -> list[str]:
    return ["src", "dst", *(f"h{i}" for i in range(3, count + 1))][:count]


def plan_lab(hosts: int, shaping: Shaping, prefix: str = DEFAULT_PREFIX) -> LabPlan:
    if not 2 <= hosts <= MAX_HOSTS:
        raise UsageError(f"--hosts {hosts}: out of range [2, {MAX_HOSTS}]")
    if not _PREFIX_RE.match(prefix):
        raise UsageError(f"lab prefix {prefix!r}: 1-10 of a-z, 0-9, '-', starting with a letter")
    members = tuple(
        LabHost(name, f"{prefix}{name}", f"{SUBNET}.{FIRST_HOST_OCTET + i}", port=f"p-{name}")
        for i, name in enumerate(host_names(hosts))
    )
    return LabPlan(
        prefix, shaping.validated(), members, f"{prefix}switch",
        net_netns=f"{prefix}net", client_netns=f"{prefix}client",
    )  # fmt: skip
