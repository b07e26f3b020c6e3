"""VM records in the runtime directory: what runs where, so any livemig process
(or the next one, after a crash) finds its VMs and their migrations."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livemig.errors import LivemigError, VMExists, VMNotFound
from livemig.paths import ensure_private_dir, runtime_dir
from livemig.qemu.instance import QemuInstance
from livemig.spec import VMSpec, is_vm_name

__all__ = ["Registry", "VMRecord", "pid_alive"]


@dataclass
class VMRecord:
    name: str
    spec: VMSpec
    instance: QemuInstance
    host: str | None = None
    uid: int = field(default_factory=os.geteuid)
    created: float = field(default_factory=time.time)
    migration: dict[str, Any] | None = None
    # A QEMU that livemig did not start (`livemig adopt`): its argv, its taps' bridges,
    # the heartbeat chardev and the machine type, from which each destination is derived.
    adopted: dict[str, Any] | None = None

    def __repr__(self) -> str:
        mig = f" migrating({self.migration.get('state')})" if self.migration else ""
        return f"<VMRecord {self.name} pid={self.instance.pid} host={self.host or 'local'}{mig}>"

    @property
    def status(self) -> str:
        if not self.instance.alive():
            return "dead"
        if self.migration and self.migration.get("state") not in (None, "completed", "failed", "cancelled"):
            owner = int(self.migration.get("owner_pid", 0))
            if not owner or not pid_alive(owner):
                return f"orphaned:{self.migration.get('state')}"  # `livemig migrate --attach` takes it over
            return f"migrating:{self.migration.get('state')}"
        return "running"

    @property
    def where(self) -> str:
        """Where the VM's state lives, and what to do about it, in one line."""
        here = f"{self.host or 'local'} (pid {self.instance.pid})"
        mig = self.migration or {}
        state = mig.get("state")
        if state in (None, "completed", "failed", "cancelled") or "dst" not in mig:
            return here
        dst = f"{mig.get('to_host') or 'local'} (pid {mig['dst'].get('pid')})"
        if state in ("postcopy", "postcopy-paused"):
            return f"split: vCPUs on {dst}, unsent pages on {here}; `livemig recover {self.name}` resumes it"
        return f"{here}, migrating to {dst}; `livemig migrate --attach {self.name}` if its livemig died"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec.to_dict(),
            "instance": self.instance.to_dict(),
            "host": self.host,
            "uid": self.uid,
            "created": self.created,
            "migration": self.migration,
            "adopted": self.adopted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VMRecord:
        return cls(
            name=d["name"],
            spec=VMSpec.from_dict(d["spec"]),
            instance=QemuInstance.from_dict(d["instance"]),
            host=d.get("host"),
            uid=int(d.get("uid", os.geteuid())),
            created=float(d.get("created", 0)),
            migration=d.get("migration"),
            adopted=d.get("adopted"),
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or runtime_dir()
        self.vms = ensure_private_dir(self.root / "vms")

    def __repr__(self) -> str:
        return f"<Registry {self.root}>"

    def _path(self, name: str) -> Path:
        if not is_vm_name(name):  # names become file names: nothing else may reach the disk
            raise VMNotFound(str(name), f"no VM named {name!r} (see `livemig vm list`)")
        return self.vms / f"{name}.json"

    def control_socket(self, name: str) -> Path:
        return self._path(name).with_suffix(".ctl")

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        fd = os.open(self._path(name).with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def load(self, name: str) -> VMRecord:
        path = self._path(name)
        try:
            st = path.stat()
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise VMNotFound(name, f"no VM named {name!r} (see `livemig vm list`)") from None
        except ValueError as exc:
            raise LivemigError(f"record of {name!r} is corrupt: {exc}") from exc
        if st.st_uid != os.geteuid() or int(data.get("uid", -1)) != os.geteuid():
            raise VMNotFound(name, f"VM {name!r} belongs to another user; refusing to act on it")
        return VMRecord.from_dict(data)

    def save(self, rec: VMRecord) -> None:
        path = self._path(rec.name)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(rec.to_dict(), f, indent=2)
        tmp.replace(path)

    def create(self, rec: VMRecord) -> None:
        if self.exists(rec.name):
            old = self.load(rec.name)
            if old.instance.alive():
                raise VMExists(
                    rec.name, f"a VM named {rec.name!r} is already running (pid {old.instance.pid})"
                )
        self.save(rec)

    def remove(self, name: str) -> None:
        for suffix in (".json", ".lock", ".ctl"):
            with contextlib.suppress(FileNotFoundError):
                self._path(name).with_suffix(suffix).unlink()

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.vms.glob("*.json"))

    def all(self) -> list[VMRecord]:
        out = []
        for n in self.names():
            with contextlib.suppress(LivemigError):
                out.append(self.load(n))
        return out
