#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, import contracts, then pytest on the embedded Postgres and
# real model code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports  # import contracts in pyproject.toml: one-way imports, a web-free worker
.venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
