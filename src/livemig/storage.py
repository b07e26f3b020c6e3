"""Shared storage: the destination opens the very disks the source has open. livemig does
not migrate storage; before a migration starts it checks that every disk is visible
from the destination, and refuses (naming the disk) when one is not.

The check opens each disk as the destination QEMU will (read-only, or read-write) and
compares its identity (device, inode) with the file the source QEMU sees at that path
(through ``/proc/PID/root``, so a source in another mount namespace is compared by what
it really has). In the lab, every host shares this machine's file system, so each host
also has a ``local`` directory that stands for its local disks: another host cannot
open what is there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from livemig.errors import StorageError
from livemig.spec import VMSpec

if TYPE_CHECKING:
    from livemig.lab import Lab

__all__ = ["DiskRef", "check_disks", "disk_identity", "spec_disks"]

# (label, path, read-only)
DiskRef = tuple[str, Path, bool]


def spec_disks(spec: VMSpec) -> list[DiskRef]:
    return [(f"disk[{i}] {d.path}", d.path, d.readonly) for i, d in enumerate(spec.disks)]


def disk_identity(path: Path, root: Path = Path("/"), writable: bool = False) -> tuple[int, int]:
    """(st_dev, st_ino) of ``path`` opened under ``root``; raises OSError when it cannot be opened."""
    full = root / path.relative_to("/")
    fd = os.open(full, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def check_disks(disks: list[DiskRef], src_pid: int | None, to_host: str | None, lab: Lab | None) -> None:
    """Raise :class:`StorageError` naming the first disk the destination cannot open."""
    dst = to_host or "this host"
    for where, path, readonly in disks:
        if lab is not None and to_host is not None:
            owner = lab.owner_of(path)
            if owner is not None and owner != to_host:
                raise StorageError(
                    where,
                    f"{where} is on {owner}'s local storage: {dst} cannot open it "
                    "(livemig migrates VMs on shared storage only)",
                )
        try:
            mine = disk_identity(path, writable=not readonly)
        except OSError as exc:
            raise StorageError(
                where, f"{where} cannot be opened from {dst}: {exc.strerror} (shared storage is required)"
            ) from None
        if src_pid is not None:
            try:
                theirs = disk_identity(path, Path(f"/proc/{src_pid}/root"))
            except OSError:
                continue  # the source's view is not readable (another user's): checked ours
            if theirs != mine:
                raise StorageError(
                    where, f"{where} on {dst} is another file than the source's: the disk is not shared"
                )
