import itertools
import json
from pathlib import Path

import pytest

from livemig.observe.heartbeat import Beat, Lines, brownout, guest_stats, parse_line, read_beats


def stream(spec: list[tuple[int, float, float]], side: str = "src") -> list[Beat]:
    """(seq, host seconds, guest seconds) -> beats."""
    return [Beat(seq, int(g * 1e9), h, side) for seq, h, g in spec]


def test_parse_line() -> None:
    assert parse_line("12 3456\n", 1.0) == Beat(12, 3456, 1.0, "")
    assert parse_line("# verify ok pages=3", 1.0) == "verify ok pages=3"
    assert parse_line("garbage", 1.0) is None
    assert parse_line("1 2 3", 1.0) == Beat(1, 2, 1.0, "", 3)  # with the workload's progress counter
    assert parse_line("1 2 3 4", 1.0) is None
    assert parse_line("1 2 x", 1.0) is None


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


def _working(phases: list[tuple[float, float]], start: float = 0.0) -> list[Beat]:
    """Beats every 5 ms; each phase is (seconds, work per second), a negative rate being a
    stall: no beats at all."""
    beats, t, work, seq = [], start, 0.0, 0
    for secs, rate in phases:
        end = t + secs
        while t < end - 1e-9:
            t += 0.005
            if rate >= 0:
                work += rate * 0.005
                beats.append(Beat(seq, int(t * 1e9), t, "src", int(work)))
            seq += 1
    return beats


def test_brownout_is_the_slowdown_beside_the_stall() -> None:
    # 10 s at 1000 units/s, then the migration (t = 10 to 17): 3 s as before, 2 s at a
    # fifth, a 1 s stall (no beats), 1 s as before
    beats = _working([(10, 1000), (3, 1000), (2, 200), (1, -1), (1, 1000)])
    b = brownout(beats, start_ts=10.0, end_ts=17.0)
    assert b is not None
    assert b["per_s_before"] == pytest.approx(1000, rel=0.01)
    assert b["share_during"] == pytest.approx((3000 + 400 + 1000) / 7000, abs=0.01)
    assert b["under_half_s"] == pytest.approx(3.0, abs=0.01)  # the slow 2 s and the stalled one


def test_no_brownout_without_work_or_history() -> None:
    assert brownout(_working([(10, 0), (5, 0)]), 10.0, 15.0) is None  # idle: counts nothing
    assert brownout(_working([(0.004, 1000), (5, 1000)]), 0.004, 5.0) is None  # no beats before the start
    old = [Beat(i, i * 5_000_000, i * 0.005, "src") for i in range(4000)]  # a guest without the counter
    assert brownout(old, 10.0, 20.0) is None


def test_a_backlog_read_in_one_batch_gives_no_absurd_rate() -> None:
    """A reader that connects just before the migration reads the guest's buffered beats at
    once: their host times are the same instant. The rate before is taken on the guest's
    clock; under half a second of it gives no brownout rather than billions a second."""
    backlog = [Beat(i, int(i * 5e6), 9.999, "src", i * 5) for i in range(40)]  # 0.2 s of beats, one read
    live = _working([(5, 1000)], start=10.0)
    assert brownout(backlog + live, 10.0, 15.0) is None
    long_backlog = [Beat(i, int(i * 5e6), 9.999, "src", i * 5) for i in range(400)]  # 2 s at 1000/s
    b = brownout(long_backlog + live, 10.0, 15.0)
    assert b is not None and b["per_s_before"] == pytest.approx(1000, rel=0.01)


def test_a_line_is_timed_by_its_first_byte_however_it_is_chunked() -> None:
    """The serial port delivers a beat a byte or two at a time; the reader gathers them,
    and each line keeps the time its first byte arrived (a gather delay costs nothing)."""
    lines = Lines()
    assert lines.feed(b"1", 10.0) == [] and lines.pending
    assert lines.feed(b"2 34", 10.001) == []
    assert lines.feed(b"5\n6", 10.004) == [("12 345", 10.0)]
    assert lines.pending  # "6" began the next line at 10.004
    assert lines.feed(b"7 8\n# hi\n", 10.009) == [("67 8", 10.004), ("# hi", 10.009)]
    assert not lines.pending
    assert lines.feed(b"\xff\n", 11.0) == [("\ufffd", 11.0)]  # noise decodes, never raises
