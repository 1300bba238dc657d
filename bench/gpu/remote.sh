#!/usr/bin/env bash
# The GPU benchmark (bench/gpu/run.py) on the device machine (an H100 or H200; Python 3.12, torch 2.11.0+cu130 and
# the packages in bench/gpu/machine-packages.txt already there; nothing can be downloaded there). What it lacks
# travels as wheels, pinned in bench/gpu/wheels.txt, in sets that each fit a call's 64 MiB:
#
#   bench/gpu/remote.sh --build SET     here: fill .whl/ (git-ignored) with SET's cp312 x86_64 wheels
#   bench/gpu/remote.sh --dry-run SET   here: --build, then list what would travel and its total against 64 MiB
#   bench/gpu/remote.sh --stage SET     there: install .whl/ into /tmp/site (kept while the machine stays warm)
#   bench/gpu/remote.sh --run SET       there: --stage, then every engine (about 5-8 minutes); table + JSON in $OUT
#
# The faster-whisper row needs set ct2 (CTranslate2 is too big to travel beside PyAV): build and --stage ct2 in one
# call, then build main and --run main in the next, within the 30 s the machine stays warm. Rows that cannot run
# (a set not staged, CUDA 12's cuBLAS missing) say why in the table.
# PYTHON_VERSION / WHEEL_DIR (for --build) and SITE (for --stage/--run) let tests/test_bench_gpu_machine.py build
# the same sets for its stand-in environment.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
WHEEL_DIR=${WHEEL_DIR:-.whl}
SITE=${SITE:-/tmp/site}
LIMIT_BYTES=$((64 * 1024 * 1024))
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

build() {
  local set=$1 specs
  specs=$("$PYTHON" -m bench.gpu.wheels "$set")
  rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR"
  for spec in $specs; do
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
      --implementation cp "${PLATFORMS[@]}" -d "$WHEEL_DIR" "$spec" 2>/dev/null; then
      # No wheel on the index (a pure-Python sdist): build one here; it installs on any Python 3.
      "$PYTHON" -m pip wheel -q --no-deps -w "$WHEEL_DIR" "$spec"
    fi
  done
  echo "$set" >"$WHEEL_DIR/SET"
}

dry_run() {
  local set=$1
  build "$set"
  local tree whl total
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s+=$1} END {print s+0}')
  whl=$(find "$WHEEL_DIR" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  total=$((tree + whl))
  echo "would travel: working tree $((tree / 1024)) KiB (tracked + untracked, not ignored) + .whl/ $((whl / 1024)) KiB:"
  find "$WHEEL_DIR" -type f -printf '  %9s  %f\n' | sort -k2
  echo "total $total bytes = $(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}') MiB of the 64 MiB limit"
  if ((total > LIMIT_BYTES)); then
    echo "OVER THE LIMIT" >&2
    return 1
  fi
  local verb=--run
  [[ $set == ct2 ]] && verb=--stage
  echo "device call: run(command=\"bench/gpu/remote.sh $verb $set\", carry=[\".whl\"], timeout_s=540)"
}

stage() {
  local set=$1
  [[ -f $WHEEL_DIR/SET && $(cat "$WHEEL_DIR/SET") == "$set" ]] ||
    { echo "$WHEEL_DIR holds no '$set' set: --build $set here first" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEEL_DIR"/*.whl
  echo "$set" >>"$SITE/STAGED_SETS"
  echo "staged in $SITE: $(sort -u "$SITE/STAGED_SETS" | tr '\n' ' ')"
}

run_there() {
  local set=$1 out=${OUT:-.}
  stage "$set"
  export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|huggingface|numpy|tokenizers|nvidia-cublas)' || true
  } | tee "$out/environment.txt"
  set -o pipefail
  # 8 minutes for everything, inside the device's 10-minute command limit.
  timeout 480 "$PYTHON" -m bench.gpu.run --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.log"
}

case ${1:-} in
  --build) build "${2:?wheel set}" ;;
  --dry-run) dry_run "${2:?wheel set}" ;;
  --stage) stage "${2:?wheel set}" ;;
  --run) run_there "${2:?wheel set}" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
