"""Builds the guest image: Debian's cloud kernel (fetched, never installed on the
host) and a busybox-static initramfs holding ``lmwork``. Cached, rebuilt only
when an input changes."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from livemig.errors import EnvironmentProblem, GuestImageMissing
from livemig.paths import cache_dir

__all__ = ["GuestImage", "build_image", "find_image"]

log = logging.getLogger(__name__)

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# The cloud kernel builds virtio as modules: these go into the initramfs, loaded in this order.
GUEST_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net", "virtio_blk",
)  # fmt: skip
PROGRAMS = ("lmwork", "lmecho")
BUSYBOX = Path("/bin/busybox")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str
    key: str

    def __repr__(self) -> str:
        return f"GuestImage(kernel={self.kernel_version!r}, key={self.key[:12]!r})"


def _source(name: str) -> bytes:
    return (resources.files("livemig.guest") / name).read_bytes()


def _inputs_key() -> str:
    """Hash of what goes into the initramfs: the C workload, init and busybox."""
    h = hashlib.sha256()
    for prog in PROGRAMS:
        h.update(_source(f"workloads/{prog}.c"))
    h.update(_source("init.sh"))
    h.update(" ".join(GUEST_MODULES).encode())
    if BUSYBOX.exists():
        h.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    return h.hexdigest()


def _guest_root() -> Path:
    return cache_dir() / "guest"


def find_image() -> GuestImage:
    """The built image for the current inputs, or :class:`GuestImageMissing`."""
    key = _inputs_key()
    manifest = _guest_root() / key / "manifest.json"
    if not manifest.exists():
        raise GuestImageMissing("no guest image for this livemig version: run `livemig guest build`")
    data = json.loads(manifest.read_text())
    return GuestImage(
        kernel=Path(data["kernel"]),
        initrd=Path(data["initrd"]),
        kernel_version=data["kernel_version"],
        key=key,
    )


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{argv[0]} is not installed (see README: setup)") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or [""]
        raise EnvironmentProblem(f"{' '.join(argv[:3])} failed: {tail[0]}") from exc
    return out.stdout


def _kernel_package() -> str:
    """The versioned kernel package that the cloud meta-package depends on."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)", out)
    if not m:
        raise EnvironmentProblem(
            f"apt knows no {KERNEL_META_PACKAGE}: run `apt-get update` (see README: setup)"
        )
    return m.group(1)


def _fetch_kernel(root: Path) -> tuple[Path, str]:
    """Download the kernel .deb into the cache and unpack it there; never install it."""
    pkg = _kernel_package()
    kdir = root / "kernels" / pkg
    found = sorted((kdir / "boot").glob("vmlinuz-*")) if kdir.exists() else []
    if not found:
        debs = root / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob(f"{pkg}_*.deb")):
            log.info("downloading %s into %s", pkg, debs)
            _run(["apt-get", "download", pkg], cwd=debs)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".kernel-"))
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        shutil.rmtree(kdir, ignore_errors=True)
        kdir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(kdir)
        found = sorted((kdir / "boot").glob("vmlinuz-*"))
    if not found:
        raise EnvironmentProblem(f"{pkg} holds no boot/vmlinuz-*")
    return found[-1], found[-1].name.removeprefix("vmlinuz-")


def _compile(prog: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{prog}.c"
        src.write_bytes(_source(f"workloads/{prog}.c"))
        _run(["gcc", "-O2", "-static", "-pthread", "-o", str(out), str(src)])


def _copy_modules(kernel: Path, dest: Path) -> None:
    """The guest's virtio drivers, from the kernel package's lib/modules (flat, by name)."""
    mods = kernel.parent.parent / "lib" / "modules"
    dest.mkdir(parents=True)
    for name in GUEST_MODULES:
        found = sorted(mods.glob(f"*/kernel/**/{name}.ko")) + sorted(mods.glob(f"*/kernel/**/{name}.ko.xz"))
        if not found:
            raise EnvironmentProblem(f"the guest kernel has no module {name}.ko under {mods}")
        if found[0].suffix == ".xz":
            (dest / f"{name}.ko").write_bytes(lzma.decompress(found[0].read_bytes()))
        else:
            shutil.copy2(found[0], dest / f"{name}.ko")


def _write_newc(root: Path, dest: Path) -> None:
    """Pack ``root`` as a gzip'd cpio (newc) archive, as the kernel's initramfs wants."""
    entries = sorted(root.rglob("*"))
    with gzip.open(dest, "wb", compresslevel=6) as out:
        ino = 1
        for path in [root, *entries]:
            rel = "." if path == root else str(path.relative_to(root))
            st = path.lstat()
            data = b""
            if path.is_symlink():
                data = os.readlink(path).encode()
            elif path.is_file():
                data = path.read_bytes()
            _newc_entry(out, rel, st.st_mode, ino, data)
            ino += 1
        _newc_entry(out, "TRAILER!!!", 0, 0, b"")


def _newc_entry(out: gzip.GzipFile, name: str, mode: int, ino: int, data: bytes) -> None:
    raw = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out.write(header + raw + b"\0" * ((4 - (len(header) + len(raw)) % 4) % 4))
    out.write(data + b"\0" * ((4 - len(data) % 4) % 4))


def build_image(force: bool = False) -> GuestImage:
    """Build (or find) the guest image for the current inputs."""
    if not force:
        try:
            return find_image()
        except GuestImageMissing:
            pass
    if not BUSYBOX.exists():
        raise EnvironmentProblem("busybox-static is not installed (see README: setup)")
    root = _guest_root()
    root.mkdir(parents=True, exist_ok=True)
    kernel, kver = _fetch_kernel(root)
    key = _inputs_key()
    out_dir = root / key
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        tree = staging / "tree"
        for d in ("bin", "dev", "proc", "sys", "tmp"):
            (tree / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        (tree / "bin" / "sh").symlink_to("busybox")
        for prog in PROGRAMS:
            _compile(prog, tree / "bin" / prog)
        _copy_modules(kernel, tree / "lib" / "modules")
        init = tree / "init"
        init.write_bytes(_source("init.sh"))
        init.chmod(0o755)
        _write_newc(tree, staging / "initrd.img")
        shutil.copy2(kernel, staging / "vmlinuz")
        shutil.rmtree(tree)
        manifest = {
            "kernel": str(out_dir / "vmlinuz"),
            "initrd": str(out_dir / "initrd.img"),
            "kernel_version": kver,
            "inputs": key,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("guest image built: %s", out_dir)
    return find_image()
