"""The tripwire's frame parser (pure): which frames open a connection or carry data."""

from __future__ import annotations

import socket
import struct

from livemig.lab.tripwire import TCP_ACK, TCP_SYN, tcp_frame


def _frame(
    flags: int, payload: bytes = b"", proto: int = socket.IPPROTO_TCP, ethertype: int = 0x0800
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 4444, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, proto, 0,
                     socket.inet_aton("192.0.2.10"), socket.inet_aton("192.0.2.11"))  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ethertype) + ip + tcp


def test_a_syn_opens_a_flow_toward_its_destination() -> None:
    flow, flags, payload = tcp_frame(_frame(TCP_SYN)) or (None, 0, None)
    assert flow == ("192.0.2.10", 40000, "192.0.2.11", 4444)
    assert flags & TCP_SYN and not flags & TCP_ACK and payload == b""


def test_data_is_read_without_the_ethernet_padding() -> None:
    parsed = tcp_frame(_frame(TCP_ACK, b"hello"))
    assert parsed is not None and parsed[2] == b"hello"
    padded = _frame(TCP_ACK) + b"\x00" * 6  # a short frame padded to Ethernet's minimum
    assert (tcp_frame(padded) or (None, 0, None))[2] == b""


def test_other_frames_are_ignored() -> None:
    assert tcp_frame(_frame(TCP_SYN, proto=socket.IPPROTO_UDP)) is None
    assert tcp_frame(_frame(TCP_SYN, ethertype=0x86DD)) is None
    assert tcp_frame(b"\x00" * 20) is None
