"""One rate convention: bytes/s with binary K/M/G suffixes and tc-style bits; a bare
number is bytes/s for livemig's options and MiB/s for a workload's rate (its unit), and
an error says so."""

from __future__ import annotations

import pytest

from livemig.errors import SpecError, UsageError
from livemig.guest.workload import parse_workload
from livemig.units import parse_rate


@pytest.mark.parametrize(
    ("text", "mib"), [("8", 8), ("20M", 20), ("8MiB/s", 8), ("160mbit", 19), ("1G", 1024)]
)
def test_workload_rates_take_the_convention(text: str, mib: int) -> None:
    assert dict(parse_workload(f"dirty:mib=64,rate={text}").params)["rate"] == mib


@pytest.mark.parametrize(("text", "says"), [("abc", "a bare number is MiB/s"), ("100K", "under 1 MiB/s")])
def test_bad_workload_rates_say_the_unit(text: str, says: str) -> None:
    with pytest.raises(SpecError, match=says):
        parse_workload(f"dirty:rate={text}")


def test_a_bare_bandwidth_is_bytes_and_the_error_says_so() -> None:
    assert (
        parse_rate("25M") == 25 << 20 and parse_rate("200mbit") == 25_000_000 and parse_rate("5000") == 5000
    )
    with pytest.raises(UsageError, match="a bare number is bytes/s: 10M is 10 MiB/s"):
        parse_rate("10", "--bandwidth")
