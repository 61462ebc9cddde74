"""How far a golden figure moves with the float path: GPTQ-4 (and FP16, RTN-4) on the default model,
quick profile, WikiText-2, under different CPU thread counts and Hessian accumulation dtypes.

GPTQ's rounding decisions depend on every float of the calibration pass and the Cholesky solve, so
its perplexity differs between machines (BLAS kernels, thread counts) although the procedure is the
same. The golden tests set their tolerances from the spread this script measures. Each variant runs
in its own subprocess (``torch.set_num_threads`` before any work); ``fp64`` accumulates GPTQ's
``H = 2/n Σ X Xᵀ`` in float64 (rounded to float32 for the solve) instead of float32, a stand-in for
a machine with other rounding.

    python benchmarks/golden_spread.py                     # threads 1, 2 × H in fp32, fp64
    python benchmarks/golden_spread.py --out reference/benchmarks/golden_spread.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, torch
threads, dtype, method = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
torch.set_num_threads(threads)
sys.path.insert(0, "benchmarks")
from _common import compose_cfg
from harness.run import execute
if dtype == "float64":
    import methods.gptq as G
    orig_add, orig_quant = G.Gptq.add_batch, G.gptq_quantize
    def add_batch(self, name, X):
        X = (X.unsqueeze(0) if X.dim() == 2 else X).double()
        b, n = X.shape[0], self.nsamples.get(name, 0)
        H = self.H.get(name)
        H = torch.zeros(X.shape[-1], X.shape[-1], dtype=torch.float64) if H is None else H
        H *= n / (n + b)
        n += b
        Xt = (2 / n) ** 0.5 * X.reshape(-1, X.shape[-1]).t()
        H += Xt @ Xt.t()
        self.H[name], self.nsamples[name] = H, n
    def gptq_quantize(W, H, spec, cfg):
        return orig_quant(W, H.float(), spec, cfg)  # the solve as usual, on the fp64-accumulated H
    G.Gptq.add_batch, G.gptq_quantize = add_batch, gptq_quantize
cfg = compose_cfg(["task=[wikitext2]", "wandb.mode=disabled", "force=true", "results_dir=/tmp/golden_spread",
                   *method])
print(json.dumps(execute(cfg)["metrics"]["wikitext2"]["ppl"]))
"""

VARIANTS = {"fp16": ["method=fp16"], "rtn4": ["method=rtn", "bits=4"], "gptq4": ["method=gptq", "bits=4"]}


def run(threads: int, dtype: str, method: list[str]) -> float:
    res = subprocess.run([sys.executable, "-c", CHILD, str(threads), dtype, *method], capture_output=True, text=True,
                         check=False)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--methods", default="fp16,rtn4,gptq4")
    ap.add_argument("--out", default="results/benchmarks/golden_spread.json")
    args = ap.parse_args()
    out: dict = {"figure": "WikiText-2 ppl, quick profile, default model", "runs": []}
    for name in args.methods.split(","):
        dtypes = ("float32", "float64") if name.startswith("gptq") else ("float32",)
        vals = []
        for threads in map(int, args.threads.split(",")):
            for dtype in dtypes:
                ppl = run(threads, dtype, VARIANTS[name])
                out["runs"].append({"method": name, "threads": threads, "hessian_dtype": dtype, "ppl": ppl})
                vals.append(ppl)
                print(f"{name:6s} threads={threads} H={dtype}: {ppl:.4f}", flush=True)
        mid = statistics.median(vals)
        out.setdefault("spread", {})[name] = {"min": min(vals), "max": max(vals), "median": mid,
                                              "max_rel_dev_from_median": max(abs(v - mid) / mid for v in vals)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["spread"], indent=2))


if __name__ == "__main__":
    main()
