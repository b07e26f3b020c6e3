from pathlib import Path

import pytest

from livemig.errors import SpecError, UsageError
from livemig.guest.workload import parse_workload
from livemig.spec import VMSpec, parse_size_mib
from livemig.units import check_gso_size, parse_duration_ms, parse_rate, parse_size_bytes


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    k, i = tmp_path / "vmlinuz", tmp_path / "initrd"
    k.write_bytes(b"k")
    i.write_bytes(b"i")
    return k, i


def test_valid_spec_roundtrips(files: tuple[Path, Path]) -> None:
    k, i = files
    spec = VMSpec("vm-1", 512, 2, k, i, "", parse_workload("dirty:mib=64,pattern=random"), "tcg").validated()
    assert VMSpec.from_dict(spec.to_dict()) == spec
    assert "livemig.workload=dirty:mib=64,pattern=random" in spec.kernel_cmdline


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"memory_mib": 10}, "memory"),
        ({"memory_mib": 10**6}, "memory"),
        ({"vcpus": 0}, "vcpus"),
        ({"accel": "hvf"}, "accel"),
        ({"kernel": Path("/nonexistent/vmlinuz")}, "boot.kernel"),
        ({"kernel": None}, "boot.kernel"),
        ({"cmdline": "a\nb"}, "boot.cmdline"),
        ({"workload": parse_workload("dirty:mib=4096")}, "workload"),
    ],
)
def test_invalid_specs_name_the_field(
    files: tuple[Path, Path], changes: dict[str, object], field: str
) -> None:
    k, i = files
    spec = VMSpec("vm", 256, 1, k, i).with_changes(**changes)
    with pytest.raises(SpecError) as info:
        spec.validated()
    assert info.value.field == field
    assert str(info.value).startswith(field)


@pytest.mark.parametrize(
    ("text", "mib"), [("512", 512), ("512M", 512), ("2G", 2048), ("2GiB", 2048), (" 64 MB ", 64), (256, 256)]
)
def test_sizes(text: str | int, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["lots", "-1", "1.5G", "12T", ""])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(SpecError):
        parse_size_mib(text)


@pytest.mark.parametrize(
    "text",
    ["idle", "dirty:mib=64,rate=8,pattern=random", "stream:fps=30,kib=256,ring=128", "verify:mib=32,seed=7",
     "faultprobe:mib=64,pages=500"],
)  # fmt: skip
def test_workloads_roundtrip(text: str) -> None:
    assert str(parse_workload(text)) == text


@pytest.mark.parametrize(
    "text",
    ["bogus", "dirty:mib=x", "dirty:mib=0", "dirty:pattern=diagonal", "idle:mib=3", "dirty:mib=1,mib=2",
     "stream:fps"],
)  # fmt: skip
def test_bad_workloads(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_workload(text)
    assert info.value.field == "workload"


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("200mbit", 25_000_000),
        ("25MB/s", 25_000_000),
        ("1gbit", 125_000_000),
        ("1MiB", 1 << 20),
        ("5000", 5000),
        ("100M", 100 << 20),
        ("512K", 512 << 10),
        ("1G/s", 1 << 30),
    ],
)
def test_rates(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text", ["fast", "10 furlongs", "0", "1bit", "-5MB"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "size"), [("256kb", 256 * 1024), ("1mb", 1 << 20), ("1500", 1500), ("32kbit", 4096)]
)
def test_tc_sizes(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize(("text", "ms"), [("100ms", 100.0), ("1s", 1000.0), ("500us", 0.5), ("20", 20.0)])
def test_durations(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["soon", "0ms", "5 parsecs", "10mbit/s", "2h"])
def test_bad_sizes_and_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration_ms(text)
    if text != "0ms":
        with pytest.raises(UsageError):
            parse_size_bytes(text)


@pytest.mark.parametrize(
    ("value", "ok"), [(4096, True), (8192, True), (65536, True), (4095, False), (65537, False)]
)
def test_gso_sizes(value: int, ok: bool) -> None:
    """One pair of bounds for a GSO size: lab up/shape --gso-max and a migration's gso_max."""
    if ok:
        assert check_gso_size(value) == value
    else:
        with pytest.raises(UsageError, match="out of range"):
            check_gso_size(value, "--gso-max")
