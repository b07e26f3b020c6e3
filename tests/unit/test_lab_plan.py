"""The lab's plan and the faultprobe parser (pure logic)."""

from __future__ import annotations

import pytest

from livemig.errors import NoSuchHost, UsageError
from livemig.job import parse_faultprobe
from livemig.lab import LabPlan, Shaping, plan_lab


def test_two_hosts_on_documentation_addresses() -> None:
    plan = plan_lab(2, Shaping(25_000_000))
    assert [(h.name, h.netns, h.address, h.port) for h in plan.hosts] == [
        ("src", "lm-src", "192.0.2.10", "p-src"),
        ("dst", "lm-dst", "192.0.2.11", "p-dst"),
    ]
    assert plan.namespaces == ("lm-switch", "lm-net", "lm-client", "lm-src", "lm-dst")
    assert plan.host("dst").address == "192.0.2.11"


def test_more_hosts_and_a_custom_prefix() -> None:
    plan = plan_lab(4, Shaping(25_000_000), prefix="lmt-")
    assert [h.name for h in plan.hosts] == ["src", "dst", "h3", "h4"]
    assert all(h.netns.startswith("lmt-") and h.address.startswith("192.0.2.") for h in plan.hosts)
    assert len({h.address for h in plan.hosts}) == 4


def test_plan_round_trips() -> None:
    plan = plan_lab(3, Shaping(12_500_000, 64 * 1024, 20.0))
    assert LabPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    ("hosts", "shaping", "prefix", "words"),
    [
        (1, Shaping(25_000_000), "lm-", "--hosts"),
        (9, Shaping(25_000_000), "lm-", "--hosts"),
        (2, Shaping(100), "lm-", "--bandwidth"),
        (2, Shaping(25_000_000, burst_bytes=10), "lm-", "--burst"),
        (2, Shaping(25_000_000, latency_ms=0), "lm-", "--latency"),
        (2, Shaping(25_000_000), "Bad Prefix", "prefix"),
    ],
)
def test_bad_lab_settings(hosts: int, shaping: Shaping, prefix: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        plan_lab(hosts, shaping, prefix)


def test_unknown_host_names_the_known_ones() -> None:
    with pytest.raises(NoSuchHost, match="hosts: src, dst") as info:
        plan_lab(2, Shaping(25_000_000)).host("elsewhere")
    assert info.value.host == "elsewhere" and info.value.exit_code == 2  # bad input


def test_shaping_reads_like_tc() -> None:
    assert str(Shaping(25_000_000)) == "tbf rate 200mbit burst 256kb latency 100ms"


def test_faultprobe_line() -> None:
    line = (
        "faultprobe n=2000 mean_ns=1500000 p50_ns=900000 p99_ns=12000000 max_ns=40000000 "
        "hist_log2us=0,0,5,10 sum=123"
    )
    assert parse_faultprobe(line) == {
        "touches": 2000,
        "mean_ms": 1.5,
        "p50_ms": 0.9,
        "p99_ms": 12.0,
        "max_ms": 40.0,
        "hist_log2us": [0, 0, 5, 10],
    }
