"""TLS for the migration stream, post-copy channels included, with the lab's PKI."""

from __future__ import annotations

from pathlib import Path

import pytest

from livemig.core.options import MigrationOptions
from livemig.lab import Lab, Shaping
from livemig.lab.pki import issue_host, new_ca
from livemig.policy import parse_policy
from livemig.sync import SyncMigration

from .conftest import VMFactory, qmp_query
from .test_cli import assert_one_line_error, livemig

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
