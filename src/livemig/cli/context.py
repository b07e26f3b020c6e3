"""What every command shares: the VM registry of the invocation's runtime directory."""

from __future__ import annotations

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


@contextlib.contextmanager
def terminate_unwinds() -> Iterator[None]:
    """While the block runs, SIGTERM unwinds as Ctrl-C does (KeyboardInterrupt), so that a
    bench or demo stopped by its PID still stops its VMs and takes down the lab it made."""

    owner = os.getpid()

    def interrupt(sig: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked child (pyroute2's namespace helper): end as asked
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
