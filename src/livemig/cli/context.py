"""What every command shares: the VM registry of the invocation's runtime directory."""

from __future__ import annotations

import click

from livemig.registry import Registry

__all__ = ["registry_of"]


def registry_of(ctx: click.Context) -> Registry:
    obj = ctx.find_root().ensure_object(dict)
    if "registry" not in obj:
        obj["registry"] = Registry()
    reg: Registry = obj["registry"]
    return reg
