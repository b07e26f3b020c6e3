"""One libvirt daemon per lab host (``livemig lab up --libvirt``).

Each daemon runs inside its host's network namespace, in a private mount namespace
(``ip netns exec`` gives it one) where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt are bind mounts of that host's own directories:
the hosts share no libvirt state, and migration traffic crosses the shaped link. Each
daemon has its own ``host_uuid`` (libvirt refuses a migration "to the same host"
otherwise) and listens on a UNIX socket only; its URI is
``qemu+unix:///system?socket=<runtime>/lab-libvirt/<host>/sock/libvirt-sock``.

QEMU runs as root without cgroups, namespaces or a security driver, and keeps its
capabilities (post-copy needs userfaultfd); see ../shared NOTES for why each setting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlparse

from livemig.errors import LabError
from livemig.paths import cache_dir

__all__ = [
    "LabDaemon",
    "daemon_for_uri",
    "lab_domains",
    "lab_uri",
    "running_daemons",
    "start_daemons",
    "stop_daemons",
]

log = logging.getLogger(__name__)
MOUNTS: Final = {  # inside the daemon's mount namespace -> its host directory's subdirectory
    "/etc/libvirt": "etc", "/run/libvirt": "run", "/var/lib/libvirt": "lib", "/var/log/libvirt": "log",
}  # fmt: skip
START_TIMEOUT_S: Final = 60.0  # the first probe of a QEMU binary takes 15-20 s here
MIGRATION_PORTS: Final = (49152, 49215)

LIBVIRTD_CONF = """\
# written by livemig lab up --libvirt
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
listen_tcp = 0
listen_tls = 0
host_uuid = "{uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 5
keepalive_count = 5
"""

QEMU_CONF = """\
# written by livemig lab up --libvirt
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
clear_emulator_capabilities = 0
migration_port_min = {lo}
migration_port_max = {hi}
"""
# TLS between the daemons' QEMUs (VIR_MIGRATE_TLS, `livemig -c ... migrate --tls`): the lab
# host's own credentials (ca-cert.pem, server-*.pem, client-*.pem: what QEMU reads)
QEMU_TLS_CONF = """migrate_tls_x509_cert_dir = "{pki}"
migrate_tls_x509_verify = 1
"""


def lab_uri(sock_dir: Path) -> str:
    return f"qemu+unix:///system?socket={sock_dir / 'libvirt-sock'}"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class LabDaemon:
    """One lab host's libvirtd: where its state lives, and the process (PID and start
    time, so that a reused PID is never signalled)."""

    host: str
    netns: str
    dir: Path
    pid: int = 0
    start_ticks: int | None = None

    def __repr__(self) -> str:
        return f"<LabDaemon {self.host} pid={self.pid} {self.uri}>"

    @property
    def sock_dir(self) -> Path:
        return self.dir / "sock"

    @property
    def uri(self) -> str:
        return lab_uri(self.sock_dir)

    @property
    def record(self) -> Path:
        return self.dir / "daemon.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "libvirtd.log"

    def host_path(self, path: str) -> Path:
        """Where a path that this daemon's QEMUs see (/run/libvirt/...) is for everyone else."""
        for inside, sub in MOUNTS.items():
            if path == inside or path.startswith(inside + "/"):
                return self.dir / sub / path[len(inside) :].lstrip("/")
        return Path(path)

    def alive(self) -> bool:
        return self.pid > 0 and _start_ticks(self.pid) == self.start_ticks

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "netns": self.netns, "dir": str(self.dir), "pid": self.pid,
                "start_ticks": self.start_ticks}  # fmt: skip

    @classmethod
    def load(cls, dir: Path) -> LabDaemon | None:
        try:
            d = json.loads((dir / "daemon.json").read_text())
            return cls(d["host"], d["netns"], Path(d["dir"]), int(d["pid"]), d.get("start_ticks"))
        except (OSError, ValueError, KeyError) as exc:
            log.debug("no daemon record in %s: %s", dir, exc)
            return None


