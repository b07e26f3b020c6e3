#!/usr/bin/env bash
# Installs what is needed, then runs the demo: a video-streaming guest migrated
# with each policy, compared by what the guest saw.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/livemig demo "$@"
