#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, then pytest on the embedded Postgres and real model code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
