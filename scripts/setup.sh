#!/usr/bin/env bash
# Installs everything livemig needs on Debian 12 (as root), idempotently:
#   QEMU >= 9.0 (from bookworm-backports on Debian 12: 7.2 corrupts TCG guests in pre-copy),
#   busybox-static and gcc (guest image), iproute2 (lab), libvirt's daemon and headers (Debian 12's
#   own 9.0: the 11.3 of bookworm-backports crashes in post-copy recovery, see the README), a venv
#   in .venv, and the guest image.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages)" >&2
  exit 2
fi

qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local v
  v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
  [ -n "$v" ] && [ "$v" -ge 9 ]
}

apt_updated=0
apt_update() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq || say "apt-get update reported errors (continuing: some sources may be unreachable)"
    apt_updated=1
  fi
}

. /etc/os-release
if ! qemu_ok; then
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "adding the bookworm-backports source (QEMU 10)"
      cat > /etc/apt/sources.list.d/livemig-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    apt_update
    say "installing qemu-system-x86 from bookworm-backports"
    apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
  else
    apt_update
    apt-get install -y -qq qemu-system-x86 >/dev/null
  fi
  qemu_ok || { echo "setup: QEMU >= 9.0 is required; found: $(qemu-system-x86_64 --version | head -1)" >&2; exit 1; }
fi

missing=()
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
# libvirt: the daemon and its QEMU driver without libvirt-daemon-system (which would start a system
# daemon: the lab runs its own, one per host); libvirt-dev and pkg-config to build libvirt-python.
for pkg in gcc libc6-dev iproute2 python3-venv python3-dev pkg-config libvirt-daemon libvirt-daemon-driver-qemu \
    libvirt-clients libvirt-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  say "installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# libvirt resolves its QEMU user even when QEMU runs as root (libvirt-daemon-system would add it)
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin \
  --gid libvirt-qemu libvirt-qemu

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.livemig-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing livemig and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev,lab,bench,libvirt]'
  touch "$stamp"
fi

if ! .venv/bin/python -c 'from livemig.guest import find_image; find_image()' 2>/dev/null; then
  if ! apt-cache depends linux-image-cloud-amd64 2>/dev/null | grep -q 'Depends: linux-image-'; then
    apt_update
  fi
  say "building the guest image (Debian cloud kernel, fetched into the cache, not installed)"
  .venv/bin/livemig guest build
fi
say "ready: $(qemu-system-x86_64 --version | head -1)"
