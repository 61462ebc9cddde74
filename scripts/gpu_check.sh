#!/usr/bin/env bash
# The GPU check in one call, on the lent GPU machine's image as it is (no registry there; nothing else used):
#
#   bash scripts/gpu_wheels.sh                 # here, once: wheels + tokenizer + data into .gpu_check/ (≤ 40 MiB)
#   bash scripts/gpu_check.sh "$OUT"           # there, with .gpu_check carried: ~6 minutes, figures in $OUT
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh DIR   # here: every step on the CPU, tiny shapes (tests/test_gpu_check.py)
#
# Installs the carried wheels with --no-index --no-deps --target (the image lacks hydra-core, omegaconf and
# antlr4), points the steps at the carried tokenizer and data, and runs scripts/gpu_check.py: one JSON line
# per measurement in $OUT/gpu_check.jsonl, each step's output in $OUT/steps.log, $OUT/summary.json at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-results/gpu_check}}
PAYLOAD=${GPU_CHECK_PAYLOAD:-$PWD/.gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
if compgen -G "$PAYLOAD/wheels/*.whl" > /dev/null; then
  SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$PAYLOAD"/wheels/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d "$PAYLOAD/tokenizer" ] && export GPU_CHECK_TOKENIZER="$PAYLOAD/tokenizer"
[ -d "$PAYLOAD/data" ] && export HARNESS_DATA="$PAYLOAD/data"
exec "$PY" -u scripts/gpu_check.py --out "$OUT_DIR" "${@:2}"
