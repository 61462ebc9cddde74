"""Compare a harness zero-shot record with lm-eval's own CLI, task by task and item by item.

    python scripts/check_lm_eval_equality.py reference/records/<FP16 run>.json [--out /tmp/lm_eval_check]

For every lm-eval task in the record it runs ``python -m lm_eval run --model hf`` on the embedded
default model's folder (fp32, CPU) with the task YAML the harness used (lm-eval's built-in config,
local data), the record's ``limit`` and ``batch_size``, and ``--log_samples``; then compares
acc / acc_norm and their standard errors, and the hash of every item's (doc_id, acc, acc_norm,
per-choice log-likelihoods). One lm-eval process per task, so its batches are the harness's.
Only meaningful for an unquantized record (lm-eval loads the weights from disk). Prints one line
per task and a JSON summary; exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.inputs.model import embedded_default_folder
from tasks.zeroshot import METRICS, samples_sha256


def run_cli(folder: Path, yaml: Path, limit: int | None, batch: int, out: Path) -> tuple[dict, list, float]:
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={folder},dtype=float32", "--device", "cpu", "--tasks", str(yaml), "--batch_size", str(batch),
           "--log_samples", "--output_path", str(out)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    (res_path,) = sorted(out.rglob("results_*.json"))[-1:]
    (samples_path,) = sorted(out.rglob("samples_*.jsonl"))[-1:]
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    return json.loads(res_path.read_text())["results"], samples, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("record", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/lm_eval_check"))
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("HARNESS_CACHE", "~/.cache/quant-harness")))
    args = ap.parse_args()
    rec = json.loads(args.record.read_text())
    if rec["method"]["name"] != "fp16" or rec["model"]["name"] != "SmolLM2-135M-Instruct":
        sys.exit("needs an FP16 record of the embedded default model")
    folder = embedded_default_folder(args.cache_dir.expanduser())
    summary, ok = {}, True
    for suite, metrics in rec["metrics"].items():
        proto = rec["protocol"][suite]
        if proto.get("name") != "lm-eval-zeroshot":
            continue
        for task, m in (metrics.get("tasks") or {suite: metrics}).items():
            yaml = Path(m["data"]["source"]).with_name(f"{task}.yaml")
            res, samples, seconds = run_cli(folder, yaml, proto["limit"], proto["batch_size"], args.out / task)
            r = res[task]
            diffs = {k: (m[k], r[f"{k},none"]) for base in METRICS[task] for k in (base, f"{base}_stderr")
                     if m[k] != r[f"{k},none"]}
            same_items = samples_sha256(samples) == m["samples_sha256"]
            ok &= not diffs and same_items and len(samples) == m["items"]
            summary[task] = {"items": len(samples), "harness": {k: m[k] for k in METRICS[task]},
                             "lm_eval_cli": {k: r[f"{k},none"] for k in METRICS[task]}, "metric_diffs": diffs,
                             "items_identical": same_items, "cli_seconds": seconds}
            print(f"{task}: {len(samples)} items, " + ", ".join(f"{k} {m[k]:.4f} vs {r[f'{k},none']:.4f}"
                                                                 for k in METRICS[task])
                  + f", items identical: {same_items}", flush=True)
    print(json.dumps({"record": str(args.record), "equal": ok, "tasks": summary}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
