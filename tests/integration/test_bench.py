"""One short, real bench cell on the lab (one repeat, small guest), then its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livemig.bench import Cell, run_bench, summarize, targets, write_report
from livemig.lab import Lab

from .conftest import VMFactory

pytestmark = [pytest.mark.integration, pytest.mark.lab]


def test_one_bench_cell_and_its_report(lab_env: Path, vms: VMFactory, tmp_path: Path) -> None:
    cell = Cell("events", "postcopy-after:1", "dirty:mib=32,pattern=seq", memory_mib=192,
                bandwidth="400mbit", poll=True, warmup_s=0.5)  # fmt: skip
    out = tmp_path / "results"
    lines: list[str] = []
    [path] = run_bench([cell], 1, out, say=lines.append)
    assert Lab.current(lab_env) is None, "the bench took down the lab it brought up"
    result = json.loads(path.read_text())
    assert result["dimensions"]["scenario"] == "events" and result["dimensions"]["repeat"] == 1
    assert result["dimensions"]["accel"] == "tcg" and result["dimensions"]["bandwidth"] == "400mbit"
    m = {x["name"]: x for x in result["metrics"]}
    assert m["completed"]["value"] == 1, result.get("error") or result["report"]["error"]
    assert m["max_stall_ms"]["unit"] == "ms" and m["max_stall_ms"]["value"] > 0
    assert 0 < m["time_vs_bound"]["value"] < 10
    # the 50 ms poller saw the status changes, and later than the pushed events
    poll = result["poll"]
    assert poll["polls"] > 3 and "completed" in poll["latency_ms"]
    assert 0 <= m["event_latency_median_ms"]["value"] < m["poll_latency_mean_ms"]["value"] <= 60
    md = write_report(out, tmp_path / "docs", "test")
    text = md.read_text()
    assert "| events/postcopy-after:1 | 1 | 1 |" in text
    assert (tmp_path / "docs/img/events.png").stat().st_size > 1000
    assert list((tmp_path / "docs/img").glob("timeline-events_postcopy-after1-r1.png"))
    [t] = [t for t in targets(summarize([result])) if t["target"] == "events"]
    assert t["met"] is not None and "pushed p99" in t["measured"]
