"""A tripwire on a lab link: cut a host's switch port the moment a new TCP connection
toward it starts (its SYN) or first carries data.

For faults that must land inside a window of milliseconds, such as a post-copy
recovery's connect (QEMU's ``postcopy-recover-setup``) or its handshake
(``postcopy-recover``): a thread reads the port with a packet socket and takes the port
down with an ioctl on a socket of the switch's namespace, some microseconds after the
frame that trips it. Restore the port with :meth:`Lab.set_link`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from livemig.lab.net import Lab

__all__ = ["Tripwire", "tcp_frame"]

log = logging.getLogger(__name__)

CLONE_NEWNET: Final = 0x40000000
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
IFF_UP: Final = 0x1
ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
TCP_SYN: Final = 0x02
TCP_ACK: Final = 0x10

Flow = tuple[str, int, str, int]  # source address and port, destination address and port


def tcp_frame(frame: bytes) -> tuple[Flow, int, memoryview] | None:
    """An Ethernet frame's TCP flow, flags and payload (without Ethernet's padding, a view:
    the tripwire only needs its length, so nothing is copied before it cuts); None if it
    is not IPv4 TCP."""
    if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP or frame[23] != socket.IPPROTO_TCP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack("!H", frame[16:18])[0]
    tcp = 14 + ihl
    if len(frame) < tcp + 14:
        return None
    sport, dport = struct.unpack("!HH", frame[tcp : tcp + 4])
    payload = memoryview(frame)[tcp + (frame[tcp + 12] >> 4) * 4 : 14 + total]
    flow = (socket.inet_ntoa(frame[26:30]), sport, socket.inet_ntoa(frame[30:34]), dport)
    return flow, frame[tcp + 13], payload


@contextlib.contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """This thread in network namespace ``name`` (sockets opened here stay in it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)


class Tripwire:
    """Cut ``host``'s port at the first SYN of a new connection on it (``on="syn"``), or
    at the first frame with data of a connection whose SYN it saw (``on="data"``)."""

    def __init__(self, lab: Lab, host: str, on: Literal["syn", "data"]) -> None:
        self.netns = lab.plan.switch_netns
        self.port = lab.plan.host(host).port
        self.on = on
        self.tripped: float | None = None  # time.time() of the cut
        self.frame: str | None = None  # what tripped it
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "tripped" if self.tripped else "armed" if self._ready.is_set() else "idle"
        return f"Tripwire(port={self.port!r}, on={self.on!r}, {state})"

    def arm(self, timeout: float = 5.0) -> None:
        self._thread = threading.Thread(target=self._run, name=f"tripwire-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            self.disarm()
            raise RuntimeError(f"tripwire on {self.port} did not arm: {self.error}")

    def wait(self, timeout: float) -> float | None:
        """When it tripped (time.time()), or None if nothing tripped it within ``timeout``."""
        if self._thread is not None:
            self._thread.join(timeout)
        self.disarm()
        if self.error is not None:
            raise RuntimeError(f"tripwire on {self.port} failed: {self.error}") from self.error
        return self.tripped

    def disarm(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            with _in_netns(self.netns):
                sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sniff, ctl:
                sniff.bind((self.port, 0))
                sniff.settimeout(0.1)
                self._ready.set()
                self._watch(sniff, ctl)
        except Exception as exc:  # noqa: BLE001 - handed to the caller by wait() and arm()
            self.error = exc
            self._ready.set()

    def _watch(self, sniff: socket.socket, ctl: socket.socket) -> None:
        opened: set[Flow] = set()
        while not self._stop.is_set():
            try:
                frame = sniff.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:  # the port is down: wait for it to come back
                if exc.errno != errno.ENETDOWN:
                    raise
                time.sleep(0.005)
                continue
            tcp = tcp_frame(frame)
            if tcp is None:
                continue
            flow, flags, payload = tcp
            syn = bool(flags & TCP_SYN) and not flags & TCP_ACK
            if syn and self.on == "data":
                opened.add(flow)
            elif (syn and self.on == "syn") or (payload and (flow in opened or _reverse(flow) in opened)):
                self._cut(ctl)
                self.frame = (
                    f"{'SYN' if syn else f'{len(payload)} bytes'} {flow[0]}:{flow[1]} -> {flow[2]}:{flow[3]}"
                )
                log.info("tripwire: %s cut at %s", self.port, self.frame)
                return

    def _cut(self, ctl: socket.socket) -> None:
        req = struct.pack("16sH22x", self.port.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(ctl.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(ctl.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", self.port.encode(), flags & ~IFF_UP))
        self.tripped = time.time()


def _reverse(flow: Flow) -> Flow:
    return flow[2], flow[3], flow[0], flow[1]