def _write_config(d: LabDaemon, pki: Path | None) -> None:
    for sub in (*MOUNTS.values(), "sock"):
        (d.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    (d.dir / "etc" / "qemu").mkdir(exist_ok=True)
    (d.dir / "log" / "qemu").mkdir(exist_ok=True)
    (d.dir / "etc" / "libvirtd.conf").write_text(
        LIBVIRTD_CONF.format(sock=d.sock_dir, uuid=uuid.uuid5(uuid.NAMESPACE_URL, str(d.dir)))
    )
    conf = QEMU_CONF.format(lo=MIGRATION_PORTS[0], hi=MIGRATION_PORTS[1])
    if pki is not None and (pki / "ca-cert.pem").exists():
        conf += QEMU_TLS_CONF.format(pki=pki)
    (d.dir / "etc" / "qemu.conf").write_text(conf)


_SCRIPT = (
    "set -e\n"
    'for m in $MOUNTS; do mkdir -p "${m%%=*}"; mount --bind "$DIR/${m#*=}" "${m%%=*}"; done\n'
    'mkdir -p /var/cache/libvirt; mount --bind "$CACHE" /var/cache/libvirt\n'
    "exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid\n"
)


def _spawn(d: LabDaemon) -> LabDaemon:
    if shutil.which("libvirtd") is None:
        raise LabError(
            "libvirtd is not installed (scripts/setup.sh installs libvirt 11.3 from bookworm-backports)"
        )
    cache = cache_dir() / "lab-libvirt-cache" / d.host  # kept: the QEMU probe is slow
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {**os.environ, "DIR": str(d.dir), "CACHE": str(cache),
           "MOUNTS": " ".join(f"{k}={v}" for k, v in MOUNTS.items())}  # fmt: skip
    out = (d.dir / "daemon.out").open("ab")
    with out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", d.netns, "sh", "-c", _SCRIPT],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    time.sleep(0.05)  # ip and sh exec into libvirtd: its start time is that of the PID
    started = LabDaemon(d.host, d.netns, d.dir, proc.pid, _start_ticks(proc.pid))
    started.record.write_text(json.dumps(started.to_dict()))
    return started


def _wait_ready(d: LabDaemon, deadline: float) -> None:
    path = d.sock_dir / "libvirt-sock"
    while time.monotonic() < deadline:
        if not d.alive():
            tail = (d.dir / "daemon.out").read_text(errors="replace").strip().splitlines()[-1:]
            raise LabError(f"libvirtd of {d.host} exited at start: {tail[0] if tail else 'no output'}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                except OSError:
                    pass
                else:
                    return
        time.sleep(0.1)
    raise LabError(f"libvirtd of {d.host} did not listen on {path} within {START_TIMEOUT_S:g}s")


def start_daemons(root: Path, hosts: list[tuple[str, str]]) -> list[LabDaemon]:
    """Start (or find running) one daemon per ``(host, netns)``; returns them, ready."""
    daemons = []
    deadline = time.monotonic() + START_TIMEOUT_S
    for host, netns in hosts:
        d = LabDaemon.load(root / "lab-libvirt" / host)
        if d is None or not d.alive():
            d = LabDaemon(host, netns, root / "lab-libvirt" / host)
            _write_config(d, root / "lab-pki" / host)
            d = _spawn(d)
            log.info("lab: started %r", d)
        daemons.append(d)
    for d in daemons:
        _wait_ready(d, deadline)
    return daemons


def running_daemons(root: Path) -> list[LabDaemon]:
    base = root / "lab-libvirt"
    found = [LabDaemon.load(p) for p in sorted(base.iterdir())] if base.is_dir() else []
    return [d for d in found if d is not None]


def daemon_for_uri(root: Path, uri: str) -> LabDaemon | None:
    """The lab daemon that ``uri`` reaches (None: not a lab host's URI)."""
    parsed = urlparse(uri)
    sock = parse_qs(parsed.query).get("socket", [None])[0]
    if sock is None:
        return None
    for d in running_daemons(root):
        if Path(sock) == d.sock_dir / "libvirt-sock":
            return d
    return None


def lab_domains(root: Path) -> list[str]:
    """The domains that run on the lab's daemons (``host/name``)."""
    found = []
    for d in running_daemons(root):
        if not d.alive():
            continue
        import libvirt

        try:
            conn = libvirt.open(d.uri)
        except libvirt.libvirtError as exc:
            log.warning("libvirtd of %s does not answer: %s", d.host, exc)
            continue
        try:
            found += [
                f"{d.host}/{dom.name()}"
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            ]
        finally:
            conn.close()
    return found


def stop_daemons(root: Path, grace_s: float = 10.0) -> list[str]:
    """Stop every recorded daemon by its PID (start time checked), then remove its state."""
    stopped = []
    for d in running_daemons(root):
        if d.alive():
            os.kill(d.pid, signal.SIGTERM)
            end = time.monotonic() + grace_s
            while d.alive() and time.monotonic() < end:
                time.sleep(0.05)
            if d.alive():
                log.warning(
                    "libvirtd of %s (pid %d) ignored SIGTERM for %gs: SIGKILL", d.host, d.pid, grace_s
                )
                os.kill(d.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(d.pid, os.WNOHANG)
            stopped.append(d.host)
        shutil.rmtree(d.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        (root / "lab-libvirt").rmdir()
    return stopped
