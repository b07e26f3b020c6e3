"""The network prober, run inside the lab's client namespace by
:class:`livemig.observe.netprobe.NetProbe`: a UDP echo to the guest every 5 ms, and a
packet socket that notes the guest MAC's announce frames. It probes until its stdin
closes, waits for the last replies, and prints one JSON document of raw times."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["main"]

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
DRAIN_S = 0.5  # after the last probe, wait this long for its reply


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
    ap = argparse.ArgumentParser(prog="livemig.observe.prober", description=__doc__)
    ap.add_argument("address")
    ap.add_argument("--port", type=int, default=7)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--mac", default=None)
    args = ap.parse_args(argv)
    json.dump(_probe(args.address, args.port, args.interval_ms / 1000, args.mac), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
