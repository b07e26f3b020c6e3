"""The control socket of a running migration, so that other processes (the CLI's
``livemig postcopy``, ``livemig events``, ``livemig cancel``) reach the livemig
process that owns it. One JSON request per connection; replies are JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livemig.errors import LivemigError, NotMigrating

if TYPE_CHECKING:
    from livemig.job import MigrationJob

__all__ = ["ControlServer", "request", "stream"]

OPS = ("postcopy", "cancel", "status", "events")


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


class ControlServer:
    def __init__(self, path: Path, job: MigrationJob) -> None:
        self.path = path
        self.job = job
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"<ControlServer {self.path} {'serving' if self._server else 'stopped'}>"

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._handle, str(self.path))
        finally:
            os.umask(old)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj).encode() + b"\n")
            await writer.drain()

        try:
            pid, uid = _peer(writer)
            if uid != os.geteuid():
                await reply({"ok": False, "error": "permission denied"})
                return
            req = json.loads(await reader.readline() or b"{}")
            op = req.get("op")
            mig = self.job.migration
            if mig is None:
                await reply({"ok": False, "error": f"{self.job.name} is not migrating yet"})
            elif op == "postcopy":
                await mig.start_postcopy(reason=f"livemig postcopy (pid {pid})")
                await reply({"ok": True, "state": str(mig.state)})
            elif op == "cancel":
                await mig.cancel(reason=f"livemig cancel (pid {pid})")
                await reply({"ok": True, "state": str(mig.state)})
            elif op == "status":
                await reply({"ok": True, "state": str(mig.state), "passes": mig.snapshot().passes_done})
            elif op == "events":
                async for ev in mig.events():
                    await reply({"ok": True, "event": ev.to_dict()})
                await reply({"ok": True, "end": str(mig.state)})
            else:
                await reply({"ok": False, "error": f"unknown op {op!r} (one of {', '.join(OPS)})"})
        except LivemigError as exc:
            with contextlib.suppress(Exception):
                await reply({"ok": False, "error": str(exc), "kind": type(exc).__name__})
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _connect(path: Path, name: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise NotMigrating(f"{name} is not migrating (no livemig process owns a migration of it)") from None
    return s


def stream(path: Path, name: str, op: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Send ``op`` and yield each JSON reply line; raises LivemigError on an error reply."""
    with _connect(path, name, timeout) as s:
        s.sendall(json.dumps({"op": op}).encode() + b"\n")
        buf = s.makefile("rb")
        for line in buf:
            msg = json.loads(line)
            if not msg.get("ok"):
                kind = msg.get("kind")
                err = str(msg.get("error"))
                if kind == "StateError":
                    from livemig.errors import MigrationError

                    raise MigrationError(err)
                raise LivemigError(err)
            yield msg


def request(path: Path, name: str, op: str, timeout: float | None = 120.0) -> dict[str, Any]:
    for msg in stream(path, name, op, timeout):
        return msg
    raise LivemigError(f"no answer from the livemig process migrating {name}")
