#!/usr/bin/env bash
# The GPU benchmark (bench/gpu/run.py) on the device machine: one H200, Python 3.12, torch 2.11, transformers,
# accelerate, onnxruntime, numpy/scipy/numba/tiktoken/sentencepiece already there; nothing can be downloaded there.
#
#   bench/gpu/remote.sh --build     here: fill .whl/ (git-ignored) with cp312 x86_64 wheels of what the machine lacks
#   bench/gpu/remote.sh --dry-run   here: --build, then list what would travel (tracked + untracked files, .whl/),
#                                   its total against the 64 MiB limit, and the `run` tool call to make; sends nothing
#   bench/gpu/remote.sh --run       there: install .whl/ into /tmp/site and run every engine (about 5-8 minutes),
#                                   the table and JSON into $OUT
#
# CTranslate2 (42.8 MB) does not fit beside PyAV (35.8 MB), which inference/audio.py needs, so the main run reports
# faster-whisper's CUDA libraries as not probed; `--build ctranslate2` + `--run ctranslate2` is a separate, short call
# that carries only CTranslate2 and answers whether its CUDA libraries load there.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
LIMIT_BYTES=$((64 * 1024 * 1024))
# Pinned as in pyproject.toml / the shared venv. Pure-Python sdists (openai-whisper) are built into wheels here.
MAIN_WHEELS=(
  demucs==4.1.0 julius==0.2.8 openai-whisper==20250625 diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2
  av==18.1.0 soundfile==0.14.0 soxr==1.1.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0
  typing-inspection==0.4.5 typing_extensions==4.16.0 importlib_metadata==10.2.0
)
CT2_WHEELS=(ctranslate2==4.8.5 soundfile==0.14.0)  # soundfile: bench/gpu/run.py imports it
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

wheels_for() { if [[ ${1:-main} == ctranslate2 ]]; then echo "${CT2_WHEELS[@]}"; else echo "${MAIN_WHEELS[@]}"; fi; }

build() {
  local set=${1:-main}
  rm -rf .whl && mkdir -p .whl
  for spec in $(wheels_for "$set"); do
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl "$spec" 2>/dev/null; then
      # No wheel on the index (a pure-Python sdist): build one here; it installs on any Python 3.
      "$PYTHON" -m pip wheel -q --no-deps -w .whl "$spec"
    fi
  done
  echo "$set" >.whl/SET
}

dry_run() {
  local set=${1:-main}
  build "$set"
  local tree whl total
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s+=$1} END {print s+0}')
  whl=$(find .whl -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  total=$((tree + whl))
  echo "would travel: working tree $((tree / 1024)) KiB (tracked + untracked, not ignored) + .whl/ $((whl / 1024)) KiB:"
  find .whl -type f -printf '  %9s  %f\n' | sort -k2
  echo "total $total bytes = $(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}') MiB of the 64 MiB limit"
  if ((total > LIMIT_BYTES)); then
    echo "OVER THE LIMIT" >&2
    return 1
  fi
  echo "device call: run(command=\"bench/gpu/remote.sh --run $set\", carry=[\".whl\"], timeout_s=540)"
}

run_there() {
  local set=${1:-main} out=${OUT:-.}
  [[ -f .whl/SET && $(cat .whl/SET) == "$set" ]] || { echo ".whl/ holds no '$set' set: --build $set here first" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|huggingface|accelerate|numpy|tokenizers) ' || true
  } | tee "$out/environment.txt"
  if [[ $set == ctranslate2 ]]; then
    "$PYTHON" -c 'import torch; from bench.gpu.run import _ctranslate2_probe; print(_ctranslate2_probe(torch.device("cuda")))' |
      tee "$out/ctranslate2.txt"
    return
  fi
  set -o pipefail
  # 8 minutes for everything, inside the device's 10-minute command limit.
  timeout 480 "$PYTHON" -m bench.gpu.run --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.log"
}

case ${1:-} in
  --build) build "${2:-main}" ;;
  --dry-run) dry_run "${2:-main}" ;;
  --run) run_there "${2:-main}" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
