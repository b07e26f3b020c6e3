"""The libvirt backend's pure parts: raw libvirt data checked once, the domain XML, and
the lab daemons' paths and URIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

from livemig.backends.libvirt.backend import _mib
from livemig.backends.libvirt.domain import domain_facts, domain_xml, heartbeat_path
from livemig.backends.libvirt.models import (
    handshakes,
    lifecycle_name,
    monitor_event,
    parse_job_stats,
    status_from_state,
)
from livemig.core.backend import BackendEvent, EventKind
from livemig.errors import UsageError
from livemig.lab.libvirtd import LabDaemon, daemon_for_uri, lab_uri
from livemig.spec import VMSpec
from livemig.virt import resolve_uri

# virDomainGetJobStats of a running pre-copy, as libvirt 9.0 returned it here
ACTIVE = {
    "operation": 5, "time_elapsed": 2001, "downtime": 300, "setup_time": 1, "memory_total": 268828672,
    "memory_processed": 42881720, "memory_remaining": 211709952, "memory_bps": 22899391,
    "memory_dirty_rate": 316, "memory_iteration": 2, "memory_page_size": 4096,
}  # fmt: skip


def test_job_stats_of_a_running_job() -> None:
    info = parse_job_stats(ACTIVE, "active")
    assert info.transferred == 42881720 and info.remaining == 211709952
    assert info.dirty_rate_Bps == 316 * 4096  # libvirt: pages/s
    assert info.mbps == pytest.approx(22899391 * 8 / 1e6)
    assert info.expected_downtime_ms == 300 and info.downtime_ms is None  # running: the expected pause
    assert info.dirty_sync_count == 2 and info.total_time_ms == 2001


def test_job_stats_of_a_completed_job_and_junk() -> None:
    done = parse_job_stats(
        {**ACTIVE, "downtime": 41, "memory_postcopy_requests": 98}, "completed", completed=True
    )
    assert done.downtime_ms == 41 and done.expected_downtime_ms is None and done.postcopy_requests == 98
    junk = parse_job_stats({"memory_processed": "lots", "memory_bps": True, "errmsg": "boom"}, "failed")
    assert junk.transferred == 0 and junk.mbps == 0 and junk.error_desc == "boom"


def test_monitor_events_keep_qemus_timestamps() -> None:
    ev = monitor_event("src", "MIGRATION", 100, 250000, '{"status":"postcopy-active"}', 101.0)
    assert ev is not None and ev.kind is EventKind.STATUS and ev.status == "postcopy-active"
    assert ev.ts == 100.25 and ev.arrived == 101.0
    stop = monitor_event("src", "STOP", 5, 0, None, 6.0)
    assert stop is not None and stop.kind is EventKind.STOPPED
    assert monitor_event("dst", "MIGRATION", 1, 0, "not json", 2.0) is None
    assert monitor_event("dst", "MIGRATION", 1, 0, '{"status": 3}', 2.0) is None
    assert monitor_event("dst", "SHUTDOWN", 1, 0, "{}", 2.0) is None


STATES = [  # side, state, reason, job active -> status
    ("src", 1, 1, True, "active"),
    ("src", 3, 12, True, "postcopy-active"),  # paused for post-copy
    ("src", 3, 13, True, "postcopy-paused"),  # post-copy failed
    ("dst", 1, 10, True, "postcopy-active"),  # running, pages still arriving
    ("dst", 1, 11, True, "postcopy-paused"),  # running, post-copy failed
    ("dst", 3, 2, True, "active"),  # incoming, paused for migration
    ("dst", 1, 2, True, "completed"),
    ("src", 5, 3, False, "completed"),
    ("src", 1, 1, False, "none"),
]


@pytest.mark.parametrize(("side", "state", "reason", "job", "status"), STATES)
def test_status_from_state(side: str, state: int, reason: int, job: bool, status: str) -> None:
    assert status_from_state(side, state, reason, job) == status  # type: ignore[arg-type]


def test_lifecycle_names() -> None:
    assert lifecycle_name(3, 7) == "suspended/postcopy"
    assert lifecycle_name(3, 8) == "suspended/postcopy_failed"
    assert lifecycle_name(5, 3) == "stopped/migrated"
    assert lifecycle_name(99, 1) == "99/1"


def test_bandwidth_rounds_up_to_whole_mib() -> None:
    assert _mib(1) == 1 and _mib(1 << 20) == 1 and _mib((1 << 20) + 1) == 2 and _mib(25_000_000) == 24


def test_domain_xml_round_trip(tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    spec = VMSpec("d1", memory_mib=512, kernel=kernel, initrd=initrd).validated()
    xml = domain_xml(spec, "tcg")
    assert xml.startswith('<domain type="qemu">')
    facts = domain_facts(xml)
    assert facts.name == "d1" and facts.memory_kib == 512 * 1024
    assert facts.heartbeat == heartbeat_path("d1") and facts.local_disks == () and facts.machine == "pc"
    assert 'type="kvm"' in domain_xml(spec, "kvm")
    with pytest.raises(UsageError, match="no NICs"):
        domain_xml(spec.with_changes(extra_args=("-S",)), "tcg")


def test_domain_facts_find_local_disks_and_refuse_junk() -> None:
    xml = (
        "<domain><name>x</name><uuid>u</uuid><os><type machine='q35'>hvm</type></os><devices>"
        "<disk device='disk'><source file='/var/lib/a.qcow2'/></disk>"
        "<disk device='disk'><source file='/ro.img'/><readonly/></disk>"
        "<disk device='cdrom'><source file='/iso'/></disk></devices></domain>"
    )
    facts = domain_facts(xml)
    assert facts.local_disks == ("/var/lib/a.qcow2",) and facts.machine == "q35" and facts.heartbeat is None
    with pytest.raises(UsageError, match="does not parse"):
        domain_facts("<domain")


def test_lab_daemon_paths_and_uris(tmp_path: Path) -> None:
    d = LabDaemon("src", "lm-src", tmp_path / "lab-libvirt" / "src", 1, 2)
    assert d.uri == lab_uri(d.sock_dir) and d.uri.startswith("qemu+unix:///system?socket=")
    assert d.host_path("/run/libvirt/qemu/hb.sock") == d.dir / "run" / "qemu" / "hb.sock"
    assert d.host_path("/var/log/libvirt/x.log") == d.dir / "log" / "x.log"
    assert d.host_path("/srv/disk.img") == Path("/srv/disk.img")
    d.dir.mkdir(parents=True)
    d.record.write_text(json.dumps(d.to_dict()))
    assert LabDaemon.load(d.dir) == d
    assert daemon_for_uri(tmp_path, d.uri) == d
    assert daemon_for_uri(tmp_path, "qemu+tcp://host/system") is None
    assert resolve_uri("src", tmp_path) == d.uri
    assert resolve_uri("qemu:///system", tmp_path) == "qemu:///system"
    with pytest.raises(UsageError, match="neither a libvirt URI nor a lab host"):
        resolve_uri("elsewhere", tmp_path)


def _trace(rows: list[tuple[float, str, str, str | None]]) -> list[BackendEvent]:
    """QEMU events as libvirt forwarded them here: (ms, side, event, data)."""
    base = 1796057353
    out = []
    for ms, side, event, data in rows:
        t = base + ms / 1000
        ev = monitor_event(side, event, int(t), round((t - int(t)) * 1e6), data, t + 0.001)  # type: ignore[arg-type]
        assert ev is not None
        out.append(ev)
    return out


def _mig(status: str) -> str:
    return json.dumps({"status": status})


# Recorded with a monitor-event listener on both lab daemons (libvirt 9.0, QEMU 10.0.2):
# a pre-copy, and a postcopy-now, each as the two daemons delivered them
PRECOPY = [(0.0, "src", "MIGRATION", _mig("setup")), (3.1, "src", "MIGRATION", _mig("active")),
           (7721.7, "src", "STOP", None), (7722.8, "src", "MIGRATION", _mig("pre-switchover")),
           (7727.0, "src", "MIGRATION", _mig("device")), (8070.8, "dst", "MIGRATION", _mig("completed")),
           (8071.1, "src", "MIGRATION", _mig("completed")), (8076.4, "dst", "RESUME", None)]  # fmt: skip
POSTCOPY = [(0.0, "src", "MIGRATION", _mig("setup")), (108.6, "src", "STOP", None),
            (109.7, "src", "MIGRATION", _mig("pre-switchover")), (112.0, "src", "MIGRATION", _mig("device")),
            (112.9, "src", "MIGRATION", _mig("postcopy-active")), (113.6, "dst", "MIGRATION", _mig("postcopy-active")),
            (121.9, "dst", "RESUME", None), (6586.7, "src", "MIGRATION", _mig("completed")),
            (6587.1, "dst", "MIGRATION", _mig("completed"))]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(PRECOPY, {"continue_ms": 4.2, "resume_ms": 5.6}), (POSTCOPY, {"continue_ms": 2.3, "resume_ms": 8.3}),
     # without pause-before-switchover (a QEMU of livemig's own): nothing of libvirt's
     ([r for r in PRECOPY if "pre-switchover" not in str(r[3])][:4], {"continue_ms": None, "resume_ms": None}),
     # a recovery later resumes nothing new: the first pause is the one measured
     ([*POSTCOPY, (9000.0, "dst", "MIGRATION", _mig("postcopy-active")), (9050.0, "dst", "RESUME", None)],
      {"continue_ms": 2.3, "resume_ms": 8.3})],
)  # fmt: skip
def test_libvirts_handshakes_inside_the_pause(
    rows: list[tuple[float, str, str, str | None]], expected: dict[str, float | None]
) -> None:
    got = handshakes(list(reversed(_trace(rows))))  # delivery order does not matter: QEMU's clock does
    for key, want in expected.items():
        assert got[key] == (pytest.approx(want, abs=0.01) if want is not None else None), key
