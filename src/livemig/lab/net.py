"""The lab's I/O: network namespaces, veth links, a bridge and tbf shaping, made
through netlink (pyroute2), recorded in the runtime directory so that ``lab down``
removes exactly what ``lab up`` made."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from livemig.errors import LabError
from livemig.lab.plan import (
    CLIENT_ADDRESS,
    DEFAULT_PREFIX,
    GUEST_BRIDGE,
    PREFIXLEN,
    LabHost,
    LabPlan,
    Shaping,
    plan_lab,
)
from livemig.paths import cache_dir, runtime_dir
from livemig.units import GSO_MAX

__all__ = ["Lab", "lab_prefix"]

log = logging.getLogger(__name__)
TCP_WMEM_DEFAULT = (4096, 16384, 4194304)


def lab_prefix() -> str:
    """Namespace prefix: ``$LIVEMIG_LAB_PREFIX`` (tests use their own), else ``lm-``."""
    return os.environ.get("LIVEMIG_LAB_PREFIX", DEFAULT_PREFIX)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it creates network namespaces and shapes links (run as root)")


@contextlib.contextmanager
def _ns(name: str) -> Iterator[Any]:
    from pyroute2 import NetNS

    ns = NetNS(name)
    try:
        yield ns
    finally:
        ns.close()


def _index(ns: Any, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} is missing")
    return int(found[0])


class Lab:
    """The lab recorded in ``<runtime>/lab.json``; :meth:`load` raises if none is up."""

    def __init__(self, plan: LabPlan, root: Path | None = None) -> None:
        self.plan = plan
        self.root = root or runtime_dir()

    def __repr__(self) -> str:
        hosts = ",".join(h.name for h in self.plan.hosts)
        return f"<Lab {self.plan.prefix} hosts={hosts} {self.plan.shaping}>"

    # -- the record -------------------------------------------------------
    @staticmethod
    def state_path(root: Path | None = None) -> Path:
        return (root or runtime_dir()) / "lab.json"

    @classmethod
    def load(cls, root: Path | None = None) -> Lab:
        path = cls.state_path(root)
        try:
            plan = LabPlan.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise LabError("no lab is up (run `livemig lab up`)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"the lab record {path} is corrupt: {exc}") from exc
        return cls(plan, root)

    @classmethod
    def current(cls, root: Path | None = None) -> Lab | None:
        with contextlib.suppress(LabError):
            return cls.load(root)
        return None

    def _save(self) -> None:
        path = self.state_path(self.root)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.plan.to_dict(), indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    # -- up / down ----------------------------------------------------------
    @classmethod
    def up(cls, hosts: int, shaping: Shaping, root: Path | None = None) -> Lab:
        """Create the lab, or reshape the one that is up with the same hosts (idempotent)."""
        _require_root()
        plan = plan_lab(hosts, shaping, lab_prefix())
        existing = cls.current(root)
        if existing is not None:
            if [h.name for h in existing.plan.hosts] != [h.name for h in plan.hosts]:
                raise LabError(
                    f"a lab with hosts {', '.join(h.name for h in existing.plan.hosts)} is up; "
                    "`livemig lab down` first"
                )
            if existing.missing():
                raise LabError(
                    f"the lab is damaged ({', '.join(existing.missing())} missing); `livemig lab down` first"
                )
            existing.shape(shaping)
            return existing
        from pyroute2 import netns

        clashes = sorted(set(plan.namespaces) & set(netns.listnetns()))
        if clashes:
            raise LabError(
                f"network namespace {clashes[0]} exists but is not livemig's lab; refusing to use it"
            )
        lab = cls(plan, root)
        lab._save()  # first: what is created is recorded, so a failure can be undone
        try:
            lab._build()
        except Exception as exc:
            lab.down()
            raise LabError(f"lab up failed, undone: {exc}") from exc
        log.info("lab up: %r", lab)
        return lab

    def pki_dir(self, host: str) -> Path:
        """``host``'s TLS credentials directory (QEMU's tls-creds-x509 ``dir``)."""
        self.plan.host(host)
        return self.root / "lab-pki" / host

    def local_dir(self, host: str) -> Path:
        """``host``'s local storage: disks here are visible to ``host`` only."""
        self.plan.host(host)
        return self._local_root / host

    @property
    def _local_root(self) -> Path:
        # on a disk, not in the runtime directory: /run is a tmpfs, where cache=none fails
        return cache_dir() / "lab-local" / self.plan.prefix

    def owner_of(self, path: Path) -> str | None:
        """The host whose local storage holds ``path`` (None: shared storage)."""
        with contextlib.suppress(ValueError, IndexError):
            return path.resolve().relative_to(self._local_root.resolve()).parts[0]
        return None

    def _issue_pki(self) -> None:
        from livemig.lab.pki import issue_host, new_ca

        ca = new_ca()
        for h in self.plan.hosts:
            issue_host(ca, self.pki_dir(h.name), h.name, h.address)

    def _build(self) -> None:
        from pyroute2 import netns

        self._issue_pki()
        p = self.plan
        for name in p.namespaces:
            netns.create(name)
        with _ns(p.switch_netns) as sw:
            sw.link("set", index=_index(sw, "lo"), state="up")
            sw.link("add", ifname=p.bridge, kind="bridge")
            bridge = _index(sw, p.bridge)
            sw.link("set", index=bridge, state="up")
            for h in p.hosts:
                sw.link("add", ifname=h.port, kind="veth", peer={"ifname": h.ifname, "net_ns_fd": h.netns})
                sw.link("set", index=_index(sw, h.port), master=bridge, state="up")
                with _ns(h.netns) as ns:
                    eth = _index(ns, h.ifname)
                    ns.addr("add", index=eth, address=h.address, prefixlen=PREFIXLEN)
                    ns.link("set", index=eth, state="up")
                    ns.link("set", index=_index(ns, "lo"), state="up")
        self._build_guest_network()
        for h in p.hosts:
            self.local_dir(h.name).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.shape(p.shaping)

    def _build_guest_network(self) -> None:
        """gbr0 in the net namespace; lmbr0 in every host, uplinked to gbr0; the client."""
        p = self.plan
        with _ns(p.net_netns) as net:
            net.link("set", index=_index(net, "lo"), state="up")
            net.link("add", ifname="gbr0", kind="bridge")
            gbr = _index(net, "gbr0")
            net.link("set", index=gbr, state="up")
            for h in p.hosts:
                with _ns(h.netns) as ns:
                    ns.link("add", ifname=GUEST_BRIDGE, kind="bridge")
                    ns.link("set", index=_index(ns, GUEST_BRIDGE), state="up")
                port = f"g-{h.name}"
                net.link("add", ifname=port, kind="veth", peer={"ifname": "guplink", "net_ns_fd": h.netns})
                net.link("set", index=_index(net, port), master=gbr, state="up")
                with _ns(h.netns) as ns:
                    ns.link("set", index=_index(ns, "guplink"), master=_index(ns, GUEST_BRIDGE), state="up")
            net.link(
                "add", ifname="c-client", kind="veth", peer={"ifname": "eth0", "net_ns_fd": p.client_netns}
            )
            net.link("set", index=_index(net, "c-client"), master=gbr, state="up")
        with _ns(p.client_netns) as cl:
            eth = _index(cl, "eth0")
            cl.addr("add", index=eth, address=CLIENT_ADDRESS, prefixlen=PREFIXLEN)
            cl.link("set", index=eth, state="up")
            cl.link("set", index=_index(cl, "lo"), state="up")

    def shape(self, shaping: Shaping) -> None:
        """(Re)apply tbf to both ends of every host's link."""
        shaping = shaping.validated()
        tbf = {
            "handle": 0x10000,
            "rate": shaping.rate_bps,
            "burst": shaping.burst_bytes,
            "latency": f"{shaping.latency_ms:g}ms",
        }
        with _ns(self.plan.switch_netns) as sw:
            for h in self.plan.hosts:
                sw.tc("replace", "tbf", _index(sw, h.port), **tbf)
                with _ns(h.netns) as ns:
                    ns.tc("replace", "tbf", _index(ns, h.ifname), **tbf)
        self.plan = LabPlan(**{**self.plan.__dict__, "shaping": shaping})
        self._save()

    def set_wmem_max(self, host: str, max_bytes: int | None) -> None:
        """Set ``net.ipv4.tcp_wmem``'s max inside ``host``'s namespace (None: the default).
        It is per namespace, so the machine's own setting is never touched."""
        h = self.plan.host(host)
        lo, default, top = TCP_WMEM_DEFAULT
        value = f"{lo} {min(default, max_bytes or default)} {max_bytes or top}"
        subprocess.run(  # /proc/sys/net is the namespace's own; tee is in coreutils (always there)
            ["ip", "netns", "exec", h.netns, "tee", "/proc/sys/net/ipv4/tcp_wmem"],
            input=value.encode(),
            check=True,
            capture_output=True,
        )
        wmem = {k: v for k, v in self.plan.wmem_max.items() if k != host}
        if max_bytes is not None:
            wmem[host] = max_bytes
        self.plan = LabPlan(**{**self.plan.__dict__, "wmem_max": wmem})
        self._save()

    def set_gso_max(self, host: str, max_bytes: int | None) -> None:
        """Cap the GSO size of ``host``'s link (None: the kernel's 64 KiB): the largest
        burst TCP hands its egress queue at once. A socket takes its device's cap when it
        connects, so this acts on connections made after it. On a slow link a post-copy
        page's answer waits behind one such burst of the background stream (docs/pacing)."""
        h = self.plan.host(host)
        with _ns(h.netns) as ns:
            ns.link("set", index=_index(ns, h.ifname), gso_max_size=max_bytes or GSO_MAX)
        gso = {k: v for k, v in self.plan.gso_max.items() if k != host}
        if max_bytes is not None:
            gso[host] = max_bytes
        self.plan = LabPlan(**{**self.plan.__dict__, "gso_max": gso})
        self._save()

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) ``host``'s link at the switch, like pulling its cable: no RST,
        no FIN, packets just stop. Both directions, and the host sees no carrier change."""
        h = self.plan.host(host)
        with _ns(self.plan.switch_netns) as sw:
            sw.link("set", index=_index(sw, h.port), state="up" if up else "down")
        log.info("lab: link of %s %s", host, "restored" if up else "cut")

    def down(self) -> list[str]:
        """Remove the recorded namespaces (their links and qdiscs go with them)."""
        _require_root()
        from pyroute2 import netns

        present = set(netns.listnetns())
        removed = []
        for name in self.plan.namespaces:
            if name in present:
                netns.remove(name)
                removed.append(name)
        with contextlib.suppress(FileNotFoundError):
            self.state_path(self.root).unlink()
        shutil.rmtree(self.root / "lab-pki", ignore_errors=True)
        for h in self.plan.hosts:  # the hosts' local disks are the user's: only empty dirs go
            with contextlib.suppress(OSError):
                self.local_dir(h.name).rmdir()
        with contextlib.suppress(OSError):
            self._local_root.rmdir()
        log.info("lab down: removed %s", removed)
        return removed

    # -- queries ------------------------------------------------------------
    def missing(self) -> list[str]:
        from pyroute2 import netns

        present = set(netns.listnetns())
        return [n for n in self.plan.namespaces if n not in present]

    def host(self, name: str) -> LabHost:
        return self.plan.host(name)

    def status(self) -> dict[str, Any]:
        """The record, checked against the kernel: namespaces present, qdiscs as applied."""
        hosts = []
        missing = set(self.missing())
        for h in self.plan.hosts:
            entry: dict[str, Any] = {"host": h.name, "netns": h.netns, "address": h.address}
            if h.netns in missing:
                entry["error"] = "namespace missing"
            else:
                with _ns(h.netns) as ns:
                    entry["qdisc"] = _tbf(ns, h.ifname)
                    entry["gso_max_size"] = ns.get_links(_index(ns, h.ifname))[0].get_attr(
                        "IFLA_GSO_MAX_SIZE"
                    )
            hosts.append(entry)
        return {
            "prefix": self.plan.prefix,
            "shaping": str(self.plan.shaping),
            "hosts": hosts,
            "switch": self.plan.switch_netns,
            "missing": sorted(missing),
            "wmem_max": self.plan.wmem_max,
            "gso_max": self.plan.gso_max,
            "guest_network": {
                "bridge": f"{GUEST_BRIDGE} in every host", "switch": self.plan.net_netns,
                "client": self.plan.client_netns, "client_address": CLIENT_ADDRESS, "subnet": "198.51.100.0/24",
            } if self.plan.guest_network else None,
        }  # fmt: skip


def _tbf(ns: Any, ifname: str) -> dict[str, Any] | None:
    for q in ns.get_qdiscs(index=_index(ns, ifname)):
        if q.get_attr("TCA_KIND") == "tbf":
            parms = dict(q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS"))
            return {"rate_Bps": parms["rate"], "limit_bytes": parms["limit"]}
    return None
