"""The control socket of a running migration, so that other processes (the CLI's
``livemig postcopy``, ``livemig events``, ``livemig cancel``) reach the livemig
process that owns it. One JSON request per connection; replies are JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from livemig.aio import teardown
from livemig.core.migration import Migration
from livemig.errors import LivemigError, NotMigrating, UsageError, rebuild

__all__ = ["ControlServer", "request", "stream"]

log = logging.getLogger(__name__)
MAX_REQUEST = 4096  # bytes of one request line

OPS = ("postcopy", "cancel", "status", "events", "jobinfo", "tune")
TUNABLE = ("max_bandwidth", "downtime_limit_ms", "postcopy_bandwidth")


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


class ControlServer:
    """Serves the migration that ``current()`` returns (None before it exists) on ``path``."""

    def __init__(self, path: Path, name: str, current: Callable[[], Migration | None]) -> None:
        self.path = path
        self.name = name
        self.current = current
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
            await teardown(self._server.wait_closed(), log, "control socket close")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj, default=str).encode() + b"\n")
            await writer.drain()

        try:
            pid, uid = _peer(writer)
            if uid not in (0, os.geteuid()):  # root, or the VM's owner (this process)
                log.warning("%s: refused a request from uid %d (pid %d)", self.name, uid, pid)
                await reply({"ok": False, "error": "permission denied", "kind": "UsageError",
                             "args": ["permission denied"]})  # fmt: skip
                return
            await self._serve(await self._request(reader), pid, reply)
        except LivemigError as exc:
            log.info("%s: control request failed: %s", self.name, exc)
            await self._send_error(reply, exc)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("%s: control client went away: %r", self.name, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _send_error(reply: Callable[[dict[str, Any]], Any], exc: LivemigError) -> None:
        try:
            await reply({"ok": False, "error": str(exc), "kind": type(exc).__name__, "args": list(exc.args)})
        except ConnectionError as gone:
            log.info("could not send the error reply: %r", gone)

    async def _request(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise UsageError(f"request longer than {MAX_REQUEST} bytes") from None
        if len(line) > MAX_REQUEST:
            raise UsageError(f"request longer than {MAX_REQUEST} bytes")
        try:
            req = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"malformed request (not JSON): {exc}") from None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise UsageError('malformed request: expected {"op": NAME}')
        return req

    async def _serve(self, req: dict[str, Any], pid: int, reply: Callable[[dict[str, Any]], Any]) -> None:
        op = req["op"]
        mig = self.current()
        if op not in OPS:
            raise UsageError(f"unknown op {op!r} (one of {', '.join(OPS)})")
        if mig is None:
            raise NotMigrating(f"{self.name} is not migrating yet")
        if op == "postcopy":
            await mig.start_postcopy(reason=f"livemig postcopy (pid {pid})")
            await reply({"ok": True, "state": str(mig.state)})
        elif op == "cancel":
            await mig.cancel(reason=f"livemig cancel (pid {pid})")
            await reply({"ok": True, "state": str(mig.state)})
        elif op == "status":
            await reply({"ok": True, "state": str(mig.state), "passes": mig.snapshot().passes_done})
        elif op == "jobinfo":
            await reply({"ok": True, "jobinfo": mig.jobinfo()})
        elif op == "tune":
            values = {k: req.get(k) for k in TUNABLE if req.get(k) is not None}
            if not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()
            ):
                raise UsageError(f"tune takes whole numbers >= 0 for some of {', '.join(TUNABLE)}")
            await mig.tune(**values, who=f"pid {pid}")
            await reply({"ok": True, "state": str(mig.state), "jobinfo": mig.jobinfo()})
        else:
            async for ev in mig.events():
                await reply({"ok": True, "event": ev.to_dict()})
            await reply({"ok": True, "end": str(mig.state)})


def _connect(path: Path, name: str, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise NotMigrating(f"{name} is not migrating (no livemig process owns a migration of it)") from None
    return s


def stream(
    path: Path, name: str, op: str, timeout: float | None = None, **args: Any
) -> Iterator[dict[str, Any]]:
    """Send ``op`` (with ``args``) and yield each JSON reply line; raises the server's error
    (as the same class) on an error reply."""
    with _connect(path, name, timeout) as s, s.makefile("rb") as buf:
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        for line in buf:
            msg = json.loads(line)
            if not msg.get("ok"):
                raise rebuild(str(msg.get("kind")), msg.get("args") or [], str(msg.get("error")))
            yield msg


def request(path: Path, name: str, op: str, timeout: float | None = 120.0, **args: Any) -> dict[str, Any]:
    for msg in stream(path, name, op, timeout, **args):
        return msg
    raise LivemigError(f"no answer from the livemig process migrating {name}")
