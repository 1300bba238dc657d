#!/usr/bin/env bash
# The one place where packages with unsatisfiable declared dependencies are installed without them.
# basic-pitch 0.4.0 hard-requires tensorflow<2.15.1 on Python 3.11, which we never use: it runs on onnxruntime
# with its bundled nmp.onnx, and its real runtime deps are in the `transcription` group of pyproject.toml.
# Used by scripts/install.sh, CI and the Modal transcription image alike.
set -euo pipefail
${PIP:-python -m pip} install -q --disable-pip-version-check --no-deps basic-pitch==0.4.0
