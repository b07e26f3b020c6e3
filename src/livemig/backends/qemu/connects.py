"""Withdrawing a resume that is still connecting.

A post-copy resume (``migrate`` with ``resume: true``) makes the source QEMU connect to
the destination's recovery listener. Over a dead link that connect waits for SYN
retries for minutes (1, 3, 7, 15, 31 s ...), and QMP cannot take it back: ``migrate-pause``
refuses ``postcopy-recover-setup``. So a link that comes back is used only at the next
retry, up to half a minute later, and a resume left connecting at the recovery deadline
completes whenever the link returns.

The kernel can abort it: ``SOCK_DESTROY`` (``ss -K``) on the source QEMU's SYN-SENT
sockets to the recovery address, run in that QEMU's own network namespace. Its connect
then fails with ECONNABORTED and QEMU goes back to ``postcopy-paused``, ready for the
next resume.
"""

from __future__ import annotations

import asyncio
import logging

from livemig.aio import communicate
from livemig.errors import MigrationFailed

__all__ = ["abort_connects", "ss_argv"]

log = logging.getLogger(__name__)


def ss_argv(pid: int, host: str, port: int) -> list[str]:
    """The command that destroys process ``pid``'s network namespace's SYN-SENT TCP
    sockets to ``host``:``port`` and prints them (pure)."""
    dst = f"[{host.strip('[]')}]" if ":" in host else host
    return [
        "nsenter", f"--net=/proc/{pid}/ns/net",
        "ss", "-K", "-H", "-tn", "state", "syn-sent", "dst", dst, "dport", "=", f":{port}",
    ]  # fmt: skip


async def abort_connects(pid: int, host: str, port: int, wait_s: float = 5.0) -> int:
    """Abort the connects of ``pid``'s namespace to ``host``:``port`` that have not been
    answered; returns how many there were."""
    argv = ss_argv(pid, host, port)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except FileNotFoundError as exc:
        raise MigrationFailed(f"cannot withdraw a connecting resume: {exc.filename} not found") from exc
    try:
        out, err = await communicate(proc, wait_s)
    except TimeoutError:
        raise MigrationFailed(f"{' '.join(argv)}: no answer within {wait_s:g}s") from None
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip() or f"exit {proc.returncode}"
        raise MigrationFailed(f"{' '.join(argv)}: {why}")
    killed = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    log.debug("aborted %d connect(s) of pid %d to %s:%d", len(killed), pid, host, port)
    return len(killed)
