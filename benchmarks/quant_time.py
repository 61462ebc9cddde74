"""Quantization wall time and peak memory per method on one model, as ratios to GPTQ, in one run.

Each method runs in its own subprocess (so peak memory is its own): load the model and the
calibration windows, then time only the quantization (``quantize_model`` for RTN,
``quantize_sequential`` for the calibrated methods; APTQ's mixed run includes its sensitivity pass,
uncached). Peak memory: the process's peak RSS, and on CUDA the peak allocated memory.

    python benchmarks/quant_time.py                              # rtn, gptq, aptq (4-bit), aptq ratio 0.75
    python benchmarks/quant_time.py --methods gptq,aptq profile.calib_samples=8
    python benchmarks/quant_time.py --methods gptq,awq,slim-3 group_size=64 act_order=true true_sequential=true
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import compose_cfg, load
from rich.console import Console
from rich.table import Table

from harness.plugins.manager import make_plugins
from harness.quantize.driver import MethodRun, quantize_model
from harness.quantize.sequential import quantize_sequential

CASES = {  # name → harness overrides
    "rtn": ["method=rtn", "bits=4"],
    "gptq": ["method=gptq", "bits=4"],
    "aptq": ["method=aptq", "ratio=1.0"],
    "aptq-75": ["method=aptq", "ratio=0.75"],
    "awq": ["method=awq", "bits=4"],
    "awq-gptq": ["method=awq", "bits=4", "method.solver=gptq"],
    "slim-3": ["method=slim", "bits=3"],
    "slim-3.5": ["method=slim", "bits=3", "method.target_bits=3.5"],
}


def one(case: str, overrides: list[str]) -> dict:
    """Quantize once in this process; return seconds and memory."""
    logging.basicConfig(level=logging.WARNING)
    cfg = compose_cfg([*CASES[case], *overrides])
    plugins = make_plugins()
    opts = dict(cfg["method"])
    method = plugins.methods.get(opts.pop("name")).from_options(opts)
    model, _, windows, device, _ = load(cfg)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    silent = _Silent()
    t0 = time.perf_counter()
    if method.needs_calibration:
        quantize_sequential(model, MethodRun(method, silent, None), windows, device, cache_dir=None)
    else:
        quantize_model(model, method, silent, None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {"case": case, "label": method.label(), "seconds": time.perf_counter() - t0, "device": device,
           "rss_before_mb": rss0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class _Silent:
    """Stands in for the plugin hook relay: the benchmark needs no observers."""

    def __getattr__(self, name):
        return lambda **kw: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="rtn,gptq,aptq,aptq-75", help=f"from {', '.join(CASES)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="results/benchmarks/quant_time.json")
    ap.add_argument("overrides", nargs="*", help="harness config overrides (model=..., profile=..., device=...)")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.overrides)))
        return
    rows = []
    for case in a.methods.split(","):
        if case not in CASES:
            sys.exit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        res = subprocess.run([sys.executable, __file__, "--one", case, *a.overrides], capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{case} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ref = next((r for r in rows if r["case"] == "gptq"), rows[0])
    what = " ".join(a.overrides) or "default model, quick profile"
    cuda = ["peak CUDA MB"] if "peak_cuda_mb" in ref else []
    table = Table(title=f"Quantization time and peak memory ({what})")
    for col in ("method", "seconds", "× GPTQ", "peak RSS MB", "× GPTQ", *cuda):
        table.add_column(col, justify="right")
    for r in rows:
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["rss_ratio"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
        table.add_row(r["label"], f"{r['seconds']:.1f}", f"{r['time_ratio']:.2f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['rss_ratio']:.2f}", *([f"{r['peak_cuda_mb']:.0f}"] if "peak_cuda_mb" in r else []))
    Console().print(table)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": a.overrides, "rows": rows}, indent=2))
    Console().print(f"written {out}")


if __name__ == "__main__":
    main()
