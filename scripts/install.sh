#!/usr/bin/env bash
# Creates .venv and installs the project with every engine group and the dev tools. Idempotent: it skips pip
# when nothing it installs from has changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv

stamp=.venv/.studio-installed
want=$(cat pyproject.toml scripts/install.sh scripts/install_nodeps.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch is named first with its exact version so pip takes the CPU wheel rather than the CUDA build.
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[separation,enhancement,transcription,generation,dsp,dev]"
  PIP=".venv/bin/python -m pip" bash scripts/install_nodeps.sh
  echo "$want" > "$stamp"
fi
# Outside the stamp: a machine can lose or gain the system browser without the project changing.
bash scripts/browser_deps.sh
