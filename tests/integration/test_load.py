"""Load: four VMs migrating at once across the lab, each by its own `livemig migrate`,
and one `livemig events` follower for all of them. Every migration completes, the
follower sees every event of every migration (and nothing else), and no report carries
another VM's events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from livemig.lab import Lab, Shaping

from .conftest import VMFactory

pytestmark = [pytest.mark.integration, pytest.mark.lab]

NAMES = ("ld1", "ld2", "ld3", "ld4")


def test_four_migrations_at_once_and_one_follower(lab_env: Path, vms: VMFactory) -> None:
    Lab.up(2, Shaping(25_000_000), lab_env)
    for name in NAMES:
        vms.start(name, workload="dirty:mib=16,rate=2", memory=128, host="src")
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(lab_env)}

    def cli(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "livemig", *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    follower = cli("events")
    time.sleep(1.0)  # the follower scans for migrations every 0.2 s
    migrations = {
        n: cli("migrate", n, "--to", "dst", "--policy", "postcopy-after:1", "--json", "-q") for n in NAMES
    }
    reports = {}
    for name, proc in migrations.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err)
        reports[name] = json.loads(out)
    time.sleep(1.0)
    follower.terminate()
    followed, _ = follower.communicate(timeout=30)

    seen: dict[str, list[str]] = defaultdict(list)
    for line in followed.splitlines():
        event = json.loads(line)
        seen[event["vm"]].append(event["name"])
    assert sorted(seen) == sorted(NAMES)  # nothing from elsewhere
    for name, report in reports.items():
        assert report["vm"] == name and report["status"] == "completed", report["error"]
        mine = [e["name"] for e in report["events"]]
        assert seen[name] == [*mine, "end"], (name, seen[name], mine)  # every event, in order, once
        assert vms.record(name).host == "dst" and vms.record(name).instance.alive()
        sides = report["guest"]["sides"]
        assert sides["dst"]["last_seq"] > sides["src"]["last_seq"]  # its own guest went on beating
