"""Finding qemu-system-x86_64 and knowing what its version can be trusted with."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from livemig.errors import QemuNotFound, QemuTooOld

__all__ = [
    "LIVE_PRECOPY_TCG_MIN",
    "MULTIFD_POSTCOPY_MIN",
    "QemuBinary",
    "find_qemu",
    "parse_version",
    "require_live_precopy",
]

# 7.2 misses dirty-bitmap fix 03bfc2188f: TCG guest writes during pre-copy can be lost.
LIVE_PRECOPY_TCG_MIN = (9, 0, 0)
# multifd + postcopy-ram: the destination aborts at the switch before 10.1.
MULTIFD_POSTCOPY_MIN = (10, 1, 0)


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise QemuNotFound(f"cannot read a QEMU version from {text.splitlines()[0]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass(frozen=True)
class QemuBinary:
    path: Path
    version: tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def __repr__(self) -> str:
        return f"QemuBinary({str(self.path)!r}, {self.version_str})"

    def require_live_precopy(self, accel: str) -> None:
        """Refuse live pre-copy under TCG on a QEMU with the dirty-bitmap bug."""
        require_live_precopy(self.version, accel)


def require_live_precopy(version: tuple[int, int, int], accel: str) -> None:
    """Refuse live pre-copy under TCG on a QEMU with the dirty-bitmap bug."""
    if accel == "tcg" and version < LIVE_PRECOPY_TCG_MIN:
        raise QemuTooOld(
            ".".join(map(str, version)),
            ".".join(map(str, LIVE_PRECOPY_TCG_MIN)),
            "its dirty bitmap misses TCG writes during pre-copy and corrupts guests "
            "(upstream fix 03bfc2188f); on Debian 12 install qemu-system-x86 from bookworm-backports",
        )


@functools.cache
def find_qemu() -> QemuBinary:
    """``$LIVEMIG_QEMU`` or qemu-system-x86_64 on PATH."""
    path = os.environ.get("LIVEMIG_QEMU") or shutil.which("qemu-system-x86_64")
    if not path:
        raise QemuNotFound("qemu-system-x86_64 not found: install qemu-system-x86 (see README)")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise QemuNotFound(f"{path} --version failed: {exc}") from exc
    return QemuBinary(Path(path), parse_version(out.stdout))
