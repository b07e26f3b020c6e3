"""What every command shares: the VM registry of the invocation's runtime directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

import click

from livemig.registry import Registry

__all__ = ["connect_of", "registry_of", "terminate_unwinds"]


def registry_of(ctx: click.Context) -> Registry:
    obj = ctx.find_root().ensure_object(dict)
    if "registry" not in obj:
        obj["registry"] = Registry()
    reg: Registry = obj["registry"]
    return reg


def connect_of(ctx: click.Context) -> str | None:
    """The libvirt URI of ``-c`` / ``LIVEMIG_CONNECT`` (None: livemig's own VMs)."""
    obj = ctx.find_root().ensure_object(dict)
    uri: str | None = obj.get("connect")
    return uri


def _raise_interrupt() -> None:
    raise KeyboardInterrupt  # from a loop callback: asyncio lets it through run_forever


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds as Ctrl-C does, so that a bench or demo stopped
    by its PID still stops its VMs and takes down the lab it made.

    The signal is handed to whatever handles SIGINT at that moment. Inside ``asyncio.run``
    that is asyncio's own handler: it cancels the main task, which unwinds through its
    ``finally`` blocks, and then raises KeyboardInterrupt. Raising KeyboardInterrupt from
    here instead would strike whichever task happened to run, leave that task's exception
    unretrieved, and print its traceback as the process exits. Where SIGINT is ignored (a
    process started in the background by a shell: ``nohup livemig bench run ... &``),
    asyncio installs no handler; then KeyboardInterrupt is raised from a callback of the
    running loop, between tasks, and ``asyncio.run`` cancels them all on its way out."""

    owner = os.getpid()

    def interrupt(sig: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked child (pyroute2's namespace helper): end as asked
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        as_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(as_ctrl_c):
            as_ctrl_c(signal.SIGINT, frame)
            return
        try:  # SIGINT ignored or default: unwind all the same
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise KeyboardInterrupt from None
        loop.call_soon_threadsafe(_raise_interrupt)

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
