"""Taps on bridges (pyroute2): QEMU creates each tap itself (``-netdev tap,ifname=..``, so
the tap goes away with QEMU) and livemig makes it a port of the NIC's bridge, in the
network namespace where that QEMU runs."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from livemig.errors import QemuStartError, SpecError

__all__ = ["attach_taps", "bridge_of", "netns_of_pid"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def attach_taps(
    netns: str | None, taps: list[tuple[str, str]], alive: Callable[[], bool], deadline: float
) -> None:
    """Make each ``(tap, bridge)``'s tap a port of its bridge, and bring it up."""
    where = f"host namespace {netns}" if netns else "this host"
    with _ipr(netns) as ipr:
        for tap, bridge in taps:
            found = ipr.link_lookup(ifname=bridge)
            if not found:
                raise SpecError("nic.network", f"no bridge {bridge!r} on {where} (is the lab up?)")
            while not (idx := ipr.link_lookup(ifname=tap)):
                if not alive():
                    raise QemuStartError(tap, f"QEMU exited before it created tap {tap}")
                if time.monotonic() > deadline:
                    raise QemuStartError(tap, f"QEMU did not create tap {tap} in time")
                time.sleep(0.01)
            ipr.link("set", index=idx[0], master=found[0], state="up")
            log.debug("tap %s on bridge %s (%s)", tap, bridge, where)


def bridge_of(netns: str | None, tap: str) -> str | None:
    """The bridge whose port ``tap`` is (None: not on a bridge, or no such tap)."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=tap)
        if not idx:
            return None
        master = ipr.get_links(idx[0])[0].get_attr("IFLA_MASTER")
        if not master:
            return None
        return str(ipr.get_links(master)[0].get_attr("IFLA_IFNAME"))


def netns_of_pid(pid: int, candidates: list[str]) -> str | None:
    """Which of the named network namespaces process ``pid`` runs in (None: the host's own)."""
    try:
        mine = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    for name in candidates:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{name}")
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return name
    return None
