"""Errors carry their fields through super().__init__: they pickle, and the control socket
rebuilds them on the client as the same class with the same exit code."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

from livemig import errors
from livemig.control import ControlServer, request
from livemig.core.state import MigrationState
from livemig.errors import LivemigError, NotMigrating, SpecError, StateError, UsageError, rebuild

SAMPLES: list[LivemigError] = [
    errors.SpecError("disk[0].path", "does not exist"),
    errors.PolicyError("sometimes", "unknown"),
    errors.QemuTooOld("7.2.0", "9.0.0", "bitmap bug"),
    errors.UnsupportedError("postcopy-ram", "QEMU lacks postcopy-ram"),
    errors.StorageError("disk0", "not shared"),
    errors.LabError("no lab", "src"),
    errors.VMNotFound("vm", "no VM named 'vm'"),
    errors.QemuStartError("vm", "QEMU exited", "log tail"),
    errors.AdoptRefused("vm", "netns", "elsewhere"),
    errors.QemuDied("vm", "gone"),
    errors.QMPCommandError("vm", "migrate", "GenericError", "nope"),
    errors.StateError("cancel", MigrationState.POSTCOPY, (MigrationState.SETUP,), "after the switch"),
    errors.NotMigrating("vm is not migrating"),
    errors.MigrationFailed("failed", MigrationState.PRECOPY, "precopy"),
    errors.RecoveryBlocked("the destination's monitor is stuck", MigrationState.POSTCOPY_PAUSED),
    errors.UnsafeCombination("multifd with post-copy"),
]


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_fields_and_message(exc: LivemigError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc) and back.exit_code == exc.exit_code
    assert vars(back) == vars(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_survives_the_control_sockets_json(exc: LivemigError) -> None:
    wire = json.loads(json.dumps({"kind": type(exc).__name__, "args": list(exc.args)}, default=str))
    back = rebuild(wire["kind"], wire["args"], str(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc) and back.exit_code == exc.exit_code


def test_an_unknown_kind_is_a_plain_livemig_error() -> None:
    back = rebuild("NoSuchError", ["x"], "the message")
    assert type(back) is LivemigError and str(back) == "the message"


def test_spec_error_names_its_field() -> None:
    e = SpecError("nic[1].mac", "duplicates nic[0].mac")
    assert e.field == "nic[1].mac" and str(e) == "nic[1].mac: duplicates nic[0].mac"
    assert isinstance(e, UsageError) and e.exit_code == 2


def _serve_and_ask(tmp: Path, raw: bytes) -> bytes:
    async def main() -> bytes:
        server = ControlServer(tmp / "c.ctl", "vm", lambda: None)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp / "c.ctl"))
            writer.write(raw)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            await writer.wait_closed()
            return data
        finally:
            await server.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("raw", [b"not json\n", b"[1, 2]\n", b'{"op": 3}\n', b'{"op": "explode"}\n'])
def test_a_malformed_request_gets_an_error_reply_and_a_log_line(
    tmp_path: Path, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="livemig.control"):
        reply = json.loads(_serve_and_ask(tmp_path, raw))
    assert reply["ok"] is False and reply["kind"] == "UsageError" and reply["error"]
    assert any("control request failed" in r.getMessage() for r in caplog.records)


def test_the_client_gets_the_servers_error_class(tmp_path: Path) -> None:
    async def serve() -> None:
        server = ControlServer(tmp_path / "c.ctl", "vm", lambda: None)
        await server.start()
        try:
            await asyncio.to_thread(ask)
        finally:
            await server.stop()

    def ask() -> None:
        with pytest.raises(NotMigrating) as info:
            request(tmp_path / "c.ctl", "vm", "postcopy", timeout=5)
        assert info.value.exit_code == 2 and "not migrating yet" in str(info.value)

    asyncio.run(serve())


def test_state_error_from_the_server_stays_a_state_error() -> None:
    exc = StateError("cancel", MigrationState.POSTCOPY, (MigrationState.SETUP, MigrationState.PRECOPY), "why")
    back = rebuild("StateError", json.loads(json.dumps(list(exc.args), default=str)), str(exc))
    assert isinstance(back, StateError) and str(back) == str(exc)


def test_another_user_is_refused_with_a_reply_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """SO_PEERCRED: only root or the VM's owner may steer its migration. The socket is made
    reachable on purpose here (livemig creates it 0600) to see the check itself."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    d = Path(tempfile.mkdtemp(prefix="lmctl", dir="/tmp"))
    d.chmod(0o755)
    path = d / "c.ctl"
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        'try:\n    s.sendall(b\'{"op": "postcopy"}\\n\')\n'
        "except BrokenPipeError:\n    pass  # refused before the request was read\n"
        "print(s.makefile().readline(), end='')\n"
    )

    async def main() -> str:
        server = ControlServer(path, "vm", lambda: None)
        await server.start()
        path.chmod(0o666)
        try:
            proc = await asyncio.create_subprocess_exec(
                "/usr/bin/python3", "-c", client, str(path), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, user=65534, cwd="/",
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, err.decode()
            return out.decode()
        finally:
            await server.stop()
            shutil.rmtree(d)

    with caplog.at_level("WARNING", logger="livemig.control"):
        reply = json.loads(asyncio.run(main()))
    assert reply["ok"] is False and reply["error"] == "permission denied"
    assert any("refused a request from uid 65534" in r.getMessage() for r in caplog.records)
