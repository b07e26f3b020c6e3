"""What every command shares: the VM registry of the invocation's runtime directory."""

from __future__ import annotations

import click

from livemig.registry import Registry

__all__ = ["connect_of", "registry_of"]


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
