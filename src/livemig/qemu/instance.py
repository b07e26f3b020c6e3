"""One QEMU process: spawned detached (it outlives livemig), tracked by PID in its
own 0700 directory under the runtime directory, ended only by its PID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

from livemig.errors import QemuStartError
from livemig.paths import ensure_private_dir
from livemig.qemu.argv import InstancePaths, build_argv, tap_name
from livemig.qemu.binary import QemuBinary
from livemig.spec import VMSpec

__all__ = ["Launch", "QemuInstance", "proc_start_ticks", "spawn_owned", "spec_launch"]

# What to run for one instance: (its paths, its id) -> (argv, [(tap, bridge)], heartbeat?)
Launch = Callable[[InstancePaths, str], tuple[list[str], list[tuple[str, str]], bool]]


def spec_launch(spec: VMSpec, qemu: Path, accel: str, incoming: bool) -> Launch:
    def launch(paths: InstancePaths, iid: str) -> tuple[list[str], list[tuple[str, str]], bool]:
        taps = [(tap_name(iid, i), n.bridge) for i, n in enumerate(spec.nics) if n.bridge]
        return build_argv(qemu, spec, accel, paths, incoming, iid), taps, spec.heartbeat

    return launch


log = logging.getLogger(__name__)
P = ParamSpec("P")


def proc_start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class QemuInstance:
    """A QEMU process of VM ``name``. ``incoming`` marks a destination waiting for a stream."""

    name: str
    id: str
    dir: Path
    pid: int
    accel: str
    incoming: bool = False
    netns: str | None = None
    start_ticks: int | None = None  # /proc/PID/stat starttime: tells our QEMU from a reused PID
    taps: tuple[tuple[str, str], ...] = ()  # (tap, bridge) of each bridged NIC
    _child: bool = False  # spawned by this process: reap it by PID when it exits
    _returncode: int | None = None

    def __repr__(self) -> str:
        role = "incoming" if self.incoming else "running"
        where = f" netns={self.netns}" if self.netns else ""
        # no alive() here: it reaps a child, and a repr has no side effects
        ended = f" exited={self._returncode}" if self._returncode is not None else ""
        return f"<QemuInstance {self.name} id={self.id} pid={self.pid} {role} {self.accel}{where}{ended}>"

    @property
    def paths(self) -> InstancePaths:
        return InstancePaths(self.dir)

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def spawn(
        cls,
        qemu: QemuBinary,
        spec: VMSpec,
        accel: str,
        runtime: Path,
        incoming: bool = False,
        netns: str | None = None,
        timeout: float = 10.0,
        launch: Launch | None = None,
    ) -> QemuInstance:
        """Start QEMU for ``spec`` (or as ``launch`` says: adopted VMs), wait for its
        sockets and put its taps on their bridges."""
        iid = secrets.token_hex(4)
        idir = ensure_private_dir(ensure_private_dir(runtime / "qemu") / f"{spec.name}-{iid}")
        paths = InstancePaths(idir)
        launch = launch or spec_launch(spec, qemu.path, accel, incoming)
        argv, taps, heartbeat = launch(paths, iid)
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        log.debug("spawning %s", argv)
        fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # Detached (own session): it outlives livemig and ^C in its terminal. No Popen:
            # livemig does not own the QEMU's lifetime, it only tracks it by PID.
            pid = os.posix_spawnp(
                argv[0],
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(fd)
        inst = cls(
            spec.name, iid, idir, pid, accel, incoming, netns, proc_start_ticks(pid), tuple(taps), _child=True
        )
        try:
            inst._until_started(spec.name, heartbeat, time.monotonic() + timeout, timeout)
        except BaseException:  # a failed start, or ^C/SIGTERM meanwhile: no QEMU is left behind
            inst.kill(remove=False)
            shutil.rmtree(idir, ignore_errors=True)
            raise
        return inst

    def _until_started(self, name: str, heartbeat: bool, deadline: float, timeout: float) -> None:
        """Wait for the QEMU's sockets, then plug its taps into the lab bridge. Raises with
        QEMU's last words; the caller kills it and removes its directory."""
        paths = self.paths
        sockets = paths.sockets if heartbeat else (paths.qmp, paths.qmp_aux)
        while not all(p.exists() for p in sockets):
            if not self.alive():
                msg = _tail(paths.log) or f"exit code {self.returncode()}"
                raise QemuStartError(name, f"{name}: QEMU exited at start: {msg.splitlines()[-1]}", msg)
            if time.monotonic() > deadline:
                raise QemuStartError(name, f"{name}: QEMU did not open its sockets in {timeout:g}s")
            time.sleep(0.01)
        for sock in sockets:
            sock.chmod(0o600)
        if self.taps:
            from livemig.lab.bridge import attach_taps

            try:
                attach_taps(self.netns, list(self.taps), self.alive, deadline)
            except Exception as exc:
                said = _tail(paths.log).splitlines()
                if not self.alive() and said:
                    raise QemuStartError(name, f"{name}: QEMU exited at start: {said[-1]}") from exc
                raise

    def _reap(self) -> None:
        """Reap the QEMU if this process spawned it (whichever object spawned it: records are
        reloaded), so no zombie is left; another process's QEMU is left alone."""
        if self._returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            if self._child:
                self._returncode = -1
            return
        if pid:
            self._returncode = os.waitstatus_to_exitcode(status)

    def alive(self) -> bool:
        self._reap()
        if self._returncode is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Guard against PID reuse: same PID and same start time, and not a zombie.
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            return False
        if fields[0] == "Z":
            return False
        return self.start_ticks is None or int(fields[19]) == self.start_ticks

    def wait_guest_ready(self, timeout: float = 60.0) -> None:
        """Wait until the guest's init says it started its workload (console line)."""
        deadline = time.monotonic() + timeout
        while True:
            console = self.paths.console
            if console.exists() and b"livemig-guest: ready" in console.read_bytes():
                return
            if not self.alive():
                raise QemuStartError(
                    self.name, f"{self.name}: QEMU exited while the guest booted", self.log_tail()
                )
            if time.monotonic() > deadline:
                raise QemuStartError(self.name, f"{self.name}: the guest did not boot within {timeout:g}s")
            time.sleep(0.05)

    def returncode(self) -> int | None:
        self._reap()
        return self._returncode

    def kill(self, grace: float = 3.0, remove: bool = True) -> None:
        """End this QEMU (SIGTERM, then SIGKILL after ``grace``), by its PID only."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                while self.alive():
                    time.sleep(0.01)
        if remove:
            self.remove_files()

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        return _tail(self.paths.log, lines)

    # -- records -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "dir": str(self.dir),
            "pid": self.pid,
            "accel": self.accel,
            "incoming": self.incoming,
            "netns": self.netns,
            "start_ticks": self.start_ticks,
            "taps": [list(t) for t in self.taps],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QemuInstance:
        return cls(
            d["name"], d["id"], Path(d["dir"]), int(d["pid"]), d["accel"],
            bool(d.get("incoming")), d.get("netns"), d.get("start_ticks"),
            tuple((str(t), str(b)) for t, b in d.get("taps") or ()),
        )  # fmt: skip


async def spawn_owned(spawn: Callable[P, QemuInstance], *args: P.args, **kwargs: P.kwargs) -> QemuInstance:
    """``spawn(...)`` (:meth:`QemuInstance.spawn`) in a worker thread. If the caller is
    cancelled meanwhile (^C, SIGTERM), the QEMU that the thread goes on to start is ended:
    nobody would record it."""
    lock = threading.Lock()
    abandoned = False
    started: list[QemuInstance] = []

    def run() -> QemuInstance:
        inst = spawn(*args, **kwargs)
        with lock:
            if not abandoned:
                started.append(inst)
                return inst
        log.info("ending %r: its start was abandoned", inst)
        inst.kill()
        return inst

    try:
        return await asyncio.to_thread(run)
    except BaseException:
        with lock:
            abandoned = True
            orphans = list(started)
        for inst in orphans:  # started, but the caller never got it
            inst.kill()
        raise
