"""The runtime directory is private (0700, sockets and records 0600), and livemig refuses
to act on VMs whose records belong to another user."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from livemig.core.options import MigrationOptions
from livemig.policy import parse_policy
from livemig.sync import SyncMigration

from .conftest import BANDWIDTH, NONCONVERGING, VMFactory
from .test_cli import assert_one_line_error, livemig

pytestmark = pytest.mark.integration


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_runtime_files_are_private(vms: VMFactory) -> None:
    rec = vms.start(workload=NONCONVERGING)
    assert mode(vms.runtime) == 0o700 and mode(vms.runtime / "vms") == 0o700
    assert mode(rec.instance.dir) == 0o700
    for sock in rec.instance.paths.sockets:
        assert stat.S_ISSOCK(sock.stat().st_mode) and mode(sock) == 0o600, sock
    assert mode(vms.runtime / "vms" / "vm.json") == 0o600
    # the control socket other processes use exists only while a migration runs, and is 0600
    seen: list[int] = []
    mig = SyncMigration("vm", policy="manual", registry=vms.registry,
                        options=MigrationOptions(policy=parse_policy("manual"), max_bandwidth=BANDWIDTH))  # fmt: skip
    first = threading.Event()
    mig.on("pass", lambda ev: (seen.append(mode(vms.registry.control_socket("vm"))), first.set()))
    worker = threading.Thread(target=mig.migrate)
    worker.start()
    assert first.wait(60)
    mig.start_postcopy()
    worker.join(120)
    assert seen and seen[0] == 0o600
    assert not vms.registry.control_socket("vm").exists()


def test_records_of_another_user_are_refused(vms: VMFactory) -> None:
    vms.start()
    record = vms.runtime / "vms" / "vm.json"
    data = json.loads(record.read_text())
    data["uid"] = 65534
    record.write_text(json.dumps(data))
    try:
        for args in (["vm", "stop", "vm"], ["migrate", "vm"], ["postcopy", "vm"]):
            assert_one_line_error(livemig(*args, runtime=vms.runtime), 2, "belongs to another user")
        os.chown(record, 65534, 65534)
        data["uid"] = os.geteuid()
        record.write_text(json.dumps(data))  # the file's owner counts too, not only what it says
        assert_one_line_error(livemig("vm", "stop", "vm", runtime=vms.runtime), 2, "belongs to another user")
    finally:
        os.chown(record, os.geteuid(), os.getegid())
        data["uid"] = os.geteuid()
        record.write_text(json.dumps(data))
    assert vms.record().instance.alive(), "nothing was done to the VM"
