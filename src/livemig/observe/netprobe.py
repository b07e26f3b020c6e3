"""What a client of the VM sees during a migration: UDP echoes to the guest every 5 ms
from the lab's ``client`` namespace, and the guest MAC's announce frames (RARP, or
gratuitous ARP) seen there.

The prober (:mod:`livemig.observe.prober`) is a child process run inside the client
namespace (``ip netns exec``): ``python -m livemig.observe.prober ADDR --mac MAC``. It probes until its stdin
closes, waits for the last replies, and prints one JSON document of raw times.
:func:`network_stats` (pure) turns those into the report's ``network`` figures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
from typing import Any

from livemig.aio import communicate

__all__ = ["NetProbe", "network_stats"]

log = logging.getLogger(__name__)


def network_stats(raw: dict[str, Any], resumed_ts: float | None = None) -> dict[str, Any]:
    """``{sent, received, lost, max_gap_ms, ...}`` from the prober's raw times.

    ``max_gap_ms`` is the longest time the client went without a timely answer: the
    larger of the longest gap between consecutive replies and the longest wait of a
    probe, from its send time to the first reply (to it or to a later probe). A late
    reply cannot hide a gap: probes sent during a 4 s pause and answered in a burst
    afterwards each waited up to 4 s, though their replies arrive close together.
    ``lost`` counts probes never answered.
    ``announce`` gives the first announce frame after ``resumed_ts`` (the destination's
    RESUME), so the report says when the destination announced the VM.
    """
    sent: dict[int, float] = {int(s): float(t) for s, t in raw.get("sent", [])}
    recv: dict[int, float] = {}
    for s, t in raw.get("recv", []):
        recv.setdefault(int(s), float(t))
    times = sorted(recv.values())
    gaps = [(b - a, a) for a, b in itertools.pairwise(times)] + _waits(sent, recv)
    gap, gap_at = max(gaps) if gaps else (None, None)
    rtts = sorted(recv[s] - sent[s] for s in recv if s in sent)
    out: dict[str, Any] = {
        "target": raw.get("target"),
        "interval_ms": raw.get("interval_ms"),
        "sent": len(sent),
        "received": len(recv),
        "lost": len(set(sent) - set(recv)),
        "max_gap_ms": round(gap * 1000, 1) if gap is not None else None,
        "max_gap_start_ts": round(gap_at, 6) if gap_at is not None else None,
        "rtt_p50_ms": round(rtts[len(rtts) // 2] * 1000, 2) if rtts else None,
        "rtt_max_ms": round(rtts[-1] * 1000, 2) if rtts else None,
    }
    frames = sorted(float(t) for t, _kind in raw.get("announce", []))
    after = [t for t in frames if resumed_ts is None or t >= resumed_ts]
    out["announce"] = {
        "frames": len(after),
        "kinds": sorted({kind for t, kind in raw.get("announce", []) if t in after}),
        "first_ms_after_resume": round((after[0] - resumed_ts) * 1000, 1) if after and resumed_ts else None,
        "first_ts": after[0] if after else None,
    }
    return out


def _waits(sent: dict[int, float], recv: dict[int, float]) -> list[tuple[float, float]]:
    """(wait, send time) of every probe: from its send to the first reply to it or to a
    later probe. Probes after the last answered one are left out (they are ``lost``)."""
    out: list[tuple[float, float]] = []
    first_reply: float | None = None  # the earliest reply among probes from this one on
    for seq in sorted(sent, reverse=True):
        if seq in recv:
            first_reply = recv[seq] if first_reply is None else min(first_reply, recv[seq])
        if first_reply is not None:
            out.append((first_reply - sent[seq], sent[seq]))
    return out


class NetProbe:
    """Runs the prober in ``netns`` against ``address``; ``await stop()`` returns its raw times."""

    def __init__(self, netns: str, address: str, mac: str | None, port: int = 7, interval_ms: float = 5.0):
        self.netns, self.address, self.mac, self.port, self.interval_ms = (
            netns,
            address,
            mac,
            port,
            interval_ms,
        )
        self._proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        state = "running" if self._proc and self._proc.returncode is None else "stopped"
        return f"<NetProbe {self.address}:{self.port} from {self.netns} every {self.interval_ms:g}ms {state}>"

    async def start(self) -> None:
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "livemig.observe.prober",
                self.address, "--port", str(self.port), "--interval-ms", str(self.interval_ms)]  # fmt: skip
        if self.mac:
            argv += ["--mac", self.mac]
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            out, err = await communicate(proc, timeout)
        except TimeoutError:
            log.warning("network probe did not stop in %gs", timeout)
            return None
        if proc.returncode != 0:
            log.warning("network probe failed: %s", err.decode(errors="replace").strip()[-300:])
            return None
        raw: dict[str, Any] = json.loads(out)
        return raw
