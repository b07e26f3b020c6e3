"""Property-based bad input (hypothesis): every parser either accepts a string or
raises livemig's UsageError, never anything else; the CLI turns any bad argument
into one line on stderr and exit code 2, and starts nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2 import netns

from livemig.cli import main
from livemig.errors import UsageError
from livemig.guest.workload import parse_workload
from livemig.lab import Shaping, plan_lab
from livemig.policy import parse_policy
from livemig.spec import VMSpec, parse_size_mib
from livemig.units import parse_duration_ms, parse_rate, parse_size_bytes

text = st.text(max_size=40)
# strings that look almost right: digits, units, separators, keywords
tokens = st.sampled_from(
    ["0", "1", "-1", "512", "1e9", ".", ":", ",", "=", "/s", "M", "mbit", "kb", "ms", "GiB", "postcopy-after",
     "precopy", "timeout", "manual", "dirty", "mib", "rate", "pattern", "random", " ", "\n", "\x00", "é"]
)  # fmt: skip
near = st.lists(tokens, max_size=6).map("".join)
anything = st.one_of(text, near)

PARSERS: list[tuple[str, Callable[[str], Any]]] = [
    ("rate", parse_rate),
    ("size_mib", parse_size_mib),
    ("size_bytes", parse_size_bytes),
    ("duration", parse_duration_ms),
    ("workload", parse_workload),
    ("policy", parse_policy),
]


@pytest.mark.parametrize(("name", "parse"), PARSERS, ids=[n for n, _ in PARSERS])
@given(value=anything)
@settings(max_examples=150, deadline=None)
def test_parsers_accept_or_raise_usage_error(name: str, parse: Callable[[str], Any], value: str) -> None:
    try:
        parse(value)
    except UsageError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), (name, value, str(exc))


@given(
    name=anything,
    memory=st.integers(-(2**40), 2**40),
    vcpus=st.integers(-5, 500),
    accel=st.sampled_from(["auto", "tcg", "kvm", "hvf", ""]),
    cmdline=anything,
)
@settings(max_examples=200, deadline=None)
def test_vm_specs_validate_or_name_the_field(
    name: str, memory: int, vcpus: int, accel: str, cmdline: str
) -> None:
    spec = VMSpec(name, memory_mib=memory, vcpus=vcpus, kernel=Path("/nonexistent/k"),
                  initrd=Path("/nonexistent/i"), cmdline=cmdline, accel=accel)  # fmt: skip
    with pytest.raises(UsageError) as info:
        spec.validated()  # the kernel does not exist, so it never validates
    assert getattr(info.value, "field", None) in {
        "name",
        "memory",
        "vcpus",
        "accel",
        "machine",
        "boot.kernel",
        "boot.cmdline",
    }


@given(hosts=st.integers(-3, 20), rate=st.integers(-1, 2**40), burst=st.integers(-1, 2**31),
       latency=st.floats(allow_nan=True, allow_infinity=True))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_lab_plans_validate(hosts: int, rate: int, burst: int, latency: float) -> None:
    try:
        plan = plan_lab(hosts, Shaping(rate, burst, latency))
    except UsageError:
        return
    assert 2 <= len(plan.hosts) <= 8 and all(h.address.startswith("192.0.2.") for h in plan.hosts)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def _assert_bad(code: int, err: str, args: tuple[str, ...]) -> None:
    assert code == 2, (args, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livemig: error: "), (args, err)


CLI_CASES: list[Callable[[str], tuple[str, ...]]] = [
    lambda v: ("migrate", "nosuchvm", "--policy", v),
    lambda v: ("migrate", "nosuchvm", "--bandwidth", v),
    lambda v: ("migrate", "nosuchvm", "--stall-timeout", v),
    lambda v: ("vm", "start", "x", "--memory", v, "--kernel", "/nonexistent/k"),
    lambda v: ("vm", "start", "x", "--workload", v, "--kernel", "/nonexistent/k"),
    lambda v: ("vm", "start", v or "x", "--vcpus", "0", "--kernel", "/nonexistent/k"),
    lambda v: ("lab", "up", "--bandwidth", v, "--hosts", "0"),
    lambda v: ("postcopy", v or "x"),
    lambda v: ("bench", "run", v or "x", "--repeats", "0"),
    lambda v: ("migrate", "nosuchvm", "--policy", f"auto:{v}"),
    lambda v: ("plan", v or "x"),
]


@pytest.mark.parametrize("case", range(len(CLI_CASES)))
@given(value=anything.filter(lambda v: not v.startswith("-")))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cli_bad_arguments_are_one_line_exit_2_and_start_nothing(
    case: int, value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEMIG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("LIVEMIG_LAB_PREFIX", "lmh-")
    args = CLI_CASES[case](value)
    code, err = _cli(capsys, *args)
    _assert_bad(code, err, args)
    assert not list(tmp_path.glob("qemu/*")) and not (tmp_path / "lab.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".sock", ".ctl", ".lock", ".json")]
    assert not [n for n in netns.listnetns() if n.startswith("lmh-")]


# spec files: any TOML document (valid TOML, wrong shapes) or any text
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
                    text, near, st.sampled_from(["/dev/null", "/nonexistent", "52:54:00:00:00:01",
                                                 "bridge:lmbr0", "user", "virtio-net-pci", "raw", "none"]))  # fmt: skip
_keys = st.sampled_from(["name", "memory", "vcpus", "accel", "machine", "workload", "extra_args", "boot",
                         "disk", "nic", "serial", "path", "format", "readonly", "cache", "model", "mac",
                         "network", "ip", "kernel", "initrd", "cmdline", "firmware", "heartbeat", "x"])  # fmt: skip
_values = st.recursive(
    _scalar.filter(lambda v: v is not None),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)


@given(doc=st.dictionaries(_keys, _values, max_size=8))
@settings(max_examples=300, deadline=None)
def test_spec_documents_parse_or_name_a_field(doc: dict[str, Any]) -> None:
    import tomli_w

    from livemig.errors import SpecError
    from livemig.specfile import parse_spec

    try:
        spec = parse_spec(tomli_w.dumps(doc)).validated()
    except SpecError as exc:
        assert str(exc) and "\n" not in str(exc) and exc.field
    except UsageError as exc:  # a size, rate or workload inside a field
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(spec, VMSpec)


@given(raw=st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_spec_text_that_is_not_toml_is_one_line(raw: str) -> None:
    from livemig.specfile import parse_spec

    with pytest.raises(UsageError) as info:
        parse_spec(raw).validated()
    assert "\n" not in str(info.value)
