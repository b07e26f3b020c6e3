"""Where livemig keeps things: the runtime directory (live VMs) and the cache (guest image)."""

from __future__ import annotations

import os
from pathlib import Path

from livemig.errors import EnvironmentProblem

__all__ = ["cache_dir", "ensure_private_dir", "runtime_dir"]


def runtime_dir() -> Path:
    """The runtime directory: ``$LIVEMIG_RUNTIME_DIR``, else /run/livemig (root) or
    ``$XDG_RUNTIME_DIR/livemig``. It is created 0700 on first use."""
    env = os.environ.get("LIVEMIG_RUNTIME_DIR")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/run/livemig")
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/livemig-{os.geteuid()}"
        path = Path(base) / "livemig"
    return ensure_private_dir(path)


def cache_dir() -> Path:
    """The cache: ``$LIVEMIG_CACHE_DIR``, else ``$XDG_CACHE_HOME/livemig`` (~/.cache/livemig)."""
    env = os.environ.get("LIVEMIG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livemig"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if needed, and refuse one that another user owns."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise EnvironmentProblem(f"{path} belongs to uid {st.st_uid}, not to you; refusing to use it")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path
