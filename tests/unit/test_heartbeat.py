import itertools
import json
from pathlib import Path

from livemig.observe.heartbeat import Beat, guest_stats, parse_line, read_beats


def stream(spec: list[tuple[int, float, float]], side: str = "src") -> list[Beat]:
    """(seq, host seconds, guest seconds) -> beats."""
    return [Beat(seq, int(g * 1e9), h, side) for seq, h, g in spec]


def test_parse_line() -> None:
    assert parse_line("12 3456\n", 1.0) == Beat(12, 3456, 1.0, "")
    assert parse_line("# verify ok pages=3", 1.0) == "verify ok pages=3"
    assert parse_line("garbage", 1.0) is None
    assert parse_line("1 2 3", 1.0) is None


def test_steady_stream_has_no_stall() -> None:
    beats = stream([(i, i * 0.005, i * 0.005) for i in range(200)])
    s = guest_stats(beats)
    assert s.heartbeats == 200 and s.lost == 0 and s.stalls_over_100ms == 0
    assert s.max_stall_ms is not None and abs(s.max_stall_ms - 5.0) < 1e-6


def test_stopped_vm_shows_host_gap_not_guest_gap() -> None:
    # Source beats 0..9, then the VM is stopped 300 ms (guest clock stopped too), resumes on dst.
    src = stream([(i, i * 0.005, i * 0.005) for i in range(10)])
    dst = stream([(i, 0.345 + (i - 10) * 0.005, 0.05 + (i - 10) * 0.005) for i in range(10, 20)], "dst")
    s = guest_stats(src + dst)
    assert s.max_stall_ms is not None and abs(s.max_stall_ms - 300.0) < 1e-6
    assert s.stalls_over_100ms == 1
    assert s.stalls[0].after_seq == 9
    assert s.stalls[0].guest_ms < 10  # the guest's clock did not see it
    assert s.lost == 0


def test_starved_guest_shows_both_gaps_and_lost_beats_count() -> None:
    beats = stream([(0, 0.0, 0.0), (1, 0.005, 0.005), (5, 0.905, 0.9), (6, 0.910, 0.905)])
    s = guest_stats(beats)
    assert s.lost == 3
    assert s.stalls_over_100ms == 1 and s.stalls[0].guest_ms > 800


def test_a_late_delivered_beat_does_not_split_the_stall() -> None:
    # The guest writes beat 10 at guest time 0.050 s, then stalls 400 ms (post-copy faults:
    # its clock runs). Beat 10 reaches the host only at 0.250 s (the serial port drains
    # only while the vCPU runs), beat 11 at 0.455 s: the host sees two gaps of ~200 ms.
    beats = stream([(i, i * 0.005, i * 0.005) for i in range(10)])
    beats += stream([(10, 0.250, 0.050), (11, 0.455, 0.450), (12, 0.460, 0.455)])
    s = guest_stats(beats)
    host_only = max((b.host_ts - a.host_ts) * 1000 for a, b in itertools.pairwise(beats))
    assert host_only < 210  # the host's arrival times alone under-count it
    assert s.max_stall_ms is not None and abs(s.max_stall_ms - 400.0) < 1e-6
    assert s.stalls_over_100ms == 2 and max(st.ms for st in s.stalls) == s.max_stall_ms


def test_duplicates_and_window() -> None:
    a = stream([(i, i * 0.01, i * 0.01) for i in range(10)])
    b = stream([(i, i * 0.01 + 0.5, i * 0.01) for i in range(5, 15)], "dst")  # 5..9 seen twice
    s = guest_stats(a + b)
    assert s.heartbeats == 15
    s2 = guest_stats(a + b, start_ts=0.045, end_ts=0.085)
    assert s2.heartbeats == 4


def test_too_few_beats() -> None:
    assert guest_stats([]).max_stall_ms is None


DATA = Path(__file__).parent / "data"


def test_recorded_stream_reproduces_the_live_figures() -> None:
    """A real handover (`migrate --heartbeat-log`): the arithmetic run offline on the
    recording gives what livemig computed live, and the handover shows in it."""
    start, beats = read_beats(DATA / "hb-postcopy-after1.tsv")
    live = json.loads((DATA / "hb-postcopy-after1.json").read_text())
    s = guest_stats(beats, start_ts=start)
    for key in ("max_stall_ms", "stalls_over_100ms", "heartbeats", "lost", "max_guest_gap_ms"):
        assert s.to_dict()[key] == live["guest"][key], key
    assert {b.side for b in beats} == {"src", "dst"}
    # the handover: the last beat read on the source comes before the first one read on the
    # destination, and destination-resumed (QEMU's timestamp) lies between them
    last_src = max(b.host_ts for b in beats if b.side == "src")
    first_dst = min(b.host_ts for b in beats if b.side == "dst")
    resumed = next(e["qemu_ts"] for e in live["events"] if e["name"] == "destination-resumed")
    assert last_src < resumed < first_dst
    # a lower threshold finds more stalls, each one a real gap between consecutive beats
    s10 = guest_stats(beats, start_ts=start, threshold_ms=10.0)
    assert s10.stalls_over_100ms >= s.stalls_over_100ms and all(st.ms > 10 for st in s10.stalls)
    assert round(max(st.ms for st in s10.stalls), 3) == s.max_stall_ms
