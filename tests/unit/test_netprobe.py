"""The network probe's figures, from raw send/receive times (pure)."""

import itertools
import struct

from livemig.observe.netprobe import network_stats
from livemig.observe.prober import _announce_kind


def raw(sent: list[float], recv: dict[int, float], announce: list[tuple[float, str]] | None = None) -> dict:
    return {"target": "198.51.100.10:7", "interval_ms": 5.0, "sent": list(enumerate(sent)),
            "recv": list(recv.items()), "announce": announce or []}  # fmt: skip


def test_an_outage_shows_as_the_longest_gap_and_the_unanswered_probes() -> None:
    sent = [i * 0.005 for i in range(100)]
    recv = {i: t + 0.001 for i, t in enumerate(sent) if not 40 <= i < 60}  # 20 probes lost
    stats = network_stats(raw(sent, recv))
    assert stats["sent"] == 100 and stats["received"] == 80 and stats["lost"] == 20
    assert stats["max_gap_ms"] == 105.0  # reply 39 at 0.196 s, reply 60 at 0.301 s
    assert stats["rtt_p50_ms"] == 1.0


def test_late_replies_cannot_hide_a_gap() -> None:
    # From 0.1 s the guest is starved (post-copy faults): it answers its queue of probes
    # one every 0.5 s, oldest first, until it catches up at 4.1 s. Replies never stop for
    # more than ~0.5 s, but the probe sent at 0.135 s waited 3.965 s for any answer.
    sent = [i * 0.005 for i in range(1000)]
    recv = {i: t + 0.001 for i, t in enumerate(sent) if i < 20 or i >= 820}
    recv |= {20 + m: 0.6 + 0.5 * m for m in range(7)}  # probes 20..26, slowly
    recv |= {i: 4.1 + (i - 27) * 1e-5 for i in range(27, 820)}  # the rest in a burst
    stats = network_stats(raw(sent, recv))
    between = max(b - a for a, b in itertools.pairwise(sorted(recv.values())))
    assert between < 0.51  # the gaps between replies alone hide it
    assert stats["lost"] == 0
    assert stats["max_gap_ms"] == 3965.0 and stats["max_gap_start_ts"] == 0.135


def test_a_lost_probe_waits_for_the_next_answer() -> None:
    sent = [0.0, 0.005, 0.010, 0.015]
    stats = network_stats(raw(sent, {0: 0.001, 3: 0.016}))  # 1 and 2 never answered
    assert stats["lost"] == 2 and stats["max_gap_ms"] == 15.0  # between replies, and probe 1's wait: 11 ms


def test_late_replies_count_once_and_are_not_lost() -> None:
    stats = network_stats(raw([0.0, 0.005], {0: 0.5, 1: 0.501}) | {"recv": [(0, 0.5), (0, 0.6), (1, 0.501)]})
    assert stats["lost"] == 0 and stats["received"] == 2 and stats["rtt_max_ms"] == 500.0


def test_the_first_announce_after_the_resume_is_reported() -> None:
    stats = network_stats(
        raw([0.0], {0: 0.001}, [(9.0, "rarp"), (10.012, "rarp"), (10.06, "garp")]), resumed_ts=10.0
    )
    assert stats["announce"]["frames"] == 2 and stats["announce"]["first_ms_after_resume"] == 12.0
    assert stats["announce"]["kinds"] == ["garp", "rarp"]


def test_no_replies_at_all() -> None:
    stats = network_stats(raw([0.0, 0.005], {}))
    assert stats["lost"] == 2 and stats["max_gap_ms"] is None and stats["announce"]["frames"] == 0


def test_announce_frames_are_recognised() -> None:
    mac = bytes.fromhex("525400aabbcc")
    rarp = b"\xff" * 6 + mac + struct.pack("!H", 0x8035) + b"\0" * 28
    ip = bytes([198, 51, 100, 10])
    garp = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + b"\0" * 14 + ip + b"\0" * 6 + ip
    other = b"\xff" * 6 + bytes(6) + struct.pack("!H", 0x8035) + b"\0" * 28
    assert _announce_kind(rarp, mac) == "rarp" and _announce_kind(garp, mac) == "garp"
    assert _announce_kind(other, mac) is None and _announce_kind(rarp[:10], mac) is None
