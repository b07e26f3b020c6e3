"""What a client of the VM sees during a migration: UDP echoes to the guest every 5 ms
from the lab's ``client`` namespace, and the guest MAC's announce frames (RARP, or
gratuitous ARP) seen there.

The prober is a child process run inside the client namespace (``ip netns exec``):
``python -m livemig.observe.netprobe ADDR --mac MAC``. It probes until its stdin
closes, waits for the last replies, and prints one JSON document of raw times.
:func:`network_stats` (pure) turns those into the report's ``network`` figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["NetProbe", "network_stats"]

log = logging.getLogger(__name__)
ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
DRAIN_S = 0.5  # after the last probe, wait this long for its reply


def network_stats(raw: dict[str, Any], resumed_ts: float | None = None) -> dict[str, Any]:
    """``{sent, received, lost, max_gap_ms, ...}`` from the prober's raw times.

    ``max_gap_ms`` is the longest time the client went without any reply (between
    consecutive replies, by receive time); ``lost`` counts probes never answered.
    ``announce`` gives the first announce frame after ``resumed_ts`` (the destination's
    RESUME), so the report says when the destination announced the VM.
    """
    sent: dict[int, float] = {int(s): float(t) for s, t in raw.get("sent", [])}
    recv: dict[int, float] = {}
    for s, t in raw.get("recv", []):
        recv.setdefault(int(s), float(t))
    times = sorted(recv.values())
    gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
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
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "livemig.observe.netprobe",
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
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.warning("network probe did not stop in %gs", timeout)
            return None
        if proc.returncode != 0:
            log.warning("network probe failed: %s", err.decode(errors="replace").strip()[-300:])
            return None
        raw: dict[str, Any] = json.loads(out)
        return raw


# -- the prober (runs inside the client namespace) ----------------------------------
def _probe(address: str, port: int, interval_s: float, mac: str | None) -> dict[str, Any]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    udp.connect((address, port))
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    sniff = None
    want = bytes.fromhex(mac.replace(":", "")) if mac else None
    if want is not None:
        sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sniff.setblocking(False)
        sel.register(sniff, selectors.EVENT_READ, "sniff")
    sent: list[tuple[int, float]] = []
    recv: list[tuple[int, float]] = []
    announce: list[tuple[float, str]] = []
    seq, next_send, stop_at = 0, time.monotonic(), None
    offset = time.time() - time.monotonic()
    while stop_at is None or time.monotonic() < stop_at:
        now = time.monotonic()
        if stop_at is None and now >= next_send:
            with contextlib.suppress(OSError):  # e.g. no ARP answer yet: count it as lost
                udp.send(struct.pack("!Qd", seq, now))
            sent.append((seq, now + offset))
            seq += 1
            next_send += interval_s
            if next_send < now:  # fell behind (a busy machine): do not burst
                next_send = now + interval_s
        wait = max(0.0, (next_send if stop_at is None else stop_at) - time.monotonic())
        for key, _ in sel.select(min(wait, 0.05)):
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    sel.unregister(sys.stdin)
                    stop_at = time.monotonic() + DRAIN_S
            elif key.data == "udp":
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    while True:
                        data = udp.recv(64)
                        if len(data) >= 8:
                            recv.append((struct.unpack("!Q", data[:8])[0], time.time()))
            elif sniff is not None:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        frame = sniff.recv(128)
                        kind = _announce_kind(frame, want)
                        if kind:
                            announce.append((time.time(), kind))
    return {
        "target": f"{address}:{port}", "interval_ms": interval_s * 1000,
        "sent": sent, "recv": recv, "announce": announce,
    }  # fmt: skip


def _announce_kind(frame: bytes, mac: bytes | None) -> str | None:
    """'rarp' or 'garp' when ``frame`` announces ``mac`` (broadcast, from that MAC)."""
    if mac is None or len(frame) < 14 or frame[6:12] != mac or frame[0:6] != b"\xff" * 6:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_P_RARP:
        return "rarp"
    if ethertype == ETH_P_ARP and len(frame) >= 42 and frame[28:32] == frame[38:42]:
        return "garp"  # sender IP == target IP
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="livemig.observe.netprobe", description=__doc__)
    ap.add_argument("address")
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--mac", default=None)
    args = ap.parse_args(argv)
    json.dump(_probe(args.address, args.port, args.interval_ms / 1000, args.mac), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
