"""The CLI as a user runs it: separate processes, one-line errors, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import NONCONVERGING, VMFactory, qemu_running, wait_control

pytestmark = pytest.mark.integration


def livemig(*args: str, runtime: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(
        [sys.executable, "-m", "livemig", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("livemig: error: ")
    for w in words:
        assert w in lines[0], lines[0]


def no_qemu_dirs(runtime: Path) -> bool:
    return not list(runtime.glob("qemu/*"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["vm", "start", "x", "--memory", "lots"], ["memory"]),
        (["vm", "start", "x", "--memory", "16"], ["memory", "range"]),
        (["vm", "start", "x", "--kernel", "/nonexistent/vmlinuz"], ["kernel", "does not exist"]),
        (["vm", "start", "x", "--workload", "dirty:mib=lots"], ["workload", "mib"]),
        (["vm", "start", "bad name!"], ["name"]),
        (["migrate", "nosuch"], ["no VM named 'nosuch'"]),
        (["postcopy", "nosuch"], ["no VM named"]),
        (["vm", "stop", "nosuch"], ["no VM named"]),
        (["migrate", "nosuch", "--policy", "sometimes"], ["policy", "unknown"]),
        (["migrate", "nosuch", "--policy", "postcopy-after:0"], ["postcopy-after:0", "between 1 and"]),
        (["migrate", "nosuch", "--bandwidth", "fast"], ["--bandwidth", "not a rate"]),
        (["migrate", "nosuch", "--port", "70000"], ["--port"]),
        (["vm", "start"], ["give a NAME, or --spec FILE"]),
        (["vm", "start", "--spec", "/nonexistent/vm.toml"], ["/nonexistent/vm.toml", "cannot read"]),
        (["vm", "start", "other", "--spec", "/dev/null"], ["name: is required"]),
        (["adopt", "x", "--qmp", "/nonexistent.sock"], ["--qmp", "no such UNIX socket"]),
        (["adopt", "bad name!", "--qmp", "/nonexistent.sock"], ["NAME"]),
        (["frobnicate"], ["No such command"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_nothing(
    runtime: Path, args: list[str], words: list[str]
) -> None:
    proc = livemig(*args, runtime=runtime)
    assert_one_line_error(proc, 2, *words)
    assert no_qemu_dirs(runtime)


def test_postcopy_from_a_second_process(vms: VMFactory) -> None:
    vms.start(workload=NONCONVERGING)
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(vms.runtime)}
    migrate = subprocess.Popen(
        [sys.executable, "-m", "livemig", "migrate", "vm", "--policy", "manual", "--bandwidth", "100MB/s",
         "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        events = subprocess.Popen(
            [sys.executable, "-m", "livemig", "events", "vm"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        every_vm = subprocess.Popen(
            [sys.executable, "-m", "livemig", "events"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        wait_control(vms.runtime, "vm", migrate)
        time.sleep(1.5)  # let pre-copy run a pass
        status = livemig("vm", "list", "--json", runtime=vms.runtime)
        assert json.loads(status.stdout)[0]["status"].startswith("migrating")
        proc = livemig("postcopy", "vm", runtime=vms.runtime)
        assert proc.returncode == 0, proc.stderr
        assert "postcopy" in proc.stdout or "completed" in proc.stdout
        out, errs = migrate.communicate(timeout=120)
        assert migrate.returncode == 0, errs
        report = json.loads(out)
        assert report["status"] == "completed"
        assert report["switch_reason"].startswith("livemig postcopy (pid")
        assert report["switched_at_pass"] is not None
        ev_out, _ = events.communicate(timeout=30)
        lines = [json.loads(line) for line in ev_out.splitlines()]
        assert {k: v for k, v in lines[-1].items() if k != "delivered_ts"} == {
            "name": "end", "data": {"state": "completed"}, "qemu_ts": None, "latency_ms": None}  # fmt: skip
        assert all(set(line) == set(lines[0]) for line in lines)  # every line has one shape
        assert "postcopy-started" in [line.get("name") for line in lines]
        every_vm.terminate()  # it follows all VMs until interrupted
        all_out, _ = every_vm.communicate(timeout=30)
        tagged = [json.loads(line) for line in all_out.splitlines()]
        assert [t["data"] for t in tagged if t["name"] == "end"] == [{"state": "completed"}]
        assert all(t["vm"] == "vm" for t in tagged)
        assert [t["name"] for t in tagged] == [line["name"] for line in lines]
    finally:
        for p in (migrate, events, every_vm):
            if p.poll() is None:
                p.kill()
    # and now the VM is not migrating: a clear error, exit 2
    assert_one_line_error(livemig("postcopy", "vm", runtime=vms.runtime), 2, "not migrating")


def test_busy_destination_port_fails_cleanly_and_keeps_the_vm(vms: VMFactory) -> None:
    rec = vms.start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = livemig("migrate", "vm", "--port", str(port), "--quiet", runtime=vms.runtime)
    assert_one_line_error(proc, 1, "cannot listen")
    after = vms.record()
    assert after.instance.pid == rec.instance.pid and after.instance.alive()
    assert after.migration is None
    assert [p.name for p in vms.runtime.glob("qemu/*")] == [rec.instance.dir.name]


def test_vm_lifecycle_commands(vms: VMFactory) -> None:
    start = livemig("vm", "start", "cli1", "--memory", "128", "--accel", "tcg", runtime=vms.runtime)
    vms.names.append("cli1")
    assert start.returncode == 0, start.stderr
    again = livemig("vm", "start", "cli1", "--memory", "128", "--accel", "tcg", runtime=vms.runtime)
    assert_one_line_error(again, 2, "already running")
    listing = json.loads(livemig("vm", "list", "--json", runtime=vms.runtime).stdout)
    assert [v["name"] for v in listing] == ["cli1"] and listing[0]["status"] == "running"
    pid = listing[0]["instance"]["pid"]
    stop = livemig("vm", "stop", "cli1", runtime=vms.runtime)
    assert stop.returncode == 0
    assert not qemu_running(pid)
    assert json.loads(livemig("vm", "list", "--json", runtime=vms.runtime).stdout) == []
    assert no_qemu_dirs(vms.runtime)


def test_plan_predicts_every_policy_and_leaves_the_vm_as_it_was(vms: VMFactory) -> None:
    src = vms.start(workload="dirty:mib=32,rate=8")
    proc = livemig("plan", "vm", "--bandwidth", "25M", "--seconds", "2", "--json", runtime=vms.runtime)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [p["policy"] for p in plan["predictions"]] == [
        "precopy", "postcopy-now", "postcopy-after:1", "postcopy-after:2", "auto",
    ]  # fmt: skip
    measured = plan["measured"]
    assert measured["ram_bytes"] == 256 << 20  # QEMU's own figure for the guest's memory
    # the guest writes 8 MiB/s; QEMU hashes 1024 of its 65536 pages, of which 1/16 change in
    # the 2 s window: about 64 hits. Over 1 s (about 32) one run read exactly 4 MiB/s, half;
    # a reading under 3 MiB/s is now 5 standard deviations off
    assert 3 << 20 <= measured["dirty_Bps"] < 16 << 20
    # the first pass: what the guest touched of its RAM (its 32 MiB region at least), from /proc
    assert 32 << 20 <= measured["resident_bytes"] < 256 << 20
    assert plan["auto"] and plan["auto"][0].startswith("pass 1:")
    # every policy that completes has the guest's longest stall predicted, post-copy's too
    assert all(p["stall_ms"] > 0 for p in plan["predictions"] if p["converges"])
    # the VM is as it was: running, same QEMU, no migration recorded or under way in QEMU
    rec = vms.record()
    assert rec.instance.pid == src.instance.pid and qemu_running(src.instance.pid) and rec.migration is None
    assert rec.status == "running"
    assert len(list(vms.runtime.glob("qemu/*"))) == 1


def test_plan_refusals(vms: VMFactory) -> None:
    vms.start()
    assert_one_line_error(livemig("plan", "nosuch", runtime=vms.runtime), 2, "no VM named")
    assert_one_line_error(livemig("plan", "vm", "--to", "nosuch", runtime=vms.runtime), 2, "no such lab host")
    assert_one_line_error(livemig("plan", "vm", "--seconds", "0", runtime=vms.runtime), 2)


def test_jobinfo_and_setspeed_on_a_running_migration(vms: VMFactory) -> None:
    vms.start(workload=NONCONVERGING)
    env = {**os.environ, "LIVEMIG_RUNTIME_DIR": str(vms.runtime)}
    migrate = subprocess.Popen(
        [sys.executable, "-m", "livemig", "migrate", "vm", "--policy", "manual", "--bandwidth", "4M", "--json", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        wait_control(vms.runtime, "vm", migrate)
        time.sleep(3.0)  # pre-copy at 4 MiB/s for a while
        info = livemig("jobinfo", "vm", "--json", runtime=vms.runtime)
        assert info.returncode == 0, info.stderr
        job = json.loads(info.stdout)
        assert job["phase"] == "precopy" and job["policy"] == "manual" and job["transferred_bytes"] > 0
        assert job["decision"]["reason"].startswith("manual")
        human = livemig("jobinfo", "vm", runtime=vms.runtime)
        assert "Phase:" in human.stdout and "Throughput:" in human.stdout
        speed = livemig("migrate-setspeed", "vm", "64M", runtime=vms.runtime)
        assert speed.returncode == 0, speed.stderr
        assert_one_line_error(livemig("migrate-setspeed", "vm", "fast", runtime=vms.runtime), 2, "RATE")
        assert livemig("migrate-setmaxdowntime", "vm", "120", runtime=vms.runtime).returncode == 0
        time.sleep(3.0)  # now at 64 MiB/s
        assert livemig("postcopy", "vm", runtime=vms.runtime).returncode == 0
        out, errs = migrate.communicate(timeout=120)
    finally:
        if migrate.poll() is None:
            migrate.kill()
    assert migrate.returncode == 0, errs
    report = json.loads(out)
    changes = report["tunings"]
    assert changes[0].get("max_bandwidth_Bps") == 64 << 20
    assert any(c.get("downtime_limit_ms") == 120 for c in changes)
    at = changes[0]["t_s"]
    # QEMU's own throughput figures (the timeline) before and after the change
    tl = report["timeline"]
    before = [s["throughput_Bps"] for s in tl if 1.0 < s["t"] < at and s["status"] == "active"]
    after = [s["throughput_Bps"] for s in tl if at + 1.0 < s["t"] and s["status"] == "active"]
    assert before and after, tl
    assert max(before) < 8 << 20 < min(after), (before, after)  # from 4 MiB/s to 64 MiB/s
