#!/usr/bin/env bash
# Installs what is needed, then runs lint, type checks and the whole test suite
# (unit tests, and integration tests that boot and migrate real QEMU guests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
