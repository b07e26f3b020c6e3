"""TLS for the migration stream, post-copy channels included, with the lab's PKI."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livemig.core.options import MigrationOptions
from livemig.lab import Lab, Shaping
from livemig.lab.pki import issue_host, new_ca
from livemig.policy import parse_policy
from livemig.sync import SyncMigration

from .conftest import VMFactory, qmp_query
from .test_cli import assert_one_line_error, livemig
from .test_faults import cut_for, migrate_with

pytestmark = [pytest.mark.integration, pytest.mark.lab]


def tls_options(policy: str = "postcopy-after:1") -> MigrationOptions:
    return MigrationOptions(policy=parse_policy(policy), tls=True)


def test_tls_migration_covers_every_channel(lab_env: Path, vms: VMFactory) -> None:
    lab = Lab.up(2, Shaping(50_000_000), lab_env)
    assert (lab.pki_dir("dst") / "server-cert.pem").exists() and (
        lab.pki_dir("src") / "client-key.pem"
    ).stat().st_mode & 0o077 == 0
    vms.start(workload="verify:mib=64", host="src")
    report = SyncMigration("vm", options=tls_options(), registry=vms.registry, to_host="dst").migrate()
    assert report.status == "completed", report.error
    assert report.channels == ["main+tls", "postcopy-preempt+tls"]
    # what the destination QEMU (now the VM) itself says it used, not livemig's echo
    aux = vms.record().instance.paths.qmp_aux
    params = qmp_query(aux, "query-migrate-parameters")
    caps = {c["capability"]: c["state"] for c in qmp_query(aux, "query-migrate-capabilities")}
    assert str(params["tls-creds"]).startswith("lm-tls-"), params
    assert caps["postcopy-ram"] and caps["postcopy-preempt"], caps
    assert report.switched_at_pass == 1 and report.guest["verify"].startswith("verify ok")
    lab.down()
    assert not (lab_env / "lab-pki").exists(), "lab down removes the throw-away PKI"


def test_a_destination_with_another_ca_is_refused(lab_env: Path, vms: VMFactory) -> None:
    lab = Lab.up(2, Shaping(50_000_000), lab_env)
    issue_host(new_ca("an impostor CA"), lab.pki_dir("dst"), "dst", lab.host("dst").address)
    src = vms.start(host="src")
    report = SyncMigration("vm", options=tls_options(), registry=vms.registry, to_host="dst").migrate()
    assert report.status == "failed", report
    assert report.where and report.where.startswith("source")
    rec = vms.record()
    assert rec.instance.pid == src.instance.pid and rec.instance.alive() and rec.migration is None
    assert [p.name for p in vms.runtime.glob("qemu/*")] == [src.instance.dir.name]


def test_tls_needs_lab_hosts(vms: VMFactory) -> None:
    vms.start()
    assert_one_line_error(livemig("migrate", "vm", "--tls", runtime=vms.runtime), 2, "--tls needs lab hosts")
    assert vms.record().migration is None


# -- TLS proven on the wire -------------------------------------------------------------
CAPTURE = Path(__file__).with_name("capture.py")
SEED = 4242
MASK = (1 << 64) - 1


def pattern_word(seed: int, page: int, gen: int, w: int) -> int:
    """lmwork.c's verify pattern (pattern_word), in Python: what the guest wrote."""
    x = (seed * 0x9E3779B97F4A7C15 ^ page * 0xBF58476D1CE4E5B9 ^ gen * 0x94D049BB133111EB ^ w) & MASK
    x ^= x >> 31
    return (x * 0xD6E8FEB86969D7ED) & MASK


def markers(seed: int, pages: range) -> list[bytes]:
    """The first 32 bytes of each of these pages as the verify workload first fills them
    (it then rewrites a random page now and then, at 1 MiB/s here, so most keep it):
    bytes that exist nowhere but in the guest's memory."""
    return [b"".join(struct.pack("<Q", pattern_word(seed, p, 0, w)) for w in range(4)) for p in pages]


MARKS = markers(SEED, range(0, 16384, 512))  # 32 pages across the 64 MiB the guest filled


@contextlib.contextmanager
def capture(lab: Lab, host: str, out: Path) -> Iterator[dict[str, Any]]:
    """Capture every TCP payload on ``host``'s port of the lab switch, per flow."""
    out.mkdir()
    argv = [
        "ip",
        "netns",
        "exec",
        lab.plan.switch_netns,
        sys.executable,
        str(CAPTURE),
        lab.host(host).port,
        str(out),
    ]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while not (out / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the capture did not start"
        time.sleep(0.05)
    result: dict[str, Any] = {}
    try:
        yield result
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        result.update(json.loads((out / "summary.json").read_text()))
        flows = {f: (out / f"flow-{f}.bin").read_bytes() for f in result["flows"]}
        result["found"] = {i: [f for f, data in flows.items() if m in data] for i, m in enumerate(MARKS)}
        shutil.rmtree(out)


def test_tls_keeps_guest_memory_off_the_wire(lab_env: Path, vms: VMFactory, tmp_path: Path) -> None:
    """A TLS migration with post-copy, the page-request channel and a recovery after a cut
    link: no byte pattern from the guest's memory crosses the wire in the clear, on any
    channel. The same guest migrated back without TLS: the capture sees the patterns, so
    it would have seen them."""
    lab = Lab.up(2, Shaping(5_000_000), lab_env)  # 40 mbit: post-copy of 64 MiB takes ~15 s
    vms.start(workload=f"verify:mib=64,rate=1,seed={SEED}", host="src")
    times: dict[str, float] = {}
    opts = MigrationOptions(policy=parse_policy("postcopy-now"), tls=True, stall_timeout_s=1.5)
    with capture(lab, "src", tmp_path / "tls") as tls:
        mig = migrate_with(vms, opts, "postcopy-started", cut_for(lab, "src", 1.0, 5.0, times))
    report = mig.report
    assert report is not None and report.status == "completed", report and report.error
    assert report.channels == ["main+tls", "postcopy-preempt+tls"]
    completed = next(e["qemu_ts"] for e in report.events if e["name"] == "completed")
    assert "down" in times and times["down"] < completed, "the cut did not land in post-copy"
    assert report.recovery and report.recovery["recovered"] >= 1, report.recovery
    assert len(tls["flows"]) >= 6, tls["flows"]  # main, preempt and a recovery's, each way
    assert tls["payload_bytes"] > 60 << 20  # the whole guest crossed this port
    assert not any(tls["found"].values()), {i: f for i, f in tls["found"].items() if f}
    assert report.guest.get("verify", "").startswith("verify ok"), report.guest
    print(f"\nTLS: {len(tls['flows'])} flows, {tls['payload_bytes']} payload bytes captured, "
          f"channels {report.channels}, recovered {report.recovery['recovered']}; "
          f"guest patterns in the clear: 0 of {len(MARKS)}")  # fmt: skip

    back = MigrationOptions(policy=parse_policy("postcopy-after:1"), preempt=False)
    with capture(lab, "src", tmp_path / "plain") as plain:
        report = SyncMigration("vm", options=back, registry=vms.registry, to_host="src").migrate()
    assert report.status == "completed", report.error
    seen = [i for i, flows in plain["found"].items() if flows]
    assert len(seen) >= len(MARKS) // 2, f"only {len(seen)} of {len(MARKS)} patterns seen in the clear"
    print(f"without TLS: {len(plain['flows'])} flows, {plain['payload_bytes']} payload bytes captured; "
          f"guest patterns in the clear: {len(seen)} of {len(MARKS)}")  # fmt: skip
