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
from typing import Any, Final

from livemig.errors import LivemigError, VMExists, VMNotFound
from livemig.paths import ensure_private_dir, runtime_dir
from livemig.qemu.instance import QemuInstance
from livemig.spec import VMSpec, is_vm_name

__all__ = ["ENDED", "AdoptedRecord", "MigrationRecord", "Registry", "VMRecord", "pid_alive", "split_where"]

ENDED: Final = frozenset({"completed", "failed", "cancelled"})  # a migration's final states
SPLIT: Final = frozenset({"postcopy", "postcopy-paused"})  # the VM's memory on both hosts


def split_where(name: str, vcpus: str, pages: str) -> str:
    """Where a VM split by post-copy trouble is, and how to resume it (one sentence)."""
    return f"split: vCPUs on {vcpus}, unsent pages on {pages}; `livemig recover {name}` resumes it"


@dataclass
class MigrationRecord:
    """A VM's migration, as any livemig process (or the next, after a crash) must know it."""

    state: str
    owner_pid: int = 0  # the livemig process driving it (0: nobody; `recover` may take it)
    dst: QemuInstance | None = None  # the destination, while it runs
    source: QemuInstance | None = None  # after completion: the old source, to be ended
    policy: str | None = None
    started: float | None = None
    finished: float | None = None
    to_host: str | None = None
    address: str | None = None
    preempt: bool | None = None
    link: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"<MigrationRecord {self.state} owner={self.owner_pid} dst={self.dst.pid if self.dst else None}>"
        )

    @property
    def unfinished(self) -> bool:
        return self.state not in ENDED

    @property
    def split(self) -> bool:
        return self.state in SPLIT

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "state": self.state, "owner_pid": self.owner_pid, "policy": self.policy, "started": self.started,
            "finished": self.finished, "to_host": self.to_host, "address": self.address,
            "preempt": self.preempt, "link": self.link,
        }  # fmt: skip
        if self.dst is not None:
            d["dst"] = self.dst.to_dict()
        if self.source is not None:
            d["from"] = self.source.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MigrationRecord:
        return cls(
            state=str(d.get("state")), owner_pid=int(d.get("owner_pid") or 0),
            dst=QemuInstance.from_dict(d["dst"]) if d.get("dst") else None,
            source=QemuInstance.from_dict(d["from"]) if d.get("from") else None,
            policy=d.get("policy"), started=d.get("started"), finished=d.get("finished"),
            to_host=d.get("to_host"), address=d.get("address"), preempt=d.get("preempt"), link=d.get("link"),
        )  # fmt: skip


@dataclass
class AdoptedRecord:
    """A QEMU that livemig did not start (`livemig adopt`): what each destination is
    derived from."""

    argv: list[str]
    taps: dict[str, str | None]  # tap name -> its bridge
    qmp: str
    heartbeat_chardev: str | None = None
    machine_type: str | None = None
    disks: list[str] = field(default_factory=list)
    capabilities: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "argv": self.argv, "taps": self.taps, "qmp": self.qmp, "heartbeat_chardev": self.heartbeat_chardev,
            "machine_type": self.machine_type, "disks": self.disks, "capabilities": self.capabilities,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdoptedRecord:
        return cls(
            argv=list(d["argv"]), taps=dict(d.get("taps") or {}), qmp=str(d.get("qmp", "")),
            heartbeat_chardev=d.get("heartbeat_chardev"), machine_type=d.get("machine_type"),
            disks=list(d.get("disks") or []), capabilities=dict(d.get("capabilities") or {}),
        )  # fmt: skip


@dataclass
class VMRecord:
    name: str
    spec: VMSpec
    instance: QemuInstance
    host: str | None = None
    uid: int = field(default_factory=os.geteuid)
    created: float = field(default_factory=time.time)
    migration: MigrationRecord | None = None
    adopted: AdoptedRecord | None = None

    def __repr__(self) -> str:
        mig = f" migrating({self.migration.state})" if self.migration else ""
        return f"<VMRecord {self.name} pid={self.instance.pid} host={self.host or 'local'}{mig}>"

    @property
    def status(self) -> str:
        if not self.instance.alive():
            return "dead"
        mig = self.migration
        if mig is not None and mig.unfinished:
            if not mig.owner_pid or not pid_alive(mig.owner_pid):
                return f"orphaned:{mig.state}"  # `livemig migrate --attach` takes it over
            return f"migrating:{mig.state}"
        return "running"

    @property
    def where(self) -> str:
        """Where the VM's state lives, and what to do about it, in one line."""
        here = f"{self.host or 'local'} (pid {self.instance.pid})"
        mig = self.migration
        if mig is None or not mig.unfinished or mig.dst is None:
            return here
        dst = f"{mig.to_host or 'local'} (pid {mig.dst.pid})"
        if mig.split:
            return split_where(self.name, dst, here)
        return f"{here}, migrating to {dst}; `livemig migrate --attach {self.name}` if its livemig died"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec.to_dict(),
            "instance": self.instance.to_dict(),
            "host": self.host,
            "uid": self.uid,
            "created": self.created,
            "migration": self.migration.to_dict() if self.migration else None,
            "adopted": self.adopted.to_dict() if self.adopted else None,
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
            migration=MigrationRecord.from_dict(d["migration"]) if d.get("migration") else None,
            adopted=AdoptedRecord.from_dict(d["adopted"]) if d.get("adopted") else None,
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
        lock = self._path(name).with_suffix(".lock")
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if not self.exists(name):  # nothing was recorded (a refused start): leave nothing
                lock.unlink(missing_ok=True)
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
