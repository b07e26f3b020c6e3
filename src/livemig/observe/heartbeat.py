"""Heartbeats: the guest writes ``SEQ MONOTONIC_NS WORK`` lines on its heartbeat serial
port; livemig reads them on the source and the destination. ``WORK`` counts the
workload's own progress (its unit: pages written, frames rendered, pages read), so a
slowdown shows as well as a stall (:func:`brownout`).

A stall between two consecutive beats is the **larger of the host's gap and the
guest's gap**. Neither alone is right: while a VM is stopped its clock stops too, so
the guest's own timestamps under-count a blackout; and a beat written just before a
stall can reach the host late (the serial port drains only while the vCPU runs),
which splits the host's gap in two. Both gaps are kept: a host gap with no guest gap
means the VM was stopped; a gap in both means the guest ran but was starved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Beat", "GuestStats", "HeartbeatReader", "Lines", "brownout", "guest_stats", "guest_view", "parse_line",
    "read_beats", "write_beats",
]  # fmt: skip

log = logging.getLogger(__name__)

STALL_THRESHOLD_MS = 100.0
# The guest's serial port reaches the socket a byte or two at a time: about 20 reads and
# 40 event-loop wake-ups per beat, 200 beats a second. Waiting this long for the rest of
# a started line cuts that tenfold; a line's time is its first byte's, so it costs the
# stall measurement nothing.
GATHER_S = 0.002
# the socket's file is non-blocking (shared with the event loop's end), so the thread's
# recv waits with a timeout; stop() ends the wait at once by shutting the socket
READ_WAIT_S = 1.0


def _recv(sock: socket.socket) -> bytes | None:
    """The bytes that have arrived (None at the end), waiting ``READ_WAIT_S`` at a time."""
    while True:
        with contextlib.suppress(TimeoutError):
            return sock.recv(1 << 12) or None


@dataclass(frozen=True)
class Beat:
    seq: int
    guest_ns: int
    host_ts: float  # time.time() when livemig received the line
    side: str = ""
    work: int | None = None  # the workload's progress counter (None: a guest that sends none)


def parse_line(line: str, host_ts: float, side: str = "") -> Beat | str | None:
    """A heartbeat, a '#' message (returned without '# '), or None for noise."""
    line = line.strip()
    if line.startswith("#"):
        return line[1:].strip()
    parts = line.split()
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        return None
    return Beat(int(parts[0]), int(parts[1]), host_ts, side, int(parts[2]) if len(parts) == 3 else None)


@dataclass(frozen=True)
class Stall:
    after_seq: int
    start_ts: float
    host_ms: float
    guest_ms: float

    @property
    def ms(self) -> float:
        """The stall: the larger of the host's and the guest's gap (see the module doc)."""
        return max(self.host_ms, self.guest_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "after_seq": self.after_seq,
            "start_ts": round(self.start_ts, 6),
            "ms": round(self.ms, 3),
            "host_ms": round(self.host_ms, 3),
            "guest_ms": round(self.guest_ms, 3),
        }


@dataclass(frozen=True)
class GuestStats:
    max_stall_ms: float | None
    stalls_over_100ms: int
    heartbeats: int
    lost: int
    max_guest_gap_ms: float | None = None
    stalls: tuple[Stall, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_stall_ms": self.max_stall_ms,
            "stalls_over_100ms": self.stalls_over_100ms,
            "heartbeats": self.heartbeats,
            "lost": self.lost,
            "max_guest_gap_ms": self.max_guest_gap_ms,
            "stalls": [s.to_dict() for s in self.stalls],
        }


def _first_receipts(beats: Iterable[Beat]) -> list[Beat]:
    """Each sequence number once (its first receipt, on either side), in order."""
    first: dict[int, Beat] = {}
    for b in beats:
        if b.seq not in first or b.host_ts < first[b.seq].host_ts:
            first[b.seq] = b
    return [first[s] for s in sorted(first)]


def guest_stats(
    beats: Iterable[Beat],
    start_ts: float | None = None,
    end_ts: float | None = None,
    threshold_ms: float = STALL_THRESHOLD_MS,
) -> GuestStats:
    """Stall arithmetic over beats from both sides, merged by sequence number.

    Only beats received in ``[start_ts, end_ts]`` count. A beat seen on both
    sides counts once (the first receipt). ``lost`` counts sequence numbers
    missing between the first and last beat.
    """
    ordered = _first_receipts(
        b for b in beats
        if (start_ts is None or b.host_ts >= start_ts) and (end_ts is None or b.host_ts <= end_ts)
    )  # fmt: skip
    if len(ordered) < 2:
        return GuestStats(None, 0, len(ordered), 0)
    lost = (ordered[-1].seq - ordered[0].seq + 1) - len(ordered)
    stalls: list[Stall] = []
    max_host = 0.0
    max_guest = 0.0
    for a, b in itertools.pairwise(ordered):
        host_ms = (b.host_ts - a.host_ts) * 1000.0
        guest_ms = (b.guest_ns - a.guest_ns) / 1e6
        stall_ms = max(host_ms, guest_ms)
        max_host = max(max_host, stall_ms)
        max_guest = max(max_guest, guest_ms)
        if stall_ms > threshold_ms:
            stalls.append(Stall(a.seq, a.host_ts, host_ms, guest_ms))
    return GuestStats(
        max_stall_ms=round(max_host, 3),
        stalls_over_100ms=len(stalls),
        heartbeats=len(ordered),
        lost=lost,
        max_guest_gap_ms=round(max_guest, 3),
        stalls=tuple(stalls),
    )


MIN_BEFORE_S = 0.5  # of beats before the migration, for a rate to compare with


def brownout(
    beats: Iterable[Beat], start_ts: float, end_ts: float, before_s: float = 10.0, bucket_s: float = 1.0
) -> dict[str, Any] | None:
    """How much the guest slowed down, besides stalling (pure): its progress rate (the
    heartbeat's WORK per host second) over the ``before_s`` before ``start_ts``, the rate
    from ``start_ts`` to ``end_ts`` as a share of it, and how long (in ``bucket_s``
    steps, host time) it made less than half its rate before. None when the guest counts
    no work (idle) or too few beats came before the start."""
    ordered = [b for b in _first_receipts(beats) if b.work is not None]
    before = [b for b in ordered if start_ts - before_s <= b.host_ts < start_ts]
    during = [b for b in ordered if start_ts <= b.host_ts <= end_ts]
    if len(before) < 2 or not during or end_ts <= start_ts:
        return None
    # on the guest's clock: beats read in one batch (a backlog at connect) share a host
    # time, which made a rate of billions a second out of a few ms
    span = (before[-1].guest_ns - before[0].guest_ns) / 1e9
    if span < MIN_BEFORE_S:
        return None
    rate = ((before[-1].work or 0) - (before[0].work or 0)) / span
    if rate <= 0:
        return None

    def work_at(t: float) -> int:  # the counter as the host had seen it at time t
        seen = [b.work or 0 for b in (before[-1], *during) if b.host_ts <= t]
        return seen[-1]

    under, t = 0.0, start_ts
    while t < end_ts:
        step = min(bucket_s, end_ts - t)
        if work_at(t + step) - work_at(t) < 0.5 * rate * step:
            under += step
        t += step
    done = work_at(end_ts) - (before[-1].work or 0)
    return {
        "per_s_before": round(rate, 1),
        "share_during": round(done / ((end_ts - before[-1].host_ts) * rate), 3),
        "under_half_s": round(under, 3),
    }


def guest_view(
    readers: list[HeartbeatReader], start_ts: float, end_ts: float | None = None
) -> dict[str, Any]:
    """The report's ``guest``: the stall arithmetic over every reader's beats since
    ``start_ts``, the brownout until ``end_ts`` (the migration's end; default: the last
    beat), or ``{"heartbeat": None}`` when the guest writes none."""
    if not readers:
        return {"heartbeat": None}
    beats = [b for r in readers for b in r.beats]
    out = guest_stats(beats, start_ts=start_ts).to_dict()
    end = end_ts if end_ts is not None else max((b.host_ts for b in beats), default=start_ts)
    out["brownout"] = brownout(beats, start_ts, end)
    # each reader's span of sequence numbers: the guest's own counter, as each host read it
    out["sides"] = {
        r.side: {"beats": len(r.beats), "first_seq": r.beats[0].seq, "last_seq": r.beats[-1].seq}
        for r in readers
        if r.beats
    }
    return out


def write_beats(path: Path, beats: Iterable[Beat], start_ts: float) -> None:
    """Record beats as TSV (side, seq, guest_ns, host_ts), with the window's start first."""
    with path.open("w") as f:
        f.write(f"# start_ts\t{start_ts!r}\n# side\tseq\tguest_ns\thost_ts\twork\n")
        for b in sorted(beats, key=lambda b: b.host_ts):
            work = "" if b.work is None else b.work
            f.write(f"{b.side}\t{b.seq}\t{b.guest_ns}\t{b.host_ts!r}\t{work}\n")


def read_beats(path: Path) -> tuple[float, list[Beat]]:
    """The window's start and the beats of a recording made by :func:`write_beats`."""
    start, beats = 0.0, []
    for line in path.read_text().splitlines():
        if line.startswith("# start_ts"):
            start = float(line.split("\t")[1])
        elif line and not line.startswith("#"):
            side, seq, guest_ns, host_ts, *rest = line.split("\t")
            work = int(rest[0]) if rest and rest[0] else None  # recordings before WORK have 4 columns
            beats.append(Beat(int(seq), int(guest_ns), float(host_ts), side, work))
    return start, beats


@dataclass
class Lines:
    """Splits a byte stream into lines, each with the arrival time of its first byte (pure)."""

    _buf: bytes = b""
    _first_ts: float = 0.0

    @property
    def pending(self) -> bool:
        """Part of a line has arrived, not its end."""
        return bool(self._buf)

    def feed(self, chunk: bytes, now: float) -> list[tuple[str, float]]:
        out = []
        if not self._buf:
            self._first_ts = now
        self._buf += chunk
        while (nl := self._buf.find(b"\n")) >= 0:
            out.append((self._buf[:nl].decode(errors="replace"), self._first_ts))
            self._buf, self._first_ts = self._buf[nl + 1 :], now
        return out


class HeartbeatReader:
    """Reads one QEMU's heartbeat chardev (a UNIX socket) in the background.

    It also carries messages to the guest (``send("check")``) and lets callers
    wait for a '#' message with :meth:`wait_message`.
    """

    def __init__(self, path: Path, side: str, log_: logging.Logger | None = None) -> None:
        self.path = path
        self.side = side
        self.beats: list[Beat] = []
        self.messages: list[tuple[float, str]] = []
        self._log = log_ or log
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._new_message = asyncio.Event()

    def __repr__(self) -> str:
        state = "reading" if self._thread and self._thread.is_alive() else "stopped"
        return f"<HeartbeatReader {self.side} {self.path.name} {state} beats={len(self.beats)}>"

    async def start(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        reader = socket.socket(fileno=os.dup(sock.fileno()))  # the thread's end: waits with a timeout
        reader.settimeout(READ_WAIT_S)
        self._thread = threading.Thread(
            target=self._read, args=(reader, loop), name=f"heartbeat-{self.side}", daemon=True
        )
        self._thread.start()

    def _read(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """In a thread of its own, off the event loop (each beat woke it 40 times): wait for
        a line's first byte, then ``GATHER_S`` for the rest of it."""
        lines = Lines()
        try:
            while chunk := _recv(sock):
                for text, ts in lines.feed(chunk, time.time()):
                    item = parse_line(text, ts, self.side)
                    if isinstance(item, Beat):
                        self.beats.append(item)
                    elif isinstance(item, str):
                        self._log.debug("guest(%s): %s", self.side, item)
                        loop.call_soon_threadsafe(self._message, ts, item)
                if lines.pending:
                    time.sleep(GATHER_S)
        except OSError as exc:
            self._log.debug("heartbeat(%s) ended: %s", self.side, exc)
        except RuntimeError:  # the loop closed first: nobody waits for a message any more
            pass
        finally:
            sock.close()

    def _message(self, ts: float, item: str) -> None:
        self.messages.append((ts, item))
        self._new_message.set()

    async def send(self, command: str) -> None:
        if self._sock is None:
            raise RuntimeError("heartbeat reader not started")
        await asyncio.get_running_loop().sock_sendall(self._sock, command.encode() + b"\n")

    async def wait_message(self, prefix: str, after: float, timeout: float) -> str | None:
        """The first '#' message starting with ``prefix`` received after ``after``."""

        def found() -> str | None:
            for ts, msg in self.messages:
                if ts >= after and msg.startswith(prefix):
                    return msg
            return None

        deadline = time.monotonic() + timeout
        while (msg := found()) is None and (left := deadline - time.monotonic()) > 0:
            self._new_message.clear()  # messages arrive by the loop's callbacks: none in between
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_message.wait(), left)
        return msg

    async def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):  # QEMU closed it first
                self._sock.shutdown(socket.SHUT_RDWR)  # the thread's recv returns at once
            self._sock.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
