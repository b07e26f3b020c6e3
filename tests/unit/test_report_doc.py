"""docs/report.md documents every field of the report (the contract), checked against the
dataclass here and against real reports in the integration tests (assert_documented)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from livemig.core.report import MigrationReport

DOC = Path(__file__).resolve().parents[2] / "docs" / "report.md"
# containers whose keys are QEMU's or free-form (documented as a whole)
OPAQUE = {"parameters", "evidence", "link", "events[].data", "guest.faultprobe", "guest.verify",
          "guest.sides", "network.announce", "recovery", "tunings[]", "options.announce_ms"}  # fmt: skip


CONTAINERS = {"events[]", "events[].data", "decisions[]", "timeline[]", "tunings[]", "recovery", "evidence",
              "link", "parameters", "guest.stalls[]", "guest.faultprobe", "guest.sides", "network", "backend",
              "backend.lifecycle[]", "backend.handshakes_ms", "hosts", "options", "guest.brownout"}  # fmt: skip


def documented() -> set[str]:
    """Every `name` in the first column of the document's tables; for a container, the
    `names` its meaning column lists too; and every prefix of those."""
    names: set[str] = set()
    for line in DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first, *rest = line.split(" | ")
        for field in re.findall(r"`([^`]+)`", first):
            names.add(field)
            if field in CONTAINERS:
                names |= {f"{field}.{sub}" for sub in re.findall(r"`([A-Za-z0-9_]+)", " ".join(rest))}
    for name in list(names):
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            names |= {prefix, prefix.removesuffix("[]")}
    return names


def paths(obj: Any, prefix: str = "") -> set[str]:
    """Dotted key paths of a report (lists of objects as ``name[]``)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}{k}"
            out.add(p)
            if p not in OPAQUE:
                out |= paths(v, p + ".")
    elif isinstance(obj, list):
        p = prefix.rstrip(".") + "[]"
        for item in obj:
            if isinstance(item, dict) and p not in OPAQUE:
                out |= {f"{p}.{k}" for k in item} | paths(item, p + ".") - {p}
    return {x.replace(".[]", "[]") for x in out}


def assert_documented(report: dict[str, Any]) -> None:
    keys = paths(report)
    assert not [p for p in keys if " " in p], "a report key contains a space"
    missing = sorted(p for p in keys if p not in documented())
    assert not missing, f"report fields not in docs/report.md: {missing}"


def test_every_field_of_the_dataclass_is_documented() -> None:
    fields = {f.name for f in dataclasses.fields(MigrationReport)}
    assert fields <= documented(), sorted(fields - documented())


def test_no_key_has_a_space() -> None:
    assert not [f for f in documented() if " " in f]


def test_a_recorded_report_is_documented() -> None:
    report = {"vm": "v", "guest": {"max_stall_ms": 1.0, "stalls": [{"after_seq": 1, "ms": 2.0}]},
              "timeline": [{"t": 0.1, "throughput_Bps": 125000}], "decisions": [{"trigger": "start"}],
              "network": {"rtt_p50_ms": 0.2, "max_gap_ms": 9.0, "announce": {"frames": 1}},
              "options": {"max_bandwidth_Bps": None, "announce_ms": {"rounds": 6}}}  # fmt: skip
    assert_documented(report)
    try:
        assert_documented({"vm": "v", "nosuch": 1})
    except AssertionError as exc:
        assert "nosuch" in str(exc)
    else:
        raise AssertionError("an undocumented field went unnoticed")


def test_rates_are_named_by_their_unit() -> None:
    """One convention in the JSON: a rate is bytes/s and its key ends in ``_Bps``."""
    key = re.compile(r"(^|_)(rate|bandwidth|throughput)(_|$)|bps", re.I)
    rates = [n for n in documented() if key.search(n.rsplit(".", 1)[-1])]
    assert len(rates) >= 6 and all(n.endswith("_Bps") for n in rates), rates
